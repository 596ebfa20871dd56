"""Benchmark text-to-image generation: prompt accuracy read back by the attribute grader, guidance sweep, Fréchet
distance in CLIP image space, and sampling speed with and without the KV cache.

    python scripts/bench_generation.py                       # shipped pipeline and grader -> benchmarks/generation.md
    python scripts/bench_generation.py --pipeline runs/gen/pipeline --prompts 50
    python scripts/bench_generation.py --compare             # next-token vs next-X entities, objectives, MTP
    python scripts/bench_generation.py --video assets/video_pipeline runs/video_f4/pipeline --prompts 48   # videos
    python scripts/bench_generation.py --peer-llamagen LLAMAGEN_CHECKOUT   # sampler vs LlamaGen's (bench_sampler.py)

``--compare`` trains every generator row in this run on the same tokenizer, cached tokens, seed, steps and batch
(default: an 8x8-token vq-f8 tokenizer trained on the classic scenes on first use, so 9 rows fit in about an hour on 2
CPU cores) and reports prompt accuracy, Fréchet distance, transformer forward passes and wall time per image. Its table
replaces the "Compare at <steps> steps on <tokenizer>" section of benchmarks/generation.md (other budgets' sections
stay). Finished rows are kept in their run folders (``bench_row.json``), so a table can gather rows measured by several
invocations; ``--compare-sampling tuned`` samples each row with its pipeline's tuned defaults
(``scripts/tune_sampling.py --write``) instead of fixed settings per generator family.

Prompts are captions of unseen scenes: "seen" ones use only (shape, colour) pairs seen in training, "held-out" ones
each contain one pair never seen in training (``tokenizers_vis.data.HELDOUT_PAIRS``). A prompt is correct when
the grader finds exactly the prompted objects, each in its cell with the right shape, colour and size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import torch

from generators import TextToImagePipeline, TextToVideoPipeline, save_grid
from generators.benchmark import (
    COMPARE_ROWS,
    COMPARE_SAMPLING,
    BenchConfig,
    benchmark_images,
    benchmark_video,
    compare_generators,
    prompt_sets,
)
from tokenizers_vis.evaluation import load_grader
from tokenizers_vis.train_core import cpu_name

ROOT = Path(__file__).resolve().parent.parent
COMPARE_PREFIX = "## Compare"
VIDEO_HEADER = "## Text-to-video"


def bench_config(args) -> BenchConfig:
    return BenchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)})


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cells(r: dict, *keys: str) -> str:
    return " | ".join(pct(r[k]) for k in keys)


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


def compare(args) -> None:
    training = (Path(args.compare_tokenizer), args.compare_steps, args.compare_train_samples, Path(args.compare_dir))
    tuned = args.compare_sampling == "tuned"
    grader = load_grader(args.grader)
    rows = compare_generators(grader, bench_config(args), args.rows, *training, tuned=tuned, threads=args.threads or 0)
    write_compare(args, rows)


def write_compare(args, rows: list[dict]) -> None:
    # one section per tokenizer and budget, so comparisons at different scales sit side by side
    header = (
        f"{COMPARE_PREFIX} at {args.compare_steps} steps on `{args.compare_tokenizer}`: next-token vs next-X "
        "entities, objectives, multi-token prediction"
    )
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
            f"| {r['name']} | {pct(s['accuracy'])} | {pct(r['held-out']['accuracy'])} "
            f"| {' / '.join(pct(s[k]) for k in ('shape', 'color', 'size', 'position'))} | {r['fd']:.4f} "
            f"| {r['forward_passes']} "
            f"| 1/{rows[0]['forward_passes'] / r['forward_passes']:.0f} | {r['seconds_per_image']:.3f} "
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
    args.out.mkdir(parents=True, exist_ok=True)
    replace_section(args.out / "generation.md", header, section)
    rows_file = args.out / "generation_compare.json"  # {section title: rows}, like the markdown's sections
    sections = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    sections[header.removeprefix("## ")] = rows
    rows_file.write_text(json.dumps(sections, indent=2, default=str) + "\n")
    print(section)


def training_cell(folder: Path) -> str:
    """Wall time of the pipeline's training from its ``training.json`` (tokenizer + generator runs), or "?"."""
    record = folder / "training.json"
    if not record.is_file():
        return "?"
    runs = json.loads(record.read_text())
    tok, gen = runs["tokenizer"].get("run_seconds"), runs["generator"].get("run_seconds")
    if tok is None or gen is None:
        return f"generator {gen / 60:.0f} min" if gen else "?"
    return f"{(tok + gen) / 60:.0f} min ({tok / 60:.0f} + {gen / 60:.0f})"


