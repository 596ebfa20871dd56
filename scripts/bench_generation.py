"""Benchmark text-to-image generation: prompt accuracy read back by the attribute grader, guidance sweep, Fréchet
distance in CLIP image space, and sampling speed with and without the KV cache.

    python scripts/bench_generation.py                       # shipped pipeline and grader -> benchmarks/generation.md
    python scripts/bench_generation.py --pipeline runs/gen/pipeline --prompts 50
    python scripts/bench_generation.py --compare             # next-token vs next-X entities, objectives, MTP
    python scripts/bench_generation.py --video runs/video_f4/pipeline --prompts 48    # text-to-video grading

``--compare`` trains every generator row in this run on the same tokenizer, cached tokens, seed, steps and batch
(default: the 8x8-token vq-f8 tokenizer of the tokenizer benchmark, so 9 rows fit in about an hour on 2 CPU cores)
and reports prompt accuracy, Fréchet distance, transformer forward passes and wall time per image. Its table
replaces the "Compare at <steps> steps on <tokenizer>" section of benchmarks/generation.md (other budgets' sections
stay). Finished rows are kept in their run folders (``bench_row.json``), so a table can gather rows measured by
several invocations; ``--compare-sampling tuned`` samples each row with its pipeline's tuned defaults
(``scripts/tune_sampling.py --write``) instead of fixed settings per generator family.

Prompts are captions of unseen scenes: "seen" ones use only (shape, colour) pairs seen in training, "held-out" ones
each contain one pair never seen in training (``tokenizers_vis.data.HELDOUT_PAIRS``). A prompt is correct when
the grader finds exactly the prompted objects, each in its cell with the right shape, colour and size.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from generators import (
    GeneratorTrainConfig,
    TextToImagePipeline,
    TextToVideoPipeline,
    save_grid,
    train_generator,
)
from tokenizers_vis import TrainConfig, train_tokenizer
from tokenizers_vis.data import MovingShapes, SyntheticScenes
from tokenizers_vis.evaluation import clip_score, frechet_distance, grade, grade_videos, load_grader

ROOT = Path(__file__).resolve().parent.parent


def prompts_of(split: str, count: int, seed: int) -> list[str]:
    scenes = SyntheticScenes(count, 64, split=split, seed=seed + 1)  # seed + 1: not the grader's or CLIP's eval set
    return [scenes.describe(i)["caption"] for i in range(count)]


def generate(pipe, prompts: list[str], per_prompt: int, seed: int, chunk: int = 64, **sampling) -> torch.Tensor:
    """(len(prompts) * per_prompt, 3, H, W) in [0, 1], prompt-major."""
    out = []
    for i in range(0, len(prompts), chunk):
        out.append(pipe(prompts[i : i + chunk], num_images_per_prompt=per_prompt, seed=seed + i, **sampling).pixels)
    return torch.cat(out)


def score(grader, images: torch.Tensor, prompts: list[str], per_prompt: int) -> dict:
    repeated = [p for p in prompts for _ in range(per_prompt)]
    result = grade(grader, images * 2 - 1, repeated)
    return {k: result[k] for k in ("accuracy", "shape", "color", "size", "position")}


def timed_sampling(pipe, prompts: list[str], use_cache: bool, **sampling) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    tokens = pipe(prompts, seed=0, use_cache=use_cache, num_candidates=1, **sampling).tokens
    return time.perf_counter() - start, tokens


# name -> (preset, model overrides, sampling overrides); every row is trained with the same loop and budget
COMPARE_ROWS: dict[str, tuple[str, dict, dict]] = {
    "next-token": ("nt-small", {}, {}),
    "next-token, TokenUnify mixture": ("nt-small", {"objectives": {"next": 0.6, "random": 0.2, "next_all": 0.2}}, {}),
    "next-token, 4-token prediction": ("nt-small", {"num_predict": 4}, {}),
    "next-X token": ("nx-small", {"entity": "token"}, {}),
    "next-X cell 2x2": ("nx-small", {"entity": "cell", "k": 2}, {}),
    "next-X cell 2x2, clean context": ("nx-small", {"entity": "cell", "k": 2, "noisy_context": False}, {}),
    "next-X subsample 2x2": ("nx-small", {"entity": "subsample", "k": 2}, {}),
    "next-X scale": ("nx-small", {"entity": "scale"}, {}),
    "next-X image": ("nx-small", {"entity": "image"}, {}),
}


class ForwardCounter:
    """Counts a module's forward calls (transformer passes of one sampling run)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1


