"""Text-to-video: tokenizing clips for training, the 3-D generator's training run, the pipeline folder and grading
clips of moving shapes, on tiny models (the grader is the shipped one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from generators import GeneratorTrainConfig, PromptEncoder, TextToImagePipeline, create_generator, train_generator
from generators.training import tokenize_split
from generators.video import TextToVideoPipeline
from tokenizers_vis import create_tokenizer, load_tokenizer
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.data import DIRECTIONS, MovingShapes, make_video_caption, render_video, uint8_to_tensor
from tokenizers_vis.data.language import SIZE_FRACTION, parse_prompt, parse_video_prompt, video_frame_captions
from tokenizers_vis.evaluation import grade_videos, load_grader

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a large red circle moving to the left", "a small blue star moving towards the top right"]


def tiny_parts(grid: tuple[int, ...] = (2, 4, 4)):
    """Tiny video tokenizer (5 frames of 32x32 -> 2 x 4 x 4 indices), prompt encoder and generator."""
    torch.manual_seed(0)
    tokenizer = create_tokenizer("video-tiny").eval()
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    encoder = PromptEncoder(clip)
    generator = create_generator(
        "nt-tiny", codebook_size=tokenizer.codebook_size, grid_size=grid, prompt_dim=encoder.dim, prompt_length=32
    )
    return tokenizer, generator, encoder


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory):
    """The tiny tokenizer and prompt encoder saved as folders, as a training run finds them."""
    root = tmp_path_factory.mktemp("video_parts")
    tokenizer, _, encoder = tiny_parts()
    tokenizer.save_pretrained(root / "tokenizer")
    encoder.save_pretrained(root / "clip")
    return root


def video_config(saved_parts: Path, tmp_path: Path, **kw) -> GeneratorTrainConfig:
    base = dict(
        tokenizer=str(saved_parts / "tokenizer"),
        prompt_encoder=str(saved_parts / "clip"),
        preset="nt-tiny",
        data="videos",
        frames=5,
        resolution=32,
        train_samples=24,
        eval_samples=8,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        mixed_precision="no",  # bf16 Conv3d backward on CPU is unreliable; fp32 keeps the tiny runs exact
        cpu_threads=1,  # tiny models: a second thread only waits on a busy machine
    )
    return GeneratorTrainConfig(**(base | kw))


def test_video_tokens_are_stored_as_t_h_w_grids(saved_parts, tmp_path):
    cfg = video_config(saved_parts, tmp_path)
    tokenizer = load_tokenizer(saved_parts / "tokenizer")
    data = tokenize_split(tokenizer, "heldout", cfg, "prompt", Accelerator(cpu=True))
    assert len(data) == 8 and data.grid == (2, 4, 4) and not data.has_flip  # captions may say left or right
    clips = MovingShapes(8, 32, frames=5, split="heldout", seed=0)
    assert data.captions(torch.arange(8)) == [clips.describe(i)["caption"] for i in range(8)]
    assert torch.equal(data.tokens(torch.tensor([2]))[0], tokenizer.encode(clips[2]["video"][None])[0])
    (store,) = (tmp_path / "cache").glob("tokens-videos-heldout-32x5-*")
    (store / "index.json").write_text("{}")  # a second call must read the finished store, not re-encode
    with pytest.raises(KeyError):
        tokenize_split(tokenizer, "heldout", cfg, "prompt", Accelerator(cpu=True))
    with pytest.raises(ValueError, match="needs a video tokenizer"):
        tokenize_split(create_tokenizer("vq-f8-tiny"), "heldout", cfg, "prompt", Accelerator(cpu=True))


def test_video_generator_trains_and_saves_a_video_pipeline(saved_parts, tmp_path):
    cfg = video_config(saved_parts, tmp_path, steps=1, sample_every=1, output_dir=str(tmp_path / "run"))
    metrics = train_generator(cfg)
    out = tmp_path / "run"
    assert metrics["grid"] == [2, 4, 4] and metrics["trained_steps_this_run"] == 1
    assert 0 < metrics["heldout_token_accuracy"] <= 1
    assert (out / "samples_000001.gif").is_file() and (out / "samples.png").is_file()
    gif = Image.open(out / "samples.gif")
    assert gif.n_frames == 5 and gif.size == (4 * 33 + 1, 8 * 33 + 1)  # 8 prompts x 4 clips, 1 px apart
    assert Image.open(out / "samples.png").size == (5 * 33 + 1, 32 * 33 + 1)  # one clip per row
    pipe = TextToVideoPipeline.from_pretrained(out / "pipeline")
    assert pipe.generator.config.grid_size == [2, 4, 4]
    record = json.loads((out / "pipeline" / "training.json").read_text())  # what the benchmark's table reads
    assert record["generator"]["steps"] == 1 and record["generator"]["run_seconds"] > 0
    assert record["tokenizer"] == {"folder": cfg.tokenizer}  # a bare model folder: no run metrics next to it
    assert pipe(PROMPTS[0], seed=0).frames.shape == (1, 5, 3, 32, 32)


def test_video_pipeline_round_trips_and_refuses_bad_calls(tmp_path):
    pipe = TextToVideoPipeline(*tiny_parts(), defaults={"guidance_scale": 2.0, "top_k": 20})
    out = pipe(PROMPTS, num_videos_per_prompt=2, seed=5)
    assert out.tokens.shape == (4, 2, 4, 4) and out.frames.shape == (4, 5, 3, 32, 32)
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    assert len(out.videos) == 4 and len(out.videos[0]) == 5 and out.videos[0][0].size == (32, 32)
    out.save_gif(tmp_path / "clips.gif", per_row=2)
    assert Image.open(tmp_path / "clips.gif").n_frames == 5

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoPipeline"
    assert index["tokenizer"] == ["tokenizers_vis", "VideoTokenizer"] and index["defaults"]["guidance_scale"] == 2.0
    again = TextToVideoPipeline.from_pretrained(tmp_path / "pipe")(PROMPTS, num_videos_per_prompt=2, seed=5)
    assert torch.equal(again.tokens, out.tokens) and torch.equal(again.frames, out.frames)

    with pytest.raises(ValueError, match="not a TextToImagePipeline"):
        TextToImagePipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        pipe(PROMPTS, num_candidates=0)
    with pytest.raises(ValueError, match="flow_steps does not apply"):
        pipe(PROMPTS, flow_steps=4)
    image_tokenizer = create_tokenizer("vq-f8-tiny")
    with pytest.raises(ValueError, match="needs a prompt-conditioned generator and a video tokenizer"):
        TextToVideoPipeline(image_tokenizer, *tiny_parts(grid=(4, 4))[1:])


def planted_clips() -> tuple[torch.Tensor, list[str]]:
    """One real 9-frame 64x64 clip per direction (shapes, colours and backgrounds of held-out clips), each object
    crossing the frame's centre."""
    clips = MovingShapes(len(DIRECTIONS), 64, frames=9, split="heldout", seed=3)
    videos, prompts = [], []
    for i, (direction, (dx, dy)) in enumerate(DIRECTIONS.items()):
        clip = clips.describe(i)
        start, end = (0.5 - 0.2 * dx, 0.5 - 0.2 * dy), (0.5 + 0.2 * dx, 0.5 + 0.2 * dy)
        objects = [clip["objects"][0] | {"direction": direction, "start": start, "end": end}]
        frames = render_video(objects, clip["background"], frames=9, resolution=64)
        videos.append(torch.stack([uint8_to_tensor(f) for f in frames]))
        prompts.append(make_video_caption(objects))
    return torch.stack(videos), prompts


