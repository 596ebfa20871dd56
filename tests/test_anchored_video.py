"""The assembled text-to-video tokenizer: the first frame's image tokens, then an anchored video tokenizer's motion
tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from generators import GeneratorTrainConfig, PromptEncoder, TextToImagePipeline, create_generator
from generators.decoding import TokenDecoder, guided_prefix
from generators.sampling import TokenSampler
from generators.training import tokenize_split
from generators.video import TextToVideoPipeline
from tokenizers_vis import create_tokenizer, load_tokenizer
from tokenizers_vis.anchored_video import AnchoredVideoTokenizer
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.data import MovingShapes
from tokenizers_vis.data.language import video_frame_captions
from tokenizers_vis.evaluation.reconstruction import reconstruct

PROMPTS = ["a large red circle moving to the left", "a small blue star moving up"]


def parts(levels: tuple[int, ...] = (4, 4, 4)):
    """A tiny f8 image tokenizer (64 codes, 4x4 tokens of a 32-px frame) and a tiny anchored motion tokenizer."""
    torch.manual_seed(0)
    image = create_tokenizer("vq-f8-tiny").eval()
    motion = create_tokenizer(
        "video1d-tiny", anchor_frame=True, quantizer_kwargs={"levels": list(levels)}, embed_dim=len(levels)
    ).eval()
    with torch.no_grad():  # the VQ codebook's k-means start, as a trained tokenizer has had it
        image.encode(torch.rand(8, 3, 32, 32) * 2 - 1)
    return image, motion


def clips(count: int = 3, frames: int = 5) -> torch.Tensor:
    data = MovingShapes(count, resolution=32, frames=frames, seed=1)
    return torch.stack([data[i]["video"] for i in range(count)])


def test_a_clip_is_its_first_frames_tokens_then_its_motion_tokens():
    image, motion = parts()
    model = AnchoredVideoTokenizer.from_parts(image, motion).eval()
    assert model.frame_tokens == 16 and model.num_tokens == 16 + 8 and model.codebook_size == 64
    x = clips()
    with torch.no_grad():
        indices = model.encode(x)
        assert indices.shape == (3, 24)
        assert torch.equal(indices[:, :16], image.encode(x[:, 0]).flatten(1))
        assert torch.equal(indices[:, 16:], motion.encode(x))
        # the token count does not depend on the clip's length; a still image is a one-frame clip
        assert model.encode(clips(frames=9)).shape == (3, 24) and model.encode(x[:, 0]).shape == (3, 24)
        # the motion tokens are decoded given the first frame that the image tokens draw, not the real one
        first = image.decode(indices[:, :16].reshape(3, 4, 4)).clamp(-1, 1)
        video = model.decode(indices)
        assert torch.equal(video, motion.decode(indices[:, 16:], anchor=first))
        assert model.decode(indices, frames=9).shape == (3, 9, 3, 32, 32)
        assert torch.equal(reconstruct(model, x), video)  # the evaluation path decodes it too


def test_saved_parts_sit_in_their_own_folders_and_load_back(tmp_path):
    model = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    model.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["_class_name"] == "AnchoredVideoTokenizer"
    for part in ("image", "motion"):
        assert (tmp_path / "tok" / part / "config.json").is_file()
    loaded = load_tokenizer(tmp_path / "tok").eval()
    x = clips()
    with torch.no_grad():
        indices = model.encode(x)
        assert torch.equal(loaded.encode(x), indices) and torch.equal(loaded.decode(indices), model.decode(indices))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="not a loadable tokenizer: 'UNet2DModel'.*AnchoredVideoTokenizer"):
        load_tokenizer(tmp_path / "other")


def test_mismatched_parts_and_indices_are_refused():
    image, motion = parts()
    with pytest.raises(ValueError, match="one index range"):
        AnchoredVideoTokenizer.from_parts(image, parts(levels=(4, 4))[1])
    with pytest.raises(ValueError, match="anchor_frame=True"):
        AnchoredVideoTokenizer.from_parts(image, create_tokenizer("video1d-tiny"))
    with pytest.raises(ValueError, match="must be an ImageTokenizer"):
        AnchoredVideoTokenizer.from_parts(motion, motion)
    model = AnchoredVideoTokenizer.from_parts(image, motion)
    with pytest.raises(ValueError, match=r"expected indices \(B, 24\): 16 frame tokens then 8 motion tokens"):
        model.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected videos \(B, T, 3, 32, 32\)"):
        model.encode(torch.zeros(2, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="AnchoredVideoTokenizer"):  # the bare motion tokenizer points here
        TextToVideoPipeline(motion, *generator_and_encoder(24))


def generator_and_encoder(tokens: int):
    """A tiny prompt-conditioned generator of ``tokens`` tokens over 64 codes, and its prompt encoder."""
    torch.manual_seed(0)
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    encoder = PromptEncoder(clip)
    generator = create_generator("nt-tiny", codebook_size=64, grid_size=(tokens,), prompt_dim=encoder.dim)
    return generator, encoder


def test_text_to_video_pipeline_writes_both_parts_and_round_trips(tmp_path):
    model = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    generator, encoder = generator_and_encoder(model.num_tokens)
    pipe = TextToVideoPipeline(model, generator, encoder, defaults={"guidance_scale": 2.0})
    out = pipe(PROMPTS, num_videos_per_prompt=2, seed=3)
    assert out.tokens.shape == (4, 24) and out.frames.shape == (4, 5, 3, 32, 32)
    pipe.save_pretrained(tmp_path / "pipe", tokenizer_dtype=torch.bfloat16)
    assert (tmp_path / "pipe" / "tokenizer" / "image" / "config.json").is_file()
    again = TextToVideoPipeline.from_pretrained(tmp_path / "pipe")(PROMPTS, num_videos_per_prompt=2, seed=3)
    assert torch.equal(again.tokens, out.tokens) and again.frames.shape == out.frames.shape


def test_token_cache_is_keyed_by_both_parts_weights(tmp_path):
    model = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    folder = tmp_path / "tok"
    model.save_pretrained(folder)
    cfg = GeneratorTrainConfig(
        tokenizer=str(folder), data="videos", frames=5, resolution=32, eval_samples=4, cache_dir=str(tmp_path / "c")
    )
    cfg.mixed_precision = "no"
    data = tokenize_split(model, "heldout", cfg, "prompt", Accelerator(cpu=True))
    assert data.grid == (24,) and len(data) == 4
    clip = MovingShapes(4, 32, frames=5, split="heldout", seed=0)[2]["video"]
    with torch.no_grad():
        assert torch.equal(data.tokens(torch.tensor([2]))[0], model.encode(clip[None])[0])
    with torch.no_grad():  # new motion weights: a new cache, not the old rows
        model.motion.decoder_in.weight.add_(1.0)
    model.save_pretrained(folder)
    tokenize_split(model, "heldout", cfg, "prompt", Accelerator(cpu=True))
    assert len(list(Path(cfg.cache_dir).iterdir())) == 2


def test_assemble_script_joins_two_saved_tokenizers(tmp_path, run_script):
    image, motion = parts()
    for name, part in (("image", image), ("motion", motion)):
        part.save_pretrained(tmp_path / name / "model")
        (tmp_path / name / "metrics.json").write_text(json.dumps({"run_seconds": 10.0, "psnr": 20.0}))
    args = ["--image", str(tmp_path / "image" / "model"), "--motion", str(tmp_path / "motion" / "model")]
    done = run_script("assemble_video_tokenizer", *args, "--output-dir", str(tmp_path / "tok"))
    assert done.returncode == 0, done.stderr
    assert isinstance(load_tokenizer(tmp_path / "tok" / "model"), AnchoredVideoTokenizer)
    metrics = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    assert metrics["run_seconds"] == 20.0 and metrics["tokens_per_clip"] == 24
    assert metrics["parts"]["motion"]["psnr"] == 20.0


def test_image_to_video_starts_every_clip_from_the_given_first_frame():
    model = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    generator, encoder = generator_and_encoder(model.num_tokens)
    pipe = TextToVideoPipeline(model, generator, encoder, defaults={"guidance_scale": 2.0})
    first = (clips(2)[:, 0] + 1) / 2  # one frame per prompt, in [0, 1]
    out = pipe(PROMPTS, num_videos_per_prompt=2, seed=3, first_frame=first)
    with torch.no_grad():
        given = model.encode_first_frame(first * 2 - 1).repeat_interleave(2, dim=0)
    assert torch.equal(out.tokens[:, :16], given) and out.frames.shape == (4, 5, 3, 32, 32)
    # the rest is sampled after them: the same with and without the KV cache, and split into runs of one prompt
    assert torch.equal(pipe(PROMPTS, 2, seed=3, first_frame=first, use_cache=False).tokens, out.tokens)
    split = pipe(PROMPTS, 2, seed=3, first_frame=first, batch_size=1)
    assert torch.equal(split.tokens[:, :16], given)
    # the first forward reads the prompt and every given token (a prefill), cached or not
    with torch.no_grad():
        prefix = guided_prefix(generator, encoder(PROMPTS), None, 2.0)
        held = torch.cat([torch.full((2, 1), 64), given[::2]], dim=1)
        hidden = [
            TokenDecoder(generator, prefix, TokenSampler(24), first_tokens=given[::2], use_cache=c).forward(held, 16)
            for c in (True, False)
        ]
    torch.testing.assert_close(hidden[0], hidden[1])
    with pytest.raises(ValueError, match="one image"):
        pipe(PROMPTS, first_frame=first[:1])
    with pytest.raises(ValueError, match=r"first_tokens must be \(B=2, G\) with 0 < G < 24"):
        generator.generate(encoder(PROMPTS), first_tokens=torch.zeros(2, 24, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices in \[0, 64\)"):
        generator.generate(encoder(PROMPTS), first_tokens=torch.full((2, 4), 64))
    plain = TextToVideoPipeline(create_tokenizer("video1d-tiny"), *generator_and_encoder(8))
    with pytest.raises(ValueError, match="image-to-video needs"):
        plain(PROMPTS, first_frame=first)


def factorized_pipeline(**kw) -> TextToVideoPipeline:
    """A tiny anchored text-to-video pipeline whose first frames a tiny text-to-image pipeline draws."""
    image, motion = parts()
    model = AnchoredVideoTokenizer.from_parts(image, motion).eval()
    generator, encoder = generator_and_encoder(model.num_tokens)
    frame_generator = create_generator("nt-tiny", codebook_size=64, grid_size=(4, 4), prompt_dim=encoder.dim)
    frames = TextToImagePipeline(image, frame_generator, encoder, defaults={"temperature": 0.5})
    options = dict(first_frame_pipeline=frames, frame_captions="moving-shapes")
    return TextToVideoPipeline(model, generator, encoder, defaults={"guidance_scale": 2.0}, **options | kw)


def test_factorized_pipeline_starts_each_clip_from_a_frame_its_image_pipeline_draws(tmp_path):
    pipe = factorized_pipeline()
    out = pipe(PROMPTS, num_videos_per_prompt=2, seed=3)
    assert out.tokens.shape == (4, 24) and out.frames.shape == (4, 5, 3, 32, 32)
    per_clip = [p for p in PROMPTS for _ in range(2)]
    starts = [video_frame_captions(p)[0] for p in per_clip]  # "a large red circle at the right", ...
    drawn = pipe.first_frame_pipeline(starts, seed=3).pixels
    # the same as image-to-video from those frames, one clip each
    assert torch.equal(pipe(per_clip, seed=3, first_frame=drawn).tokens, out.tokens)
    with torch.no_grad():
        assert torch.equal(out.tokens[:, :16], pipe.tokenizer.encode_first_frame(drawn * 2 - 1))

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["first_frame_pipeline"] == ["generators", "TextToImagePipeline"]
    assert index["frame_captions"] == "moving-shapes"
    assert (tmp_path / "pipe" / "first_frame" / "model_index.json").is_file()
    again = TextToVideoPipeline.from_pretrained(tmp_path / "pipe")
    assert again.frame_captions == "moving-shapes" and again.first_frame_pipeline.defaults["temperature"] == 0.5
    assert torch.equal(again(PROMPTS, num_videos_per_prompt=2, seed=3).tokens, out.tokens)

    with pytest.raises(ValueError, match="cannot parse video prompt"):  # before any sampling
        pipe(["a large red circle at the top left"])
    with pytest.raises(ValueError, match="unknown frame_captions 'nope'; accepted: same, moving-shapes"):
        factorized_pipeline(frame_captions="nope")
    with pytest.raises(ValueError, match="must be a prompt-conditioned text-to-image pipeline"):
        factorized_pipeline(first_frame_pipeline=pipe)
    plain = TextToVideoPipeline(create_tokenizer("video1d-tiny"), *generator_and_encoder(8))
    with pytest.raises(ValueError, match="a first_frame_pipeline needs a tokenizer whose clips begin"):
        TextToVideoPipeline(
            plain.tokenizer, plain.generator, plain.prompt_encoder, first_frame_pipeline=pipe.first_frame_pipeline
        )


def test_clip_reranking_keeps_the_clip_whose_last_frame_fits_the_last_frames_caption():
    pipe = factorized_pipeline()
    first = (clips(2)[:, 0] + 1) / 2
    # three candidates per clip sample the same batch as three clips per prompt
    every = pipe(PROMPTS, num_videos_per_prompt=3, seed=2, first_frame=first)
    best = pipe(PROMPTS, num_candidates=3, seed=2, first_frame=first)
    assert best.tokens.shape == (2, 24) and best.frames.shape == (2, 5, 3, 32, 32)
    clip = pipe.prompt_encoder.clip
    ends = clip.encode_text([video_frame_captions(p)[1] for p in PROMPTS])  # "... at the center"
    with torch.no_grad():
        last = clip.encode_image(every.frames[:, -1] * 2 - 1).view(2, 3, -1)
    chosen = torch.einsum("bkd,bd->bk", last, ends).argmax(dim=1)
    for i in range(2):
        assert torch.equal(best.tokens[i], every.tokens[3 * i + chosen[i]])
        assert torch.equal(best.frames[i], every.frames[3 * i + chosen[i]])


def test_a_clip_codes_back_to_its_own_tokens_and_not_to_changed_ones():
    model = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    videos = clips(3)
    with torch.no_grad():
        indices = model.encode(videos)
        own = model.round_trip_distance(indices, videos)
        moved = indices.clone()
        moved[:, -1] = (moved[:, -1] + 1) % model.codebook_size  # one motion token off
        off = model.round_trip_distance(moved, videos)
    assert own.shape == (3,) and torch.equal(own, torch.zeros(3))  # the codes of encode(v) are quantize(v)'s
    assert (off > 0).all()
    # only the motion tokens are scored: the first frame's are given and decode to that frame as they are
    shuffled = torch.cat([indices[:, : model.frame_tokens].roll(1, dims=0), indices[:, model.frame_tokens :]], 1)
    with torch.no_grad():
        assert torch.equal(model.round_trip_distance(shuffled, videos), own)
    with pytest.raises(ValueError, match=r"expected indices \(B, 24\)"):
        model.round_trip_distance(indices[:, :20], videos)
    with pytest.raises(ValueError, match=r"expected indices \(2, 8\) for 2 clips, got \(3, 8\)"):
        model.motion.round_trip_distance(indices[:, model.frame_tokens :], videos[:2])


def test_round_trip_reranking_keeps_the_clip_that_codes_back_closest_to_its_tokens():
    pipe = factorized_pipeline()
    first = (clips(2)[:, 0] + 1) / 2
    every = pipe(PROMPTS, num_videos_per_prompt=3, seed=2, first_frame=first)
    best = pipe(PROMPTS, num_candidates=3, seed=2, first_frame=first, rerank="round-trip")
    with torch.no_grad():
        distances = pipe.tokenizer.round_trip_distance(every.tokens, every.frames * 2 - 1).view(2, 3)
    chosen = distances.argmin(dim=1)
    assert distances.min(dim=1).values.lt(distances.max(dim=1).values).all()  # a choice was there to make
    for i in range(2):
        assert torch.equal(best.tokens[i], every.tokens[3 * i + chosen[i]])
        assert torch.equal(best.frames[i], every.frames[3 * i + chosen[i]])
    with pytest.raises(ValueError, match="unknown rerank 'best'; accepted: clip, round-trip"):
        pipe(PROMPTS, num_candidates=3, first_frame=first, rerank="best")


def test_compose_script_adds_a_first_frame_pipeline(tmp_path, run_script):
    pipe = factorized_pipeline()
    TextToVideoPipeline(pipe.tokenizer, pipe.generator, pipe.prompt_encoder).save_pretrained(tmp_path / "video")
    (tmp_path / "video" / "training.json").write_text("{}")
    pipe.first_frame_pipeline.save_pretrained(tmp_path / "image")
    args = ["--pipeline", str(tmp_path / "video"), "--first-frame", str(tmp_path / "image")]
    done = run_script(
        "compose_video_pipeline",
        *args,
        "--frame-captions",
        "moving-shapes",
        "--dtype",
        "float32",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    composed = TextToVideoPipeline.from_pretrained(tmp_path / "out")
    assert composed.frame_captions == "moving-shapes" and (tmp_path / "out" / "training.json").is_file()
    assert torch.equal(composed(PROMPTS, seed=1).tokens, pipe(PROMPTS, seed=1).tokens)
