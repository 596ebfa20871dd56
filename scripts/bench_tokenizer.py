"""Benchmark: our default tokenizer against diffusers' VQModel of about the same size.

Both are trained in this run on the same data, for the same steps, with the same optimiser, schedule
and precision, then compared on held-out PSNR, SSIM, codebook usage and encode+decode speed.

    python scripts/bench_tokenizer.py                 # writes benchmarks/tokenizer.md
    python scripts/bench_tokenizer.py --steps 300 --data photos
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from tokenizers_vis import TrainConfig, create_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.baselines import DiffusersVQTokenizer
from tokenizers_vis.data import build_dataset
from tokenizers_vis.training import materialize


@torch.no_grad()
def images_per_second(model, images: torch.Tensor, repeats: int = 3) -> float:
    """Encode + decode throughput (fp32, no grad), best of ``repeats``."""
    model.eval()
    model.decode(model.encode(images[:8]))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.decode(model.encode(images))
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--data", default="scenes")
    p.add_argument("--output-dir", default="runs/bench_tokenizer")
    p.add_argument("--table", default="benchmarks/tokenizer.md")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    args = p.parse_args()

    base = TrainConfig(steps=args.steps, data=args.data, save_every=10**9, cpu_threads=args.cpu_threads)
    ours = create_tokenizer(base.preset)
    peer = DiffusersVQTokenizer(num_vq_embeddings=ours.codebook_size)
    rows = []
    heldout = materialize(build_dataset(args.data, "heldout", base.resolution, 256, base.seed), 0, "held-out")
    for name, model in (("ours (" + base.preset + ")", ours), ("diffusers VQModel", peer)):
        out = Path(args.output_dir) / ("ours" if model is ours else "diffusers")
        metrics = train_tokenizer(dataclasses.replace(base, output_dir=str(out)), model=model)
        trained = load_tokenizer(out / "model") if model is ours else model
        rows.append(dict(name=name, speed=images_per_second(trained, heldout), **metrics))

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
    ratio = rows[0]["wall_seconds"] / ref["wall_seconds"]
    text = "\n".join(
        [
            "# Tokenizer benchmark",
            "",
            f"Data: `{args.data}` at {base.resolution}x{base.resolution}, f=8, {base.steps} steps of batch "
            f"{base.batch_size}, lr {base.lr}, mixed precision {rows[0]['mixed_precision']}, both models trained "
            f"in the same run with the same loop; held-out metrics on {base.eval_samples} images. "
            f"Train wall-time ratio ours / diffusers: {ratio:.2f}. Speed ratio is against diffusers' VQModel. "
            f"Machine: {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}.",
            "",
            *lines,
            "",
            f"Command: `python scripts/bench_tokenizer.py --steps {args.steps} --data {args.data} "
            f"--cpu-threads {args.cpu_threads}`",
            "",
        ]
    )
    print(text)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)


if __name__ == "__main__":
    main()
