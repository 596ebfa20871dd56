"""Deep compressed video tokens: the 1D video tokenizer's shapes, its token count against clip length, learning,
save/load, its refusals, and a text-to-video pipeline over its K tokens, on tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from generators import GeneratorTrainConfig, PromptEncoder, create_generator
from generators.benchmark import BenchConfig, benchmark_video
from generators.training import tokenize_split
from generators.video import TextToVideoPipeline
from tokenizers_vis import TrainConfig, Video1DTokenizer, create_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.data import MovingShapes
from tokenizers_vis.evaluation import load_grader
from tokenizers_vis.evaluation.reconstruction import reconstruct
from tokenizers_vis.motion import block_match_flow, warp_scale_space

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["a large red circle moving to the left", "a small blue star moving up"]


def clips(count: int = 4, frames: int = 5) -> torch.Tensor:
    data = MovingShapes(count, resolution=32, frames=frames)
    return torch.stack([data[i]["video"] for i in range(count)])


def test_token_count_is_independent_of_clip_length():
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny").eval()
    k = model.config.num_tokens
    for frames in (1, 5, 9):
        assert model.encode(torch.rand(2, frames, 3, 32, 32) * 2 - 1).shape == (2, k)
    assert model.encode(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, k)  # an image is a one-frame clip
    assert model.codebook_size == 16
    indices = model.encode(clips())
    assert 0 <= indices.min() and indices.max() < 16
    assert model.decode(indices).shape == (4, 5, 3, 32, 32)  # the configured clip length
    assert model.decode(indices, frames=9).shape == (4, 9, 3, 32, 32)
    recon, losses = model(clips())
    assert recon.shape == (4, 5, 3, 32, 32) and losses["loss"].ndim == 0


def test_standard_presets_code_a_nine_frame_clip_in_32_or_64_tokens():
    for name, k in (("video1d-32", 32), ("video1d-64", 64)):
        model = create_tokenizer(name).eval()
        assert model.codebook_size == 1000
        assert model.encode(torch.zeros(1, 9, 3, 64, 64)).shape == (1, k)


def test_bad_clips_and_configs_are_refused():
    model = create_tokenizer("video1d-tiny")
    with pytest.raises(ValueError, match=r"expected videos \(B, T, 3, 32, 32\)"):
        model.encode(torch.zeros(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="must be 1 \\+ 4 \\* k and at most 9"):
        model.encode(torch.zeros(1, 13, 3, 32, 32))
    with pytest.raises(ValueError, match="must be 1 \\+ 4 \\* k"):
        model.encode(torch.zeros(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected indices \(B, 8\)"):
        model.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_frames"):
        Video1DTokenizer(frames=17, max_frames=9)


def test_semantic_alignment_reads_the_decoder_cells_of_each_latent_step():
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny", semantic_dim=6, semantic_weight=0.5)
    videos = clips(2, frames=5)  # 2 latent time steps: frames 0 and 1-4
    frames = model.semantic_frames(videos)
    assert torch.equal(frames, videos[:, [0, 4]].flatten(0, 1))
    assert torch.equal(model.semantic_frames(videos[:, 0]), videos[:, 0])  # images are one-frame clips
    _, still = model(videos[:, 0], semantic_target=torch.randn(2, 16, 6))
    assert still["semantic"] > 0
    target = torch.randn(len(frames), 16, 6)  # a 4 x 4 teacher grid
    _, losses = model(videos, semantic_target=target)
    _, plain = model(videos)
    assert "semantic" in losses and "semantic" not in plain
    assert torch.allclose(losses["loss"], losses["recon"] + losses["quantizer"] + 0.5 * losses["semantic"])
    model.zero_grad()
    (losses["loss"] - plain["loss"]).backward()  # the semantic term alone reaches the encoder through the codes
    assert model.latents.grad.abs().sum() > 0 and model.semantic_proj[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="semantic_dim > 0"):
        create_tokenizer("video1d-tiny")(videos, semantic_target=target)


def test_later_frames_reach_the_tokens():
    """The K tokens code the whole clip, not only its first frame."""
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny").eval()
    video = clips(1)
    changed = video.clone()
    changed[:, -1] = -changed[:, -1]
    latents = []  # the K tokens before quantization (a tiny codebook may round a change away)
    model.encoder_out.register_forward_hook(lambda module, args, out: latents.append(out))
    with torch.no_grad():
        model.encode(video), model.encode(changed)
    assert (latents[0] - latents[1]).abs().amax() > 1e-3


def test_learns_and_round_trips(tmp_path, fit_tokenizer):
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny")
    videos = clips()
    losses = fit_tokenizer(model, videos)
    assert losses[-1] < 0.5 * losses[0]
    model.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path).eval()
    model.eval()
    assert isinstance(loaded, Video1DTokenizer)
    assert torch.equal(loaded.encode(videos), model.encode(videos))
    assert torch.equal(loaded.decode(model.encode(videos)), model.decode(model.encode(videos)))


def test_scale_space_warp_copies_and_shifts_the_anchor_exactly():
    anchor = torch.rand(2, 3, 16, 16) * 2 - 1
    sharp = torch.zeros(2, 3, 3, 16, 16)
    sharp[:, :, 2] = -60.0  # the scale logit of the unblurred level
    same = warp_scale_space(anchor, sharp)
    assert same.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(same, anchor[:, None].expand_as(same), atol=1e-5)
    shifted = sharp.clone()
    shifted[:, 1, 0] = 2 * 2 / 16  # frame 1 samples 2 pixels to the right (units of half the frame)
    out = warp_scale_space(anchor, shifted)
    assert torch.allclose(out[:, 1, :, :, :-2], anchor[:, :, :, 2:], atol=1e-5)
    blurred = warp_scale_space(anchor, torch.zeros(2, 1, 3, 16, 16) + torch.tensor([0.0, 0.0, 60.0])[:, None, None])
    assert blurred.std() < 0.5 * anchor.std()  # the coarsest level is a blur


def test_block_matching_finds_how_far_an_object_moved():
    torch.manual_seed(0)
    anchor = torch.full((1, 3, 32, 32), -0.5)
    anchor[:, :, 6:14, 4:12] = torch.rand(3, 8, 8) * 0.5 + 0.5  # a textured square on a flat background
    moved = torch.full_like(anchor, -0.5)
    moved[:, :, 10:18, 14:22] = anchor[:, :, 6:14, 4:12]  # 10 pixels right, 4 down
    flow, mask = block_match_flow(anchor, torch.stack([anchor, moved], 1), radius=12)
    assert flow.shape == (1, 2, 2, 32, 32) and mask.shape == (1, 2, 1, 32, 32)
    assert not mask[:, 0].any()  # the first frame did not change
    assert mask[0, 1, 0, 10:18, 14:22].all()
    expected = torch.tensor([-10.0, -4.0])[:, None, None] * 2 / 32  # look back where the square came from
    assert torch.allclose(flow[0, 1, :, 10:18, 14:22], expected.expand(2, 8, 8))
    sharp = torch.cat([flow, torch.full_like(flow[:, :, :1], -60.0)], 2)
    rebuilt = warp_scale_space(anchor, sharp)[0, 1]
    assert torch.allclose(rebuilt[:, 10:18, 14:22], moved[0, :, 10:18, 14:22], atol=1e-5)
    with pytest.raises(ValueError, match="expected an anchor"):
        block_match_flow(anchor[:, :, :16], torch.stack([anchor, moved], 1))


def test_flow_target_trains_the_anchored_warp(fit_tokenizer):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="needs anchor_frame=True"):
        create_tokenizer("video1d-tiny", flow_weight=0.1)
    model = create_tokenizer("video1d-tiny", anchor_frame=True, flow_weight=1.0)
    videos = clips()
    before = model(videos)[1]["flow"]
    fit_tokenizer(model, videos, steps=30)
    after = model(videos)[1]
    assert after["flow"] < 0.8 * before  # the warp moves towards the block-matching flow
    assert "flow" not in model(videos[:, 0])[1]  # still images have no motion to match


def test_anchored_tokenizer_decodes_from_the_first_frame_and_learns(tmp_path, fit_tokenizer):
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny", anchor_frame=True)
    videos = clips()
    first = videos[:, 0]
    with torch.no_grad():
        indices = model.encode(videos)
        start = model.decode(indices, anchor=first)
    assert start.shape == videos.shape
    # the decoder's last layer starts at zero: every frame is the first frame through a zero warp
    copy = warp_scale_space(first, torch.zeros(4, 5, 3, 32, 32))
    assert torch.allclose(start, copy, atol=1e-6)
    with pytest.raises(ValueError, match="pass anchor="):
        model.decode(indices)
    with pytest.raises(ValueError, match="one anchor frame per clip"):
        model.decode(indices, anchor=first[:2])
    with pytest.raises(ValueError, match="without anchor_frame"):
        create_tokenizer("video1d-tiny").decode(indices, anchor=first)
    losses = fit_tokenizer(model, videos, steps=60)
    assert losses[-1] < 0.85 * losses[0]  # it starts as a copy of frame 0, so below that is motion learnt
    model.eval()
    with torch.no_grad():
        other = model.decode(indices, anchor=first.flip(0))
        assert not torch.allclose(other, model.decode(indices, anchor=first))  # the anchor is used
        assert torch.equal(reconstruct(model, videos), model.decode(model.encode(videos), frames=5, anchor=first))
    model.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path).eval()
    assert loaded.config.anchor_frame
    assert torch.equal(loaded.decode(indices, anchor=first), model.decode(indices, anchor=first))
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="anchor_frame=True"):
        TextToVideoPipeline(model, pipe.generator, pipe.prompt_encoder)


def tiny_pipeline() -> TextToVideoPipeline:
    torch.manual_seed(0)
    tokenizer = create_tokenizer("video1d-tiny").eval()
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    encoder = PromptEncoder(clip)
    k = tokenizer.config.num_tokens
    generator = create_generator(
        "nt-tiny", codebook_size=tokenizer.codebook_size, grid_size=(k,), prompt_dim=encoder.dim, prompt_length=32
    )
    return TextToVideoPipeline(tokenizer, generator, encoder, defaults={"guidance_scale": 2.0})


def test_text_to_video_pipeline_over_deep_tokens_round_trips(tmp_path):
    pipe = tiny_pipeline()
    out = pipe(PROMPTS, num_videos_per_prompt=2, seed=3)
    assert out.tokens.shape == (4, 8) and out.frames.shape == (4, 5, 3, 32, 32)
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    pipe.save_pretrained(tmp_path / "pipe")
    again = TextToVideoPipeline.from_pretrained(tmp_path / "pipe")(PROMPTS, num_videos_per_prompt=2, seed=3)
    assert torch.equal(again.tokens, out.tokens) and torch.equal(again.frames, out.frames)


def test_clips_are_cached_as_k_token_rows(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tokenizer"
    tokenizer = create_tokenizer("video1d-tiny").eval()
    tokenizer.save_pretrained(folder)
    cfg = GeneratorTrainConfig(
        tokenizer=str(folder),
        data="videos",
        frames=5,
        resolution=32,
        eval_samples=6,
        cache_dir=str(tmp_path / "cache"),
        mixed_precision="no",
    )
    data = tokenize_split(tokenizer, "heldout", cfg, "prompt", Accelerator(cpu=True))
    assert data.grid == (8,) and len(data) == 6
    clip = MovingShapes(6, 32, frames=5, split="heldout", seed=0)[4]["video"]
    assert torch.equal(data.tokens(torch.tensor([4]))[0], tokenizer.encode(clip[None])[0])


def test_train_tokenizer_runs_the_video1d_family_and_writes_its_pictures(tmp_path, clip_folder):
    cfg = TrainConfig(
        semantic_teacher=str(clip_folder),
        preset="video1d-tiny",
        data="videos",
        resolution=32,
        frames=5,
        eval_frames=5,
        train_samples=16,
        eval_samples=4,
        ood_samples=4,
        batch_size=2,
        image_batch_size=4,
        steps=2,
        output_dir=str(tmp_path / "run"),
        num_workers=0,
        mixed_precision="no",
    )
    metrics = train_tokenizer(cfg)
    assert metrics["tokenizer"] == "Video1DTokenizer" and metrics["steps"] == 2
    assert metrics["semantic_teacher"] == f"clip:{clip_folder}"
    assert {"psnr", "psnr_ood_scenes", "psnr_ood_photos"} <= set(metrics)
    for name in ("reconstructions.gif", "reconstructions.png", "reconstructions_ood.png"):
        assert (tmp_path / "run" / name).is_file()
    assert isinstance(load_tokenizer(tmp_path / "run" / "model"), Video1DTokenizer)


def test_video_benchmark_grades_deep_token_clips_with_fd_and_speed():
    torch.manual_seed(0)
    tokenizer = create_tokenizer("video1d-tiny", image_size=64, frames=9).eval()  # the benchmark's 64-px clips
    pipe = tiny_pipeline()
    pipe = TextToVideoPipeline(tokenizer, pipe.generator, pipe.prompt_encoder)
    bench = benchmark_video(pipe, load_grader(ROOT / "assets" / "grader"), BenchConfig(prompts=3), [1.0, 2.0])
    assert [row["guidance"] for row in bench.rows] == [1.0, 2.0] and len(bench.captions) == 3
    for row in bench.rows:
        assert 0 <= row["appearance_accuracy"] <= 1 and 0 <= row["direction_accuracy"] <= 1 and row["fd"] > 0
    assert bench.outputs[0].frames.shape == (6, 9, 3, 64, 64)
    assert bench.references["real"]["appearance_accuracy"] > 0.6  # the grader reads real clips
    assert bench.facts["tokens_per_clip"] == 8 and bench.facts["seconds_per_clip"] > 0
    assert bench.facts["fd_reconstructed"] > 0


def test_generate_routes_motion_prompts_to_the_video_pipeline(tmp_path, run_script):
    image_pipe = ROOT / "assets" / "pipeline"
    mixed = run_script("generate", "--prompt", PROMPTS[0], "--prompt", "a large red circle at the top left")
    assert mixed.returncode != 0 and "Traceback" not in mixed.stderr and "describe motion" in mixed.stderr
    refused = run_script("generate", "--pipeline", str(image_pipe), "--video", "--prompt", PROMPTS[0])
    assert refused.returncode != 0 and "needs a text-to-video pipeline" in refused.stderr
    # the shipped pipeline (assets/video_pipeline, factorized): a motion prompt -> a 9-frame 64-px GIF, offline
    done = run_script("generate", "--prompt", PROMPTS[0], "--num-images", "1", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    gif = Image.open(tmp_path / "out" / "a_large_red_circle_moving_to_the_left_0.gif")
    assert gif.n_frames == 9 and gif.size == (64, 64)


def test_anchored_decoder_trains_on_another_tokenizers_first_frame(tmp_path):
    torch.manual_seed(0)
    model = create_tokenizer("video1d-tiny", anchor_frame=True).eval()
    videos = clips()
    other = videos[:, 0].flip(-1)  # a first frame that is not the clip's own
    with torch.no_grad():
        given = model(videos, anchor=other)[0]
        assert torch.allclose(given, model.decode(model.encode(videos), frames=5, anchor=other), atol=1e-6)
        assert torch.allclose(model(videos)[0], model.decode(model.encode(videos), frames=5, anchor=videos[:, 0]))
    with pytest.raises(ValueError, match=r"anchor: first frames \(4, 3, 32, 32\)"):
        model(videos, anchor=other[:, :, :16])
    with pytest.raises(ValueError, match="anchor_frame=False"):
        create_tokenizer("video1d-tiny")(videos, anchor=other)

    image = create_tokenizer("vq-f8-tiny")
    image.save_pretrained(tmp_path / "image")
    base = dict(preset="video1d-tiny", data="videos", resolution=32, frames=5, eval_frames=5, train_samples=8)
    base |= dict(eval_samples=2, ood_samples=0, batch_size=2, steps=2, num_workers=0, mixed_precision="no")
    anchored = {"anchor_frame": True}
    runs = {}
    for name, source in (("real", ""), ("redrawn", str(tmp_path / "image"))):
        cfg = TrainConfig(**base, model_overrides=anchored, anchor_tokenizer=source, output_dir=str(tmp_path / name))
        train_tokenizer(cfg)
        runs[name] = load_tokenizer(tmp_path / name / "model").state_dict()
    changed = [k for k in runs["real"] if not torch.equal(runs["real"][k], runs["redrawn"][k])]
    assert changed  # the redrawn first frame changed the training steps
    with pytest.raises(ValueError, match="anchor_tokenizer trains an anchored video tokenizer"):
        train_tokenizer(TrainConfig(**base, anchor_tokenizer=str(tmp_path / "image"), output_dir=str(tmp_path / "x")))