def video(args) -> None:
    """Grades clips of text-to-video pipelines side by side: colour and shape on the first and last frames, motion
    direction, Fréchet distance of the frames, tokens per clip, training wall time and sampling seconds per clip."""
    scales = [float(s) for s in args.video_scales.split(",")]
    grader = load_grader(args.grader)
    (args.out / "generation").mkdir(parents=True, exist_ok=True)
    video_cells = ("appearance_accuracy", "direction_accuracy", "accuracy")
    lines, gifs, references = [], [], []
    for folder in args.video:
        pipe = TextToVideoPipeline.from_pretrained(folder)
        bench = benchmark_video(pipe, grader, bench_config(args), scales)
        facts, tokenizer = bench.facts, type(pipe.tokenizer).__name__
        how = [tokenizer, f"{facts['tokens_per_clip']} tokens"]
        if pipe.first_frame_pipeline is not None:
            how.append("first frame from a text-to-image pipeline")
        if pipe.defaults["num_candidates"] > 1:
            ranker = {"clip": "CLIP", "round-trip": "round trip"}[pipe.defaults["rerank"]]
            how.append(f"best of {pipe.defaults['num_candidates']} by {ranker}")
        name = f"`{folder}` ({', '.join(how)})"
        for row, output in zip(bench.rows, bench.outputs, strict=True):
            gif = f"video_{folder.parent.name}_{folder.name}_g{row['guidance']:g}.gif"
            output.save_gif(args.out / "generation" / gif, per_row=2 * args.images_per_prompt)
            gifs.append(gif)
            lines.append(
                f"| {name} | {row['guidance']:g} | {cells(row, *video_cells)} | {pct(row['color'])} / "
                f"{pct(row['shape'])} | {row['fd']:.3f} | {training_cell(folder)} | {facts['seconds_per_clip']:.2f} |"
            )
        r = bench.references["reconstructed"]
        references.append(
            f"| {name}: tokenizer reconstructions (ceiling) | | {cells(r, *video_cells)} | {pct(r['color'])} / "
            f"{pct(r['shape'])} | {facts['fd_reconstructed']:.3f} | | |"
        )
    r = bench.references["real"]
    real = f"{cells(r, *video_cells)} | {pct(r['color'])} / {pct(r['shape'])}"
    references.append(f"| real clips (reference) | | {real} | | | |")
    command = " ".join(str(f) for f in args.video)
    header = [
        VIDEO_HEADER,
        "",
        f"Command: `python scripts/bench_generation.py --video {command} --prompts {args.prompts}`. "
        f"{len(bench.captions)} held-out moving-shape captions x {args.images_per_prompt} clips of 9 frames, each "
        "pipeline's sampling defaults except guidance. Machine: "
        f"{cpu_name()}, {torch.get_num_threads()} torch threads, CUDA: {torch.cuda.is_available()}. "
        "Appearance: colour and shape right on the first and the last frame; direction: the object's displacement "
        "from the first to the last frame is the prompted one of 8 directions "
        "(`tokenizers_vis.evaluation.grade_videos`). FD: Fréchet distance between the prompt encoder's CLIP "
        "embeddings of every frame of the generated clips and of the real clips of the same captions. Training: "
        "wall time of the tokenizer and generator runs (the pipeline's `training.json`). Seconds per clip: one batch "
        "of 8 clips after a warm-up, KV cache on.",
        "",
        "| pipeline | guidance | appearance (first & last frames) | direction | both | colour / shape per frame | FD "
        "| training | seconds per clip |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    section = "\n".join([*header, *lines, *references, "", *(f"![](generation/{gif})" for gif in gifs), ""])
    replace_section(args.out / "generation.md", VIDEO_HEADER, section)
    print(section)


def images(args) -> None:
    """Prompt accuracy, guidance sweep, Fréchet distance and sampling speed of a text-to-image pipeline."""
    pipe = TextToImagePipeline.from_pretrained(args.pipeline)
    (args.out / "generation").mkdir(parents=True, exist_ok=True)
    cfg = bench_config(args)
    report = benchmark_images(pipe, load_grader(args.grader), cfg, [float(s) for s in args.scales.split(",")])
    sets = prompt_sets(cfg)
    showcase = [(p, "seen", f"seen_{i}.png") for i, p in enumerate(sets["seen"][:4])]
    showcase += [(p, "held-out", f"heldout_{i}.png") for i, p in enumerate(sets["held-out"][:4])]
    for prompt, _, name in showcase:  # one grid of 8 samples per prompt
        save_grid(pipe(prompt, num_images_per_prompt=8, seed=args.seed).images, args.out / "generation" / name, 8)
    write_markdown(args, report, showcase)
    (args.out / "generation.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def write_markdown(args, report: dict, showcase: list[tuple[str, str, str]]) -> None:
    lines = [
        "# Text-to-image generation benchmark",
        "",
        "Command: `python scripts/bench_generation.py`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch CPU threads, torch {torch.__version__}, "
        "fp32.  ",
        f"Pipeline: `{args.pipeline.relative_to(ROOT) if args.pipeline.is_relative_to(ROOT) else args.pipeline}`, "
        f"sampling defaults {json.dumps(report['defaults'])}.",
        "",
        "## Prompt accuracy",
        "",
        f"{args.prompts} prompts per set, {args.images_per_prompt} images each. Correct = the grader reads back "
        "exactly the prompted objects (shape, colour, size, cell), nothing more.",
        "",
        "| prompts | accuracy | shape | colour | size | position | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    metrics = ("accuracy", "shape", "color", "size", "position")
    labels = {"seen": "seen combinations", "held-out": "held-out combinations", "seen-single": "seen, 1 candidate"}
    for name in [n for n in labels if n in report]:
        lines.append(f"| {labels[name]} | {cells(report[name], *metrics)} | {report[name]['seconds']} |")
    for name, key in (("real held-out scenes", "grader_real"), ("tokenizer reconstructions", "grader_reconstructed")):
        lines.append(f"| grader on {name} (reference) | {cells(report[key], *metrics)} | |")
    lines += [
        "",
        f"## Guidance sweep ({args.sweep_prompts} seen prompts, 1 image each, other settings at their defaults)",
        "",
        "| guidance scale | accuracy | shape | colour | size | position | CLIP score |",
        "|---|---|---|---|---|---|---|",
    ]
    for scale, r in report["sweep"].items():
        lines.append(f"| {scale:g} | {cells(r, *metrics)} | {r['clip_score']:.2f} |")
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
    for prompt, kind, name in showcase:
        lines += [f"**{prompt}** ({kind} combinations)", "", f"![](generation/{name})", ""]
    path = args.out / "generation.md"
    old = path.read_text() if path.is_file() else ""
    kept = [old.index(h) for h in (COMPARE_PREFIX, VIDEO_HEADER) if h in old]  # sections other modes wrote
    path.write_text("\n".join(lines) + "\n" + ("\n" + old[min(kept) :] if kept else ""))
    print("\n".join(lines))


def main() -> None:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=ROOT / "assets" / "pipeline")
    p.add_argument("--grader", type=Path, default=ROOT / "assets" / "grader")
    p.add_argument("--prompts", type=int, default=d.prompts, help="prompts per set (seen / held-out)")
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt)
    p.add_argument("--scales", default="1,1.5,2,3,4,6", help="guidance scales for the sweep")
    p.add_argument("--sweep-prompts", type=int, default=d.sweep_prompts)
    p.add_argument("--real", type=int, default=d.real, help="held-out real scenes for the Fréchet distance")
    p.add_argument("--speed-images", type=int, default=d.speed_images)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    p.add_argument("--compare", action="store_true", help="train and compare the generator rows instead")
    p.add_argument("--video", type=Path, nargs="+", help="grade these text-to-video pipeline folders instead")
    p.add_argument("--video-scales", default="1,3", help="guidance scales for --video")
    p.add_argument("--rows", nargs="+", choices=list(COMPARE_ROWS), default=list(COMPARE_ROWS))
    p.add_argument("--compare-steps", type=int, default=1000)
    p.add_argument("--compare-train-samples", type=int, default=20000)
    p.add_argument("--compare-tokenizer", default="runs/bench_generation/tokenizer/model")
    p.add_argument("--compare-dir", default="runs/bench_generation")
    p.add_argument(
        "--compare-sampling",
        choices=["fixed", "tuned"],
        default="fixed",
        help="fixed settings per generator family, or each row pipeline's tuned defaults (run tune_sampling first)",
    )
    p.add_argument(
        "--peer-llamagen",
        type=Path,
        help="a LlamaGen checkout: race its sampler against ours instead (scripts/bench_sampler.py)",
    )
    args = p.parse_args()
    if args.peer_llamagen:
        from bench_sampler import main as bench_sampler

        bench_sampler(
            ["--peer-llamagen", str(args.peer_llamagen), *(["--threads", str(args.threads)] * bool(args.threads))]
        )
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        compare(args)
    elif args.video:
        video(args)
    else:
        images(args)


if __name__ == "__main__":
    main()
