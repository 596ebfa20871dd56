"""Benchmark the tokenizer family on the synthetic scenes, or our default tokenizer against diffusers' VQModel.

Family (default): every image tokenizer is trained in this run with the same loop, data (the default run's: wide-
palette scenes with photo patches), seed, optimiser, schedule and number of steps, at 64x64 with about 64 tokens per
image (and the default run's 256-token vq-f4), then compared on held-out PSNR, SSIM, codebook usage, PSNR on
classic-palette scenes and on the two out-of-distribution sets (:mod:`tokenizers_vis.evaluation.ood`: flat-shape scenes
of another renderer, patches of photos never trained on), a linear probe of the scene attributes from frozen quantized
features (:mod:`tokenizers_vis.evaluation.probe`), the Fréchet distance between CLIP image embeddings of originals and
reconstructions, and encode+decode speed (ratio against the plain vq2d row). The video tokenizer is trained on 17-frame
moving-shape clips; its PSNR / SSIM / usage are on held-out clips, its out-of-distribution PSNR, probe, FD and speed on
images (one-frame videos).

    python scripts/bench_tokenizer.py                       # writes benchmarks/tokenizer.md
    python scripts/bench_tokenizer.py --reuse --rows vq2d dual   # reuse finished runs in --output-dir
    python scripts/bench_tokenizer.py --steps 300 --video-steps 600   # a shorter run of the same rows
    python scripts/bench_tokenizer.py --peer                # ours vs diffusers VQModel -> benchmarks/tokenizer_peer.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tokenizers_vis import TrainConfig, create_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.baselines import DiffusersVQTokenizer
from tokenizers_vis.clip import DEFAULT_CLIP, load_clip
from tokenizers_vis.data import PHOTO_SPLITS, build_dataset, collate_images
from tokenizers_vis.evaluation import (
    evaluate_ood,
    frechet_distance,
    items_per_second,
    linear_probe,
    ood_images,
    probe_latents,
    reconstruct,
    reconstruction_psnr,
    token_budget,
)
from tokenizers_vis.registry import tokenizer_families
from tokenizers_vis.training import materialize


def kind_row(kind: str, **fields) -> tuple[str, dict, dict]:
    """A row trained like ``scripts/train_tokenizer.py --tokenizer KIND``: its default preset and run defaults,
    with ``fields`` on top."""
    family = tokenizer_families()[kind]
    return family.default_preset, {**family.run_defaults, **fields}, {}


# name -> (preset, TrainConfig fields, model overrides)
ROWS: dict[str, tuple[str, dict, dict]] = {
    "vq2d": ("vq-f8", {}, {}),  # the reference row: 64 tokens, like the other families
    "vq2d-f4": kind_row("vq2d"),  # the default run's tokenizer (256 tokens)
    # the default run before the wide palette and photos: the "classic" scenes only
    "vq2d-classic": ("vq-f8", {"palette": "classic", "photo_fraction": 0.0}, {}),
    "rvq": ("rvq-f8", {}, {}),
    "fsq": ("fsq-f8", {}, {}),
    "lfq": ("lfq-f8", {}, {}),
    "vq2d+clip-dec": ("vq-f8", {"semantic_teacher": "clip"}, {}),
    "vq2d+clip-enc": ("vq-f8", {"semantic_teacher": "clip"}, {"semantic_layer": "encoder"}),
    "vq2d+clip-q": ("vq-f8", {"semantic_teacher": "clip"}, {"semantic_layer": "quantized"}),
    "vq2d+grader-dec": ("vq-f8", {"semantic_teacher": "assets/grader"}, {}),
    "vq2d+grader-q": ("vq-f8", {"semantic_teacher": "assets/grader"}, {"semantic_layer": "quantized"}),
    # the semantic loss (1 - cos, ~0.1-0.5) dwarfs the pixel MSE (~0.004): a small weight keeps the PSNR
    "vq2d+grader-q-w.03": (
        "vq-f8",
        {"semantic_teacher": "assets/grader", "semantic_weight": 0.03},
        {"semantic_layer": "quantized"},
    ),
    "vq2d+grader-q-w.01": (
        "vq-f8",
        {"semantic_teacher": "assets/grader", "semantic_weight": 0.01},
        {"semantic_layer": "quantized"},
    ),
    "vq2d+grader-q-w.003": (
        "vq-f8",
        {"semantic_teacher": "assets/grader", "semantic_weight": 0.003},
        {"semantic_layer": "quantized"},
    ),
    # the same dual tokenizer with no teacher: the baseline of its semantic regularization
    "dual-none": ("dual-f8", {"semantic_teacher": ""}, {}),
    "dual": kind_row("dual"),
    "dual+grader": ("dual-f8", {"semantic_teacher": "assets/grader"}, {}),
    "vq1d-32": ("vq1d-32", {}, {}),
    "vq1d-32-hybrid": ("vq1d-32-hybrid", {}, {}),
    "vq1d-32-prior": ("vq1d-32-prior", {}, {}),
    "vq1d-64": ("vq1d-64", {}, {}),
    "video": kind_row("video"),  # trained --video-steps
}


def labelled_scenes(split: str, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(DataLoader(build_dataset("scenes", split, 64, count, seed), count, collate_fn=collate_images)))
    return batch["image"], batch["labels"]


def speeds(model: torch.nn.Module, heldout: torch.Tensor, data: str, seed: int) -> dict[str, float]:
    """Encode+decode images per second on 128 held-out scenes (and frames per second on 17-frame clips)."""
    out = {"speed": items_per_second(model, heldout[:128])}
    if data == "videos":
        clips = materialize(build_dataset("videos", "heldout", 64, 8, seed, frames=17), 0, "clips")
        out["frames_per_second"] = items_per_second(model, clips) * clips.shape[1]
    return out


def family(args: argparse.Namespace) -> None:
    base = TrainConfig(steps=args.steps, save_every=10**9, cpu_threads=args.cpu_threads, seed=args.seed)
    heldout = materialize(build_dataset("scenes", "heldout", 64, args.eval_images, base.seed), 0, "held-out")
    probe_train, probe_train_labels = labelled_scenes("train", args.probe_train, base.seed + 1)
    probe_test, probe_test_labels = labelled_scenes("heldout", args.probe_test, base.seed)
    ood = ood_images(base.ood_samples, 64, base.seed)
    clip = load_clip(DEFAULT_CLIP)
    rows = []
    for name in args.rows:
        preset, fields, overrides = ROWS[name]
        out = Path(args.output_dir) / name
        cfg = dataclasses.replace(base, preset=preset, output_dir=str(out), model_overrides=overrides, **fields)
        if cfg.data == "videos":
            cfg = dataclasses.replace(cfg, steps=args.video_steps)
        if args.reuse and (out / "bench_row.json").is_file():  # trained and measured by an earlier invocation
            row = json.loads((out / "bench_row.json").read_text()) | {"reused": True}
            if args.retime:
                row.update(speeds(load_tokenizer(out / "model"), heldout, cfg.data, base.seed), retimed=True)
            rows.append(row)
            continue
        if not (args.reuse and (out / "metrics.json").is_file()):
            train_tokenizer(cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        model = load_tokenizer(out / "model")
        recon = torch.cat([reconstruct(model, heldout[i : i + 128]).clamp(-1, 1) for i in range(0, len(heldout), 128)])
        recon = recon.reshape(heldout.shape)  # the video tokenizer returns one-frame videos
        probe = linear_probe(
            probe_latents(model, probe_train), probe_train_labels, probe_latents(model, probe_test), probe_test_labels
        )
        tokens, bits = token_budget(model, heldout[0])
        row = {
            **metrics,
            "name": name,
            "preset": preset,
            "batch": cfg.batch_size,
            "clip_frames": (cfg.frames, cfg.eval_frames),
            "stills": cfg.image_batch_size,
            "eval_samples": cfg.eval_samples,
            "tokens": tokens,
            "bits": bits,
        }
        row.update(
            evaluate_ood(model, ood),  # also for runs reused from before the metric existed
            psnr_classic=reconstruction_psnr(model, heldout),  # one set for every row, whatever its training palette
            probe=probe,
            fd_clip=frechet_distance(clip, (heldout + 1) / 2, (recon + 1) / 2),
            **speeds(model, heldout, cfg.data, base.seed),
        )
        rows.append(row)
        (out / "bench_row.json").write_text(json.dumps(row, indent=2))
        keys = ("name", "psnr", "psnr_ood_scenes", "psnr_ood_photos", "ssim", "codebook_usage", "probe", "fd_clip")
        print(json.dumps({k: row[k] for k in keys}))
    write_family_table(rows, args, base)


def write_family_table(rows: list[dict], args: argparse.Namespace, base: TrainConfig) -> None:
    ref = next((r for r in rows if r["name"] == "vq2d"), rows[0])
    header = (
        "| tokenizer | preset | data | params (M) | tokens / image | bits / image | steps | PSNR (dB) | PSNR classic "
        "| PSNR OOD scenes | PSNR OOD photos | SSIM | codebook usage | probe mean | probe shape / colour / size "
        "| FD (CLIP) | train wall (s) | enc+dec img/s | speed ratio |"
    )
    lines = [header, "|" + "---|" * 19]
    for r in rows:
        p = r["probe"]
        usage = f"{r['codebook_usage']:.3f}"
        if "codebook_usage_each" in r:
            usage += " (" + " / ".join(f"{u:.2f}" for u in r["codebook_usage_each"]) + ")"
        data = f"{r['data']} ({r.get('palette') or 'classic'}" + (
            f", {100 * r['photo_fraction']:.0f} % photos)" if r.get("photo_fraction") else ")"
        )
        lines.append(
            f"| {r['name']} | {r['preset']} | {data} | {r['params'] / 1e6:.2f} | {r['tokens']} | {r['bits']:.0f} "
            f"| {r['steps']} | {r['psnr']:.2f} | {r['psnr_classic']:.2f} | {r['psnr_ood_scenes']:.2f} "
            f"| {r['psnr_ood_photos']:.2f} "
            f"| {r['ssim']:.3f} | {usage} | {100 * p['mean']:.1f} | {100 * p['shape']:.1f} / "
            f"{100 * p['color']:.1f} / {100 * p['size']:.1f} | {r['fd_clip']:.4f} | {r['wall_seconds']:.0f} | "
            f"{r['speed']:.0f} | {r['speed'] / ref['speed']:.2f}x |"
        )
    video = [r for r in rows if r["data"] == "videos"]
    notes = [
        f"- {r['name']}: PSNR / SSIM / usage on {r['eval_samples']} held-out {r['clip_frames'][1]}-frame clips (all "
        f"frames); trained {r['steps']} steps of {r['batch']} {r['clip_frames'][0]}-frame clips + {r['stills']} still "
        f"scenes; encode+decode "
        f"{r['frames_per_second']:.0f} frames/s on 17-frame clips."
        for r in video
    ]
    reused = [r["name"] for r in rows if r.get("reused")]
    if reused:
        retimed = all(r.get("retimed") for r in rows if r.get("reused"))
        notes.append(
            f"- Trained and measured by earlier invocations of this script and reused here (`--reuse`): "
            f"{', '.join(reused)}. "
            + (
                "Their speed columns were re-measured in this run (`--retime`), so every speed ratio compares "
                "tokenizers timed in one process."
                if retimed
                else "Their speed columns come from those runs, which may have shared the CPU cores with other jobs: "
                "compare speeds only within one run (`--retime` re-measures them)."
            )
        )
    text = "\n".join(
        [
            "# Tokenizer family benchmark",
            "",
            f"Synthetic scenes at 64x64; image tokenizers trained in this run with the same loop, seed {base.seed}, "
            f"{base.steps} steps of batch {base.batch_size}, lr {base.lr}, cosine schedule, mixed precision "
            f"{rows[0]['mixed_precision']}, on the default run's data unless the data column says otherwise (scenes "
            f"in the wide palette, {100 * base.photo_fraction:.0f} % of the pool patches of the training photos; "
            f"classic: the scenes of the shipped pipeline only). PSNR / SSIM / usage on {base.eval_samples} held-out "
            f"scenes of the training palette (video: clips); PSNR classic on {args.eval_images} held-out scenes of "
            f"the classic palette for every row. PSNR OOD: on {base.ood_samples} flat-shape scenes of a separate "
            f"renderer (elongated ellipses and rectangles, free colours, plain backgrounds) and {base.ood_samples} "
            f"patches of the held-out photos ({', '.join(PHOTO_SPLITS['heldout'])}), which no run trains on. Probe: "
            f"logistic regression of shape / colour / size per 3x3 cell from frozen quantized features, fitted on "
            f"{args.probe_train} training scenes and scored on the occupied cells of {args.probe_test} held-out "
            f"scenes. FD: Fréchet distance between the shipped CLIP's image embeddings of {args.eval_images} held-out "
            f"scenes and of their reconstructions. Speed: encode+decode of 128 images, fp32, ratio against vq2d. "
            f"'+clip-…' / '+grader-…': semantic regularization with the shipped CLIP image tower / the attribute "
            f"grader (supervised on the scene attributes) as teacher, aligned from the decoder's first stage (dec), "
            f"the encoder's last stage (enc) or the quantized latents (q); dual uses the teacher named likewise. "
            f"Machine: {torch.get_num_threads()} CPU "
            f"threads, CUDA: {torch.cuda.is_available()}.",
            "",
            *lines,
            "",
            *notes,
            "",
            f"Command: `python scripts/bench_tokenizer.py{' --reuse' if args.reuse else ''}"
            f"{' --retime' if args.retime else ''} --steps {args.steps} "
            f"--video-steps {args.video_steps} --rows {' '.join(args.rows)} "
            f"--cpu-threads {args.cpu_threads}`",
            "",
        ]
    )
    print(text)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    Path(args.table).with_suffix(".json").write_text(json.dumps(rows, indent=2))


def peer(args: argparse.Namespace) -> None:
    """Our default tokenizer against diffusers' VQModel of about the same size, same loop and steps."""
    base = TrainConfig(steps=args.steps, save_every=10**9, cpu_threads=args.cpu_threads, seed=args.seed)
    ours = create_tokenizer(base.preset)
    other = DiffusersVQTokenizer(num_vq_embeddings=ours.codebook_size)
    rows = []
    heldout = materialize(build_dataset("scenes", "heldout", base.resolution, 256, base.seed), 0, "held-out")
    for name, model in (("ours (" + base.preset + ")", ours), ("diffusers VQModel", other)):
        out = Path(args.output_dir) / ("ours" if model is ours else "diffusers")
        metrics = train_tokenizer(dataclasses.replace(base, output_dir=str(out)), model=model)
        trained = load_tokenizer(out / "model") if model is ours else model
        rows.append(dict(name=name, speed=items_per_second(trained, heldout), **metrics))
    ref = rows[1]
    header = (
        "| tokenizer | params (M) | PSNR (dB) | SSIM | codebook usage | perplexity | train wall (s) "
        "| enc+dec img/s | speed ratio |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['codebook_usage']:.3f} | {r['perplexity']:.0f} | {r['wall_seconds']:.0f} | "
            f"{r['speed']:.0f} | {r['speed'] / ref['speed']:.2f}x |"
        )
    text = "\n".join(
        [
            "# Tokenizer benchmark: ours vs diffusers VQModel",
            "",
            f"Synthetic scenes at 64x64, f=8, {base.steps} steps of batch {base.batch_size}, lr {base.lr}, mixed "
            f"precision {rows[0]['mixed_precision']}, both trained in the same run with the same loop; held-out "
            f"metrics on {base.eval_samples} images. Train wall-time ratio ours / diffusers: "
            f"{rows[0]['wall_seconds'] / ref['wall_seconds']:.2f}. Speed ratio is against diffusers' VQModel. "
            f"Machine: {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}.",
            "",
            *lines,
            "",
            f"Command: `python scripts/bench_tokenizer.py --peer --steps {args.steps} "
            f"--cpu-threads {args.cpu_threads}`",
            "",
        ]
    )
    print(text)
    Path(args.peer_table).write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", action="store_true", help="ours vs diffusers VQModel instead of the family table")
    p.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROWS),
        default=["vq2d", "vq2d-f4", "vq2d-classic", "rvq", "fsq", "lfq", "dual", "vq1d-32", "vq1d-32-prior", "video"],
    )
    p.add_argument("--steps", type=int, default=1000, help="training steps of every image tokenizer")
    p.add_argument("--video-steps", type=int, default=2400, help="training steps of the video tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs in --output-dir (and their measured rows, so one table can gather several runs)",
    )
    p.add_argument(
        "--retime", action="store_true", help="with --reuse: re-measure the speed of reused rows in this run"
    )
    p.add_argument("--eval-images", type=int, default=512)
    p.add_argument("--probe-train", type=int, default=2000)
    p.add_argument("--probe-test", type=int, default=1000)
    p.add_argument("--output-dir", default="runs/bench_tokenizer")
    p.add_argument("--table", default="benchmarks/tokenizer.md")
    p.add_argument("--peer-table", default="benchmarks/tokenizer_peer.md")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    args = p.parse_args()
    torch.set_num_threads(args.cpu_threads or torch.get_num_threads())
    peer(args) if args.peer else family(args)


if __name__ == "__main__":
    main()
