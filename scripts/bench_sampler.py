"""Benchmark our sampler against LlamaGen's on the same weights: tokens/s, ratio, and share of the memory bound.

    python scripts/bench_sampler.py --peer-llamagen /path/to/LlamaGen      # -> benchmarks/sampler.md

Builds LlamaGen's class-conditional GPT-B from its checkout (``autoregressive/models/gpt.py``) with seeded random
weights, converts them onto our ``gpt-b`` (:mod:`generators.llamagen`), and times LlamaGen's sampler
(``autoregressive/models/generate.py::generate`` on its GPT) and ours (``NextTokenGenerator.generate``): 256 tokens,
classifier-free guidance at scale 4, greedy, fp32 on the CPU, at each ``--batch``. Each row is the best of
``--repeats`` runs (all listed), the two samplers interleaved, after a two-token warm-up of LlamaGen's sampler; the
greedy tokens of both must be identical.

At batch 1 a decode step reads every weight once (the transformer's and the output head's; the token and class
tables one row each), so the memory bandwidth bounds tokens/s at bandwidth / weight bytes. The bandwidth is
measured here, as the best rate of a large tensor copy (bytes read plus bytes written per second). Other jobs on
the machine slow both samplers: the 1-minute load average before and after each row is recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from generators.llamagen import convert_llamagen_gpt
from tokenizers_vis.train_core import cpu_name

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 256
GUIDANCE = 4.0
LABELS = [207, 360, 387, 974, 88, 979, 417, 279]  # LlamaGen's sample_c2i.py classes


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by the best of ``repeats`` copies of a ``megabytes`` tensor."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def llamagen_gpt_b(checkout: Path, seed: int):
    """LlamaGen's GPT-B and its ``generate``, with weights ~ N(0, 1 / fan_in) and norm scales ~ 1 + N(0, 0.1)
    (its own init zeroes the output head, so every greedy choice would be a tie)."""
    sys.path.insert(0, str(checkout))
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models

    torch.manual_seed(seed)
    model = GPT_models["GPT-B"](vocab_size=16384, block_size=TOKENS, num_classes=1000, cls_token_num=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
            else:
                p.normal_(1, 0.1)
    return model, generate


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-llamagen", type=Path, required=True, help="a checkout of FoundationVision/LlamaGen")
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default: 1 and 8)")
    p.add_argument("--repeats", type=int, default=2, help="runs per sampler and batch; the best counts")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "sampler.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    warnings.filterwarnings("ignore", message=".*sdp_kernel.*", category=FutureWarning)  # LlamaGen's decode loop

    peer, peer_generate = llamagen_gpt_b(args.peer_llamagen.resolve(), args.seed)
    side = round(TOKENS**0.5)
    ours = convert_llamagen_gpt(peer.state_dict(), "gpt-b", (side, side))
    tables = ("token_embed.", "class_embed.")  # one row read per step
    step_bytes = sum(p.numel() * p.element_size() for n, p in ours.named_parameters() if not n.startswith(tables))
    bandwidth = copy_bandwidth()
    bound = bandwidth / step_bytes
    print(f"{machine()}; copy bandwidth {bandwidth / 1e9:.1f} GB/s, {step_bytes / 1e6:.0f} MB of weights per step")

    peer_generate(peer, torch.tensor(LABELS[:1]), 2, cfg_scale=GUIDANCE, sample_logits=False)  # warm-up
    rows = []
    for batch in args.batch or [1, 8]:
        labels = torch.tensor((LABELS * batch)[:batch])
        load_before = os.getloadavg()[0]
        runs = {
            "llamagen": lambda c=labels: peer_generate(peer, c, TOKENS, cfg_scale=GUIDANCE, sample_logits=False),
            "ours": lambda c=labels: ours.generate(c, guidance_scale=GUIDANCE, temperature=0).flatten(1),
        }
        speeds, outputs = {name: [] for name in runs}, {}
        for _ in range(args.repeats):  # interleaved, so a busy spell hits both samplers
            for name, run in runs.items():
                start = time.perf_counter()
                outputs[name] = run()
                speeds[name].append(batch * TOKENS / (time.perf_counter() - start))
        row = {
            "batch": batch,
            "llamagen": max(speeds["llamagen"]),
            "ours": max(speeds["ours"]),
            "runs": speeds,
            "identical": torch.equal(outputs["llamagen"].long(), outputs["ours"]),
            "load": (load_before, os.getloadavg()[0]),
        }
        row["ratio"] = row["ours"] / row["llamagen"]
        rows.append(row)
        print(
            f"batch {batch}: LlamaGen {row['llamagen']:.1f} tok/s, ours {row['ours']:.1f} tok/s "
            f"({row['ratio']:.2f}x), greedy identical: {row['identical']}, load {row['load'][0]:.2f} -> "
            f"{row['load'][1]:.2f}; runs {speeds}"
        )
    write_table(args, rows, bandwidth, step_bytes, bound)
    if not all(row["identical"] for row in rows):
        raise SystemExit("the two samplers' greedy tokens differ")
    return rows


def write_table(args, rows: list[dict], bandwidth: float, step_bytes: int, bound: float) -> None:
    """Writes the table to ``args.out``, keeping a hand-written ``## Notes`` section of the file if it has one."""
    command = "python scripts/bench_sampler.py --peer-llamagen LLAMAGEN_CHECKOUT"
    command += f" --threads {args.threads}" if args.threads else ""
    lines = [
        "# Sampler speed against LlamaGen",
        "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}; {machine()}).",
        "",
        f"GPT-B with random weights, LlamaGen's and converted onto our `gpt-b`; {TOKENS} tokens, guidance scale "
        f"{GUIDANCE:g} (conditional and null rows in one batch), greedy, fp32 on the CPU; best of {args.repeats} "
        "runs per sampler, interleaved. Tokens/s count generated image tokens (B x 256 per run).",
        "",
        "| batch | LlamaGen tok/s | ours tok/s | ours / LlamaGen | greedy tokens identical | share of memory bound "
        "(LlamaGen / ours) | every run, tok/s (LlamaGen; ours) | load avg (before -> after) |",
        "|---:|---:|---:|---:|:---:|---:|---|---|",
    ]
    for r in rows:
        share = f"{r['llamagen'] / bound:.0%} / {r['ours'] / bound:.0%}" if r["batch"] == 1 else "n/a"
        runs = "; ".join(", ".join(f"{v:.1f}" for v in r["runs"][name]) for name in ("llamagen", "ours"))
        lines.append(
            f"| {r['batch']} | {r['llamagen']:.1f} | {r['ours']:.1f} | {r['ratio']:.2f}x | "
            f"{'yes' if r['identical'] else 'NO'} | {share} | {runs} | {r['load'][0]:.2f} -> {r['load'][1]:.2f} |"
        )
    lines += [
        "",
        f"Memory bound at batch 1: {bandwidth / 1e9:.1f} GB/s (best large-tensor copy, read + write) / "
        f"{step_bytes / 1e6:.0f} MB of weights read per step = {bound:.1f} tok/s.",
    ]
    old = args.out.read_text() if args.out.is_file() else ""
    notes = old[old.index("\n## Notes") :] if "\n## Notes" in old else "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n" + notes)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