def compare_tokenizer(args) -> Path:
    """The tokenizer every compare row uses; trained here (vq-f8, 1000 steps) when the folder is missing."""
    folder = Path(args.compare_tokenizer)
    if not (folder / "config.json").is_file():
        run = folder.parent
        train_tokenizer(TrainConfig(preset="vq-f8", steps=1000, output_dir=str(run), save_every=10**9))
    return folder


def compare(args) -> None:
    grader = load_grader(args.grader)
    tokenizer = compare_tokenizer(args)
    prompts = {
        "seen": prompts_of("heldout", args.prompts, args.seed),
        "held-out": prompts_of("novel", args.prompts, args.seed),
    }
    real_scenes = SyntheticScenes(args.real, 64, split="heldout", seed=args.seed + 1)
    real01 = (torch.stack([real_scenes[i]["image"] for i in range(args.real)]) + 1) / 2
    rows = []
    for name in args.rows:
        preset, overrides, sampling = COMPARE_ROWS[name]
        out = Path(args.compare_dir) / name.replace(" ", "_").replace(",", "")
        if (out / "bench_row.json").is_file():  # trained and measured by an earlier invocation
            rows.append(json.loads((out / "bench_row.json").read_text()))
            continue
        cfg = GeneratorTrainConfig(
            tokenizer=str(tokenizer),
            preset=preset,
            model_overrides=overrides,
            steps=args.compare_steps,
            train_samples=args.compare_train_samples,
            output_dir=str(out),
            save_every=10**9,
            sample_every=0,
            seed=args.seed,
            cpu_threads=args.threads or 0,
        )
        if not (out / "metrics.json").is_file():
            train_generator(cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        pipe = TextToImagePipeline.from_pretrained(out / "pipeline")
        settings = {**(pipe.defaults if args.compare_sampling == "tuned" else COMPARE_SAMPLING[preset]), **sampling}
        row = {"name": name, "train_seconds": metrics["wall_seconds"], "settings": settings}
        for split, texts in prompts.items():
            images = generate(pipe, texts, args.images_per_prompt, args.seed, **settings)
            row[split] = score(grader, images, texts, args.images_per_prompt)
            if split == "seen":
                row["fd"] = frechet_distance(pipe.prompt_encoder.clip, real01, images)
        counter = ForwardCounter(pipe.generator.transformer)
        batch = prompts["seen"][: args.speed_images]
        pipe(batch[:1], seed=0, **settings)  # warm-up
        counter.count = 0
        start = time.perf_counter()
        pipe(batch, seed=0, **settings)
        row["seconds_per_image"] = (time.perf_counter() - start) / len(batch)
        row["forward_passes"] = counter.count
        if pipe.generator.config.get("num_predict", 1) > 1:  # greedy, one token at a time vs verified blocks
            greedy = {**settings, "temperature": 0.0}
            counter.count = 0
            plain = pipe(batch, seed=0, num_predict_used=1, **greedy).tokens
            row["forward_passes_one_token"] = counter.count
            counter.count = 0
            fast = pipe(batch, seed=0, **greedy).tokens
            row["forward_passes_verified"] = counter.count
            row["identical_greedy"] = bool(torch.equal(plain, fast))
        rows.append(row)
        (out / "bench_row.json").write_text(json.dumps(row, indent=2, default=str))
        print(json.dumps(row, default=str))
    write_compare(args, rows)


# fixed sampling settings per generator family (--compare-sampling fixed): guidance 2 for both; next-token at
# temperature 0.7, next-X's flow head from full-scale noise
COMPARE_SAMPLING = {
    "nt-small": {"guidance_scale": 2.0, "temperature": 0.7, "num_candidates": 1},
    "nx-small": {"guidance_scale": 2.0, "temperature": 1.0, "num_candidates": 1},
}


def compare_header(args) -> str:
    """One compare section per tokenizer and budget, so comparisons at different scales sit side by side."""
    return (
        f"{COMPARE_PREFIX} at {args.compare_steps} steps on `{args.compare_tokenizer}`: next-token vs next-X "
        "entities, objectives, multi-token prediction"
    )


def write_compare(args, rows: list[dict]) -> None:
    ref, header = rows[0], compare_header(args)
    sampling = (
        "each pipeline's own defaults, as tuned by `scripts/tune_sampling.py` on training-split prompts (see the "
        "row's `bench_row.json`)"
        if args.compare_sampling == "tuned"
        else f"fixed per family: {json.dumps(COMPARE_SAMPLING)}"
    )
    lines = [
        header,
        "",
        f"Command: `python scripts/bench_generation.py --compare --compare-steps {args.compare_steps} "
        f"--compare-tokenizer {args.compare_tokenizer} --compare-train-samples {args.compare_train_samples} "
        f"--compare-sampling {args.compare_sampling} --prompts {args.prompts} --rows ...`. "
        f"Every row trained with the same loop and budget: tokenizer `{args.compare_tokenizer}`, "
        f"{args.compare_train_samples} cached training scenes, {args.compare_steps} steps of batch 32, seed "
        f"{args.seed}; {args.prompts} prompts per set x {args.images_per_prompt} images; FD to {args.real} real "
        f"held-out scenes in the shipped CLIP's image space; forward passes and wall time per image for a batch of "
        f"{args.speed_images} prompts (guidance runs conditional and null rows in one pass; other jobs may share the "
        f"cores, see the row's folder). Sampling: {sampling}. "
        f"Machine: {torch.get_num_threads()} CPU threads.",
        "",
        "| generator | seen accuracy | held-out accuracy | shape / colour / size / position (seen) | FD (CLIP) "
        "| forward passes / image | vs next-token | s / image | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seen"]
        lines.append(
            f"| {r['name']} | {pct(s['accuracy'])} | {pct(r['held-out']['accuracy'])} | {pct(s['shape'])} / "
            f"{pct(s['color'])} / {pct(s['size'])} / {pct(s['position'])} | {r['fd']:.4f} | {r['forward_passes']} "
            f"| 1/{ref['forward_passes'] / r['forward_passes']:.0f} | {r['seconds_per_image']:.3f} "
            f"| {r['train_seconds']:.0f} |"
        )
    for r in rows:
        if "forward_passes_verified" in r:
            lines += [
                "",
                f"{r['name']}: greedy decoding with self-verification takes {r['forward_passes_verified']} forward "
                f"passes vs {r['forward_passes_one_token']} one token at a time "
                f"({r['forward_passes_one_token'] / r['forward_passes_verified']:.2f}x fewer); identical tokens: "
                f"{r['identical_greedy']}.",
            ]
    section = "\n".join(lines) + "\n"
    replace_section(args.out / "generation.md", header, section)
    rows_file = args.out / "generation_compare.json"  # {section title: rows}, like the markdown's sections
    sections = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    sections[header.removeprefix("## ")] = rows
    rows_file.write_text(json.dumps(sections, indent=2, default=str) + "\n")
    print(section)


COMPARE_PREFIX = "## Compare"
VIDEO_HEADER = "## Text-to-video"


def replace_section(path: Path, header: str, section: str) -> None:
    """Writes ``section`` (starting with ``header``) into the markdown file, replacing that header's old section."""
    text = path.read_text() if path.is_file() else ""
    if header in text:
        before, after = text.split(header, 1)
        rest = after.split("\n## ", 1)
        text = before.rstrip() + "\n\n" + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = (text.rstrip() + "\n\n" if text else "") + section
    path.write_text(text)


def video(args) -> None:
    """Grades clips of a text-to-video pipeline: colour and shape on the first and last frames, motion direction."""
    pipe = TextToVideoPipeline.from_pretrained(args.video)
    grader = load_grader(args.grader)
    clips = MovingShapes(500, 64, frames=9, split="heldout", seed=args.seed + 1)
    first_clip = {}  # caption -> index of the first clip with it
    for i in range(len(clips)):
        first_clip.setdefault(clips.describe(i)["caption"], i)
    captions = list(first_clip)[: args.prompts]
    prompts = [c for c in captions for _ in range(args.images_per_prompt)]
    # references: the grader on the real clips of these captions and on their tokenizer reconstructions (the ceiling
    # a generator over these tokens can reach)
    real = torch.stack([clips[first_clip[c]]["video"] for c in captions])
    with torch.no_grad():
        tokens = pipe.tokenizer.encode(real.to(pipe.device, pipe.tokenizer.dtype))
        recon = pipe.tokenizer.decode(tokens).float().clamp(-1, 1).cpu()
    references = {
        "real clips": grade_videos(grader, real, captions),
        "tokenizer reconstructions": grade_videos(grader, recon, captions),
    }
    rows = []
    for scale in [float(s) for s in args.video_scales.split(",")]:
        start = time.perf_counter()
        out = pipe(captions, num_videos_per_prompt=args.images_per_prompt, seed=args.seed, guidance_scale=scale)
        result = grade_videos(grader, out.frames * 2 - 1, prompts)
        rows.append({"guidance": scale, "seconds": time.perf_counter() - start, **result})
        out.save_gif(args.out / "generation" / f"video_g{scale:g}.gif", per_row=2 * args.images_per_prompt)
        print(scale, {k: v for k, v in result.items() if isinstance(v, float)})
    lines = [
        VIDEO_HEADER,
        "",
        f"Command: `python scripts/bench_generation.py --video {args.video}`. {len(captions)} held-out moving-shape "
        f"captions x {args.images_per_prompt} clips, sampling defaults {json.dumps(pipe.defaults)} except guidance. "
        "Appearance: colour and shape right on the first and the last frame; direction: the object's displacement "
        "from the first to the last frame is the prompted one of 8 directions "
        "(`tokenizers_vis.evaluation.grade_videos`).",
        "",
        "| guidance | appearance (first & last frames) | direction | both | colour / shape per frame | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['guidance']:g} | {pct(r['appearance_accuracy'])} | {pct(r['direction_accuracy'])} "
            f"| {pct(r['accuracy'])} | {pct(r['color'])} / {pct(r['shape'])} | {r['seconds']:.0f} |"
        )
    for name, r in references.items():
        lines.append(
            f"| {name} (reference) | {pct(r['appearance_accuracy'])} | {pct(r['direction_accuracy'])} "
            f"| {pct(r['accuracy'])} | {pct(r['color'])} / {pct(r['shape'])} | |"
        )
    lines += ["", *(f"![](generation/video_g{r['guidance']:g}.gif)" for r in rows), ""]
    replace_section(args.out / "generation.md", VIDEO_HEADER, "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=ROOT / "assets" / "pipeline")
    p.add_argument("--grader", type=Path, default=ROOT / "assets" / "grader")
    p.add_argument("--prompts", type=int, default=100, help="prompts per set (seen / held-out)")
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--scales", default="1,1.5,2,3,4,6", help="guidance scales for the sweep")
    p.add_argument("--sweep-prompts", type=int, default=64)
    p.add_argument("--real", type=int, default=1000, help="held-out real scenes for the Fréchet distance")
    p.add_argument("--speed-images", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    p.add_argument("--compare", action="store_true", help="train and compare the generator rows instead")
    p.add_argument("--video", type=Path, help="grade this text-to-video pipeline folder instead")
    p.add_argument("--video-scales", default="1,3", help="guidance scales for --video")
    p.add_argument("--rows", nargs="+", choices=list(COMPARE_ROWS), default=list(COMPARE_ROWS))
    p.add_argument("--compare-steps", type=int, default=1000)
    p.add_argument("--compare-train-samples", type=int, default=20000)
    p.add_argument("--compare-tokenizer", default="runs/bench_tokenizer/vq2d/model")
    p.add_argument("--compare-dir", default="runs/bench_generation")
    p.add_argument(
        "--compare-sampling",
        choices=["fixed", "tuned"],
        default="fixed",
        help="fixed settings per generator family, or each row pipeline's tuned defaults (run tune_sampling first)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        compare(args)
        return
    if args.video:
        video(args)
        return

    pipe = TextToImagePipeline.from_pretrained(args.pipeline)
    grader = load_grader(args.grader)
    clip = pipe.prompt_encoder.clip
    defaults = dict(pipe.defaults)
    (args.out / "generation").mkdir(parents=True, exist_ok=True)
    report: dict = {"defaults": defaults}

    # the grader's own accuracy on real held-out scenes and on their tokenizer reconstructions
    real_scenes = SyntheticScenes(args.real, 64, split="heldout", seed=args.seed + 1)
    real = torch.stack([real_scenes[i]["image"] for i in range(args.real)])
    real_prompts = [real_scenes.describe(i)["caption"] for i in range(args.real)]
    with torch.no_grad():
        recon = torch.cat(
            [pipe.tokenizer.decode(pipe.tokenizer.encode(real[i : i + 256])) for i in range(0, len(real), 256)]
        )
    recon = (recon.clamp(-1, 1) + 1) / 2
    real01 = (real + 1) / 2
    report["grader_real"] = score(grader, real01[:500], real_prompts[:500], 1)
    report["grader_reconstructed"] = score(grader, recon[:500], real_prompts[:500], 1)

    # prompt accuracy at the pipeline's defaults
    sets = {
        "seen": prompts_of("heldout", args.prompts, args.seed),
        "held-out": prompts_of("novel", args.prompts, args.seed),
    }
    generated = {}
    for name, prompts in sets.items():
        t0 = time.perf_counter()
        generated[name] = generate(pipe, prompts, args.images_per_prompt, args.seed)
        report[name] = score(grader, generated[name], prompts, args.images_per_prompt)
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, report[name])
    if defaults["num_candidates"] > 1:  # the same prompts without CLIP re-ranking
        t0 = time.perf_counter()
        images = generate(pipe, sets["seen"], args.images_per_prompt, args.seed, num_candidates=1)
        report["seen-single"] = score(grader, images, sets["seen"], args.images_per_prompt)
        report["seen-single"]["seconds"] = round(time.perf_counter() - t0, 1)
        print("seen, no re-ranking", report["seen-single"])

    # guidance sweep on the seen prompts
    sweep_prompts = sets["seen"][: args.sweep_prompts]
    report["sweep"] = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        images = generate(pipe, sweep_prompts, 1, args.seed, guidance_scale=scale)
        report["sweep"][scale] = score(grader, images, sweep_prompts, 1)
        report["sweep"][scale]["clip_score"] = clip_score(clip, images, sweep_prompts)
        print("guidance", scale, report["sweep"][scale])

    # distribution distance in the CLIP image space
    fake = generated["seen"]
    fake_prompts = [p for p in sets["seen"] for _ in range(args.images_per_prompt)]
    report["fd_generated"] = frechet_distance(clip, real01, fake)
    report["fd_reconstructed"] = frechet_distance(clip, real01[len(fake) :], recon[: len(fake)])
    report["clip_score_generated"] = clip_score(clip, fake, fake_prompts)
    report["clip_score_real"] = clip_score(clip, real01[: len(fake)], real_prompts[: len(fake)])

    # sampling speed, greedy so the cached and uncached tokens can be compared exactly
    speed_prompts = sets["seen"][: args.speed_images]
    tokens_per_image = math.prod(pipe.generator.config.grid_size)
    timed_sampling(pipe, speed_prompts[:1], True, temperature=0.0)  # warm-up
    t_cache, tok_cache = timed_sampling(pipe, speed_prompts, True, temperature=0.0)
    t_plain, tok_plain = timed_sampling(pipe, speed_prompts, False, temperature=0.0)
    n = len(speed_prompts)
    report["speed"] = {
        "images": n,
        "tokens_per_image": tokens_per_image,
        "cache_images_per_s": n / t_cache,
        "cache_tokens_per_s": n * tokens_per_image / t_cache,
        "no_cache_images_per_s": n / t_plain,
        "no_cache_tokens_per_s": n * tokens_per_image / t_plain,
        "speedup": t_plain / t_cache,
        "identical_tokens": bool(torch.equal(tok_cache, tok_plain)),
    }
    print(report["speed"])

    # one grid per showcase prompt (8 samples each)
    showcase = sets["seen"][:4] + sets["held-out"][:4]
    for i, prompt in enumerate(showcase):
        kind = "seen" if i < 4 else "heldout"
        save_grid(
            pipe(prompt, num_images_per_prompt=8, seed=args.seed).images,
            args.out / "generation" / f"{kind}_{i % 4}.png",
            8,
        )

    write_markdown(args, report, showcase)
    (args.out / "generation.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_markdown(args, report: dict, showcase: list[str]) -> None:
    d = report["defaults"]
    lines = [
        "# Text-to-image generation benchmark",
        "",
        "Command: `python scripts/bench_generation.py`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch CPU threads, torch {torch.__version__}, "
        "fp32.  ",
        f"Pipeline: `{args.pipeline.relative_to(ROOT) if args.pipeline.is_relative_to(ROOT) else args.pipeline}`, "
        f"sampling defaults {json.dumps(d)}.",
        "",
        "## Prompt accuracy",
        "",
        f"{args.prompts} prompts per set, {args.images_per_prompt} images each. Correct = the grader reads back "
        "exactly the prompted objects (shape, colour, size, cell), nothing more.",
        "",
        "| prompts | accuracy | shape | colour | size | position | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"seen": "seen combinations", "held-out": "held-out combinations", "seen-single": "seen, 1 candidate"}
    for name in [n for n in labels if n in report]:
        r = report[name]
        lines.append(
            f"| {labels[name]} | {pct(r['accuracy'])} | {pct(r['shape'])} | {pct(r['color'])} | {pct(r['size'])} "
            f"| {pct(r['position'])} | {r['seconds']} |"
        )
    for name, key in (("real held-out scenes", "grader_real"), ("tokenizer reconstructions", "grader_reconstructed")):
        r = report[key]
        lines.append(
            f"| grader on {name} (reference) | {pct(r['accuracy'])} | {pct(r['shape'])} | {pct(r['color'])} "
            f"| {pct(r['size'])} | {pct(r['position'])} | |"
        )
    lines += [
        "",
        f"## Guidance sweep ({args.sweep_prompts} seen prompts, 1 image each, other settings at their defaults)",
        "",
        "| guidance scale | accuracy | shape | colour | size | position | CLIP score |",
        "|---|---|---|---|---|---|---|",
    ]
    for scale, r in report["sweep"].items():
        lines.append(
            f"| {scale:g} | {pct(r['accuracy'])} | {pct(r['shape'])} | {pct(r['color'])} | {pct(r['size'])} "
            f"| {pct(r['position'])} | {r['clip_score']:.2f} |"
        )
    s = report["speed"]
    lines += [
        "",
        "## Fréchet distance in the project CLIP's image space",
        "",
        "| images | FD to real held-out scenes | CLIP score |",
        "|---|---|---|",
        f"| generated (seen prompts) | {report['fd_generated']:.4f} | {report['clip_score_generated']:.2f} |",
        f"| tokenizer reconstructions (floor) | {report['fd_reconstructed']:.4f} | |",
        f"| real scenes | | {report['clip_score_real']:.2f} |",
        "",
        f"## Sampling speed ({s['images']} images of {s['tokens_per_image']} tokens, greedy, guidance on)",
        "",
        "| | images/s | tokens/s |",
        "|---|---|---|",
        f"| KV cache | {s['cache_images_per_s']:.2f} | {s['cache_tokens_per_s']:.0f} |",
        f"| no cache | {s['no_cache_images_per_s']:.2f} | {s['no_cache_tokens_per_s']:.0f} |",
        "",
        f"KV cache speed-up: **{s['speedup']:.1f}×**; identical greedy tokens: {s['identical_tokens']}.",
        "",
        "## Samples",
        "",
    ]
    for i, prompt in enumerate(showcase):
        kind = "seen" if i < 4 else "heldout"
        lines += [
            f"**{prompt}** ({'seen' if i < 4 else 'held-out'} combinations)",
            "",
            f"![](generation/{kind}_{i % 4}.png)",
            "",
        ]
    path = args.out / "generation.md"
    old = path.read_text() if path.is_file() else ""
    kept = [old.index(h) for h in (COMPARE_PREFIX, VIDEO_HEADER) if h in old]  # sections other modes wrote
    path.write_text("\n".join(lines) + "\n" + ("\n" + old[min(kept) :] if kept else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
