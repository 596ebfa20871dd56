"""Memory and speed of pre-tokenization: stream a folder of N captioned images through a tokenizer into token shards
and record the resident memory (RSS) as the shards are written.

    python scripts/bench_pretokenize.py                          # 20,000 images at 64 px, shipped tokenizer
    python scripts/bench_pretokenize.py --images 2000 --checkpoints 500 2000

The images (stripes and gradients with captions in metadata.jsonl) are written to a temporary folder first. A
sampling thread reads VmRSS / VmHWM from /proc/self/status every 0.2 s; the table gives the peak RSS reached by the
time each checkpoint's images were stored. Flat memory means the peak at N images stays what it was at N / 4.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generators.data import generator_data
from generators.token_shards import pretokenize
from tokenizers_vis import load_tokenizer
from tokenizers_vis.train_core import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def write_images(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(count):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if i % 2:
            image, caption = np.where((np.sin(xx * rng.uniform(8, 30)) > 0)[..., None], a, b), f"stripes {a} {b}"
        else:
            image, caption = a * (1 - yy[..., None]) + b * yy[..., None], f"gradient {a} {b}"
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:06d}.png")
        rows.append(json.dumps({"file_name": f"{i:06d}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--tokenizer", default="assets/pipeline/tokenizer")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "pretokenize.md")
    args = p.parse_args()
    tokenizer = load_tokenizer(args.tokenizer).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, store_dir = Path(tmp) / "images", Path(tmp) / "store"
        data_dir.mkdir()
        print(f"writing {args.images} images to {data_dir}")
        write_images(data_dir, args.images, args.resolution)
        data = generator_data(str(data_dir), "all", "prompt", args.resolution)
        samples: list[tuple[int, float]] = []  # (images stored, RSS MiB)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                stored = sum(json.loads((c / "meta.json").read_text())["count"] for c in store_dir.glob("chunk-*"))
                samples.append((stored, rss_mib()))
                time.sleep(0.2)

        start_rss = rss_mib()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.time()
        store = pretokenize(data.dataset, tokenizer, store_dir, chunk_size=args.chunk_size, batch_size=64)
        seconds = time.time() - t0
        done.set()
        thread.join()
        samples.append((len(store), rss_mib()))
    rows = []
    for checkpoint in args.checkpoints:
        reached = [rss for stored, rss in samples if stored <= checkpoint]
        rows.append(f"| {checkpoint} | {max(reached):.0f} |")
    cpu = cpu_name()
    table = "\n".join(
        [
            f"Pre-tokenization of {args.images} captioned {args.resolution}-px PNGs with {args.tokenizer} "
            f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}): {seconds:.0f} s, "
            f"{args.images / seconds:.1f} images/s; RSS before encoding {start_rss:.0f} MiB.",
            "",
            "| images stored | peak RSS so far (MiB) |",
            "|---:|---:|",
            *rows,
        ]
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