def test_grade_videos_reads_objects_and_directions_of_real_clips():
    grader = load_grader(ROOT / "assets" / "grader")
    videos, prompts = planted_clips()
    report = grade_videos(grader, videos, prompts)
    assert report["correct"] == [True] * 8 and report["accuracy"] == 1.0
    assert [p["direction"] for p in report["predictions"]] == list(DIRECTIONS)

    # the prompt of the next clip: another direction (and shape / colour unless they happen to agree)
    swapped = grade_videos(grader, videos, prompts[1:] + prompts[:1])
    assert swapped["motion"] == [False] * 8
    targets = [parse_video_prompt(p) for p in prompts]
    same = [
        all(a[k] == b[k] for k in ("shape", "color")) for a, b in zip(targets, targets[1:] + targets[:1], strict=True)
    ]
    assert swapped["appearance"] == same

    still = grade_videos(grader, videos[:, :1].expand(-1, 9, -1, -1, -1), prompts)  # first frame held
    assert still["direction_accuracy"] == 0 and still["appearance_accuracy"] == 1.0
    empty = grade_videos(grader, torch.full((1, 9, 3, 64, 64), -0.5), prompts[:1])  # no object at all
    assert empty["predictions"] == [{"first": None, "last": None, "direction": None}] and empty["accuracy"] == 0


def test_video_prompts_parse_or_are_refused():
    clips = MovingShapes(50, split="train", seed=1)
    for i in range(len(clips)):
        (obj,) = clips.describe(i)["objects"]
        parsed = parse_video_prompt(clips.describe(i)["caption"])
        assert parsed == {k: obj[k] for k in ("size", "color", "shape", "direction")}
    assert parse_video_prompt(" A Small  White Hexagon moving UP. ")["direction"] == "up"
    grader = load_grader(ROOT / "assets" / "grader")
    videos = torch.zeros(1, 9, 3, 64, 64)
    with pytest.raises(ValueError, match="more than one object"):
        grade_videos(grader, videos, ["a large red circle moving up and a small blue star moving down"])
    with pytest.raises(ValueError, match="<direction>: to the left"):
        grade_videos(grader, videos, ["a large red circle at the top left"])


def test_frame_captions_start_where_every_clip_may_start_and_end_in_the_center():
    travel = 0.4  # MovingShapes' default
    for direction, (dx, dy) in DIRECTIONS.items():
        start, end = video_frame_captions(f"a large red star moving {direction}")
        assert end == "a large red star at the center" and parse_prompt(start)[0]["shape"] == "star"
        cell = parse_prompt(start)[0]["cell"]
        centre = ((cell % 3 + 0.5) / 3, (cell // 3 + 0.5) / 3)
        radius = SIZE_FRACTION["large"] / 6
        for axis, step in enumerate((dx, dy)):
            stop = centre[axis] + step * travel
            assert radius < min(centre[axis], stop) and max(centre[axis], stop) < 1 - radius  # the shape stays in
            assert 1 / 3 < stop < 2 / 3  # the middle cell's column and row
    with pytest.raises(ValueError, match="cannot parse video prompt"):
        video_frame_captions("a large red circle at the top left")


def test_generate_cli_writes_gifs_for_a_video_pipeline(tmp_path, run_script):
    TextToVideoPipeline(*tiny_parts()).save_pretrained(tmp_path / "pipe")
    flags = ["--pipeline", str(tmp_path / "pipe"), "--prompt", PROMPTS[0], "--num-images", "2"]
    result = run_script("generate", *flags, "--out", str(tmp_path / "out"), "--temperature", "0.8")
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [Path(line) for line in result.stdout.splitlines() if line.endswith(".gif")][:-1]  # the grid comes last
    assert [p.suffix for p in paths] == [".gif", ".gif"]
    assert all(Image.open(p).n_frames == 5 for p in paths)
    assert Image.open(tmp_path / "out" / "grid.gif").n_frames == 5


def test_the_sampling_libraries_import_without_torchmetrics():
    # generate.py's start-up: the metrics library is imported only where metrics are computed
    code = "import sys, generators, generators.video, tokenizers_vis; print('torchmetrics' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_tune_sampling_scores_a_video_pipeline_and_stores_defaults_only_with_write(tmp_path, run_script):
    TextToVideoPipeline(*tiny_parts()).save_pretrained(tmp_path / "pipe")
    flags = ["--pipeline", str(tmp_path / "pipe"), "--grader", str(ROOT / "assets" / "grader"), "--prompts", "3"]
    before = {f: f.read_bytes() for f in (tmp_path / "pipe").rglob("*") if f.is_file()}
    sweep = ["--guidance-scales", "1,2", "--temperatures", "0.5", "--top-ks", "0"]
    result = run_script("tune_sampling", *flags, *sweep, "--report", str(tmp_path / "sweep.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    # no --write: the pipeline folder is untouched, the table goes to --report only
    assert {f: f.read_bytes() for f in (tmp_path / "pipe").rglob("*") if f.is_file()} == before
    assert [r["guidance_scale"] for r in json.loads((tmp_path / "sweep.json").read_text())["results"]] == [1.0, 2.0]
    sweep = ["--guidance-scales", "2", "--temperatures", "0.5", "--top-ks", "0", "--num-candidates", "2"]
    result = run_script("tune_sampling", *flags, *sweep, "--write")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pipe" / "sampling_sweep.json").read_text())
    assert [r["guidance_scale"] for r in report["results"]] == [2.0]
    assert {"appearance_accuracy", "direction_accuracy", "shape", "color"} <= set(report["results"][0])
    defaults = TextToVideoPipeline.from_pretrained(tmp_path / "pipe").defaults
    chosen = (defaults["guidance_scale"], defaults["temperature"], defaults["num_candidates"], defaults["rerank"])
    assert chosen == (2.0, 0.5, 2, "clip")  # without --rerank, the pipeline's own re-ranker is stored
