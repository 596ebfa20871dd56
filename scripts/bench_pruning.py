"""Benchmark visual-token pruning: accuracy kept on the toy VLM, prefill speed, selection overhead.

1. Accuracy: the shipped toy VLM (``assets/toy_vlm``) on a fixed held-out VQA set, for every method at
   50 / 75 / 90 % reduction, against the unpruned model; prefill time of a fixed batch against the unpruned model in
   the same run; time spent in the selection stages (timed in place) as % of the pruned prefill.
2. Speed: a randomly initialised larger LLaVA (576 visual tokens, an LM that dominates the prefill cost), batch 1.
3. Selection cost at real widths: the greedy stage-1 selections alone on random features of a 7B model's width
   (D = 4096) for 576 and 2880 visual tokens (LLaVA-1.5, LLaVA-NeXT), batch 8.

    python scripts/bench_pruning.py                  # writes benchmarks/pruning.md
    python scripts/bench_pruning.py --questions 200 --repeats 3
    python scripts/bench_pruning.py --questions 20 --repeats 1 --selection-dim 256 --out /tmp/pruning.md  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from pruning import PruningMethod, apply_pruning
from pruning.toy_vlm import (
    QUESTION_TYPES,
    SceneVocab,
    accuracy,
    answer_logits,
    encode,
    num_image_tokens,
    predict,
    question_set,
    toy_llava_config,
)
from tokenizers_vis.data import COLORS, POSITIONS, SHAPES, SyntheticScenes

REDUCTIONS = (0.5, 0.75, 0.9)
# Rows of the accuracy table: (label, method, options). Package defaults (feature-norm importance), plus IDPruner
# and the importance-only baseline with similarity to the mean feature, which ranks flat background highest.
RUNS: list[tuple[str, str, dict]] = [
    ("todre", "todre", {}),
    ("todre-maxmin", "todre-maxmin", {}),
    ("idpruner", "idpruner", {}),
    ("random", "random", {}),
    ("importance", "importance", {}),
    ("divprune", "divprune", {}),
    ("fastv", "fastv", {}),
    ("idpruner (importance=mean)", "idpruner", {"importance": "mean"}),
    ("importance (importance=mean)", "importance", {"importance": "mean"}),
]


class Stopwatch:
    """Accumulates the time spent in wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return out

        return timed


def prefill_time(model, batch: dict, repeats: int, handle=None) -> tuple[float, float]:
    """Median prefill seconds of ``batch`` and, with a pruning ``handle``, the median seconds spent in its selection
    stages (stage 1 before the LLM, stage 2 inside the decoder), measured in place by wrapping the handle's methods."""
    watch = Stopwatch()
    if handle is not None:
        # instance attributes shadow the methods, so only this handle is timed
        handle._select_visual = watch.wrap(handle._select_visual)
        handle._prune_at_layer = watch.wrap(handle._prune_at_layer)
    with torch.no_grad():
        answer_logits(model, batch)  # warm-up
        totals, selects = [], []
        for _ in range(repeats):
            watch.seconds = 0.0
            start = time.perf_counter()
            answer_logits(model, batch)
            totals.append(time.perf_counter() - start)
            selects.append(watch.seconds)
    if handle is not None:
        del handle._select_visual, handle._prune_at_layer
    return statistics.median(totals), statistics.median(selects)


def accuracy_run(args, rows: list[dict]) -> dict:
    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = SceneVocab(SHAPES, COLORS, POSITIONS)
    res = model.config.vision_config.image_size
    scenes = SyntheticScenes(args.questions, res, split="heldout", seed=0, max_objects=vocab.max_objects)
    images, items = question_set([scenes[i] for i in range(args.questions)], vocab, seed=0)
    questions = [it.question for it in items]
    timing_batch = encode(tokenizer, questions[: args.timing_batch], num_image_tokens(model))
    timing_batch["pixel_values"] = images[: args.timing_batch]

    base = accuracy(predict(model, tokenizer, images, questions), items)
    base_time, _ = prefill_time(model, timing_batch, args.repeats)
    rows.append(dict(method="none", reduction=0.0, acc=base, rel=1.0, time_ratio=1.0, overhead=0.0))
    for label, method, options in RUNS:
        for reduction in REDUCTIONS:
            handle = apply_pruning(model, method, keep_ratio=round(1 - reduction, 4), **options)
            acc = accuracy(predict(model, tokenizer, images, questions), items)
            seconds, select = prefill_time(model, timing_batch, args.repeats, handle)
            handle.remove()
            rows.append(
                dict(
                    method=label,
                    reduction=reduction,
                    acc=acc,
                    rel=acc["all"] / max(base["all"], 1e-9),
                    time_ratio=seconds / base_time,
                    overhead=select / seconds,
                )
            )
            r = rows[-1]
            print(f"{label:>28} {reduction:.0%}: acc {acc['all']:.3f} ({r['rel']:.1%}) time x{r['time_ratio']:.2f}")
    return dict(base=base, base_time=base_time, visual_tokens=num_image_tokens(model), model=model, tok=tokenizer)


def speed_run(args, tokenizer) -> list[dict]:
    """Prefill of one prompt on a random larger LLaVA with ``(image_size / 4)²`` visual tokens, at 90 % reduction."""
    torch.manual_seed(0)
    config = toy_llava_config(
        tokenizer, image_size=args.speed_image, patch_size=4, text_dim=args.speed_dim, text_layers=args.speed_layers
    )
    model = LlavaForConditionalGeneration(config).eval()
    batch = encode(tokenizer, ["what colour is the circle ?"], num_image_tokens(model))
    batch["pixel_values"] = torch.randn(
        1, 3, args.speed_image, args.speed_image, generator=torch.Generator().manual_seed(0)
    )
    base, _ = prefill_time(model, batch, args.repeats)
    out = [dict(method="none", seconds=base, speedup=1.0, overhead=0.0)]
    for label, method, options in RUNS:
        if options:
            continue  # the package defaults only
        handle = apply_pruning(model, method, keep_ratio=0.1, **options)
        seconds, select = prefill_time(model, batch, args.repeats, handle)
        handle.remove()
        out.append(dict(method=label, seconds=seconds, speedup=base / seconds, overhead=select / seconds))
        print(f"speed {label:>10}: {seconds * 1e3:.1f} ms (x{base / seconds:.2f})")
    return out


# the methods with a greedy selection before the LLM, timed alone at real widths
SELECTION_METHODS = ("todre", "todre-maxmin", "idpruner", "divprune")


def selection_run(args) -> list[dict]:
    """Stage-1 selection alone on random features ``(batch, N, dim)`` at ``--selection-keep``: median seconds."""
    out = []
    for n in args.selection_tokens:
        g = torch.Generator().manual_seed(0)
        features = torch.randn(args.selection_batch, n, args.selection_dim, generator=g)
        valid = torch.ones(args.selection_batch, n, dtype=torch.bool)
        for name in SELECTION_METHODS:
            method = PruningMethod.create(name, args.selection_keep)
            times = []
            for _ in range(max(args.repeats, 1)):
                start = time.perf_counter()
                method.select_before_llm(features, valid)
                times.append(time.perf_counter() - start)
            out.append(dict(method=name, tokens=n, seconds=statistics.median(times)))
            print(f"selection {name:>12} N={n}: {out[-1]['seconds'] * 1e3:.1f} ms")
    return out


def markdown(
    args,
    rows: list[dict],
    info: dict,
    speed: list[dict],
    selection: list[dict],
    checks: list[tuple[str, bool, str]],
) -> str:
    lines = [
        "# Visual-token pruning benchmark",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch CPU threads, "
        f"torch {torch.__version__}, fp32, SDPA attention.",
        "",
        f"## Toy VLM accuracy ({info['visual_tokens']} visual tokens, {args.questions} held-out questions)",
        "",
        f"Unpruned accuracy {info['base']['all']:.1%}; unpruned prefill of {args.timing_batch} prompts "
        f"{info['base_time'] * 1e3:.1f} ms (median of {args.repeats}). Time ratio = pruned / unpruned prefill; "
        "overhead = time inside the selection stages / pruned prefill.",
        "",
        "| method | reduction | acc | % of unpruned | " + " | ".join(QUESTION_TYPES) + " | prefill time ratio | "
        "selection overhead |",
        "|---|---|---|---|" + "---|" * len(QUESTION_TYPES) + "---|---|",
    ]
    for r in rows:
        per_type = " | ".join(f"{r['acc'][k]:.1%}" for k in QUESTION_TYPES)
        lines.append(
            f"| {r['method']} | {r['reduction']:.0%} | {r['acc']['all']:.1%} | {r['rel']:.1%} | {per_type} | "
            f"{r['time_ratio']:.2f} | {r['overhead']:.1%} |"
        )
    lines += [
        "",
        f"## Prefill speed, {(args.speed_image // 4) ** 2} visual tokens, 90 % reduction",
        "",
        f"Random-init LLaVA: {args.speed_image}×{args.speed_image} image, patch 4, CLIP 64-dim × 2 layers, Llama "
        f"{args.speed_dim}-dim × {args.speed_layers} layers; batch 1, median of {args.repeats} prefills.",
        "",
        "| method | prefill ms | speed-up | selection overhead |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['method']} | {s['seconds'] * 1e3:.1f} | {s['speedup']:.2f}× | {s['overhead']:.1%} |" for s in speed
    ]
    speed_base = speed[0]["seconds"]
    lines += [
        "",
        f"## Selection alone at real width (D = {args.selection_dim}, batch {args.selection_batch}, keep "
        f"{args.selection_keep:.0%})",
        "",
        f"Stage-1 selection on random fp32 features, median of {max(args.repeats, 1)}, next to this run's prefills: "
        f"the toy VLM's unpruned prefill of {args.timing_batch} prompts ({info['base_time'] * 1e3:.1f} ms) and the "
        f"speed run's ({speed_base * 1e3:.1f} ms). At this width greedy selection computes each sample's (N, N) "
        "similarity matrix once (one matmul), then gathers one row per pick.",
        "",
        "| method | visual tokens | selection ms | ms per sample |",
        "|---|---|---|---|",
    ]
    for r in selection:
        ms = r["seconds"] * 1e3
        lines.append(f"| {r['method']} | {r['tokens']} | {ms:.1f} | {ms / args.selection_batch:.1f} |")
    lines += ["", "## Acceptance", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in checks]
    lines += ["", "Method options: " + ", ".join(f"{label}: `{json.dumps(o)}`" for label, _, o in RUNS if o)]
    return "\n".join(lines) + "\n"


def acceptance(rows: list[dict], speed: list[dict]) -> list[tuple[str, bool, str]]:
    at = {(r["method"], r["reduction"]): r for r in rows}
    checks = []
    for m in ("todre", "idpruner"):
        rel = at[(m, 0.75)]["rel"]
        checks.append((f"{m} keeps >= 95 % of unpruned accuracy at 75 % reduction", rel >= 0.95, f"{rel:.1%}"))
        acc = at[(m, 0.9)]["acc"]["all"]
        rivals = {b: at[(b, 0.9)]["acc"]["all"] for b in ("random", "importance")}
        detail = f"{acc:.1%} vs " + ", ".join(f"{b} {a:.1%}" for b, a in rivals.items())
        checks.append((f"{m} beats random and importance at 90 % reduction", acc > max(rivals.values()), detail))
    for m in ("todre", "idpruner"):
        s = next(s for s in speed if s["method"] == m)
        checks.append((f"{m} prefill >= 2x faster at 90 % reduction", s["speedup"] >= 2.0, f"{s['speedup']:.2f}x"))
    for m in ("todre", "idpruner", "divprune"):
        share = next(s for s in speed if s["method"] == m)["overhead"]
        checks.append((f"{m} selection <= 5 % of the pruned prefill (speed run)", share <= 0.05, f"{share:.1%}"))
    return checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/toy_vlm"))
    p.add_argument("--questions", type=int, default=400)
    p.add_argument("--timing-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--speed-image", type=int, default=96, help="image side of the speed run (patch 4)")
    p.add_argument("--speed-dim", type=int, default=384)
    p.add_argument("--speed-layers", type=int, default=8)
    p.add_argument("--selection-dim", type=int, default=4096, help="feature width of the selection timing")
    p.add_argument("--selection-tokens", type=int, nargs="+", default=[576, 2880])
    p.add_argument("--selection-batch", type=int, default=8)
    p.add_argument("--selection-keep", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/pruning.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.command = "python scripts/bench_pruning.py" + (f" --threads {args.threads}" if args.threads else "")

    rows: list[dict] = []
    info = accuracy_run(args, rows)
    speed = speed_run(args, info["tok"])
    selection = selection_run(args)
    checks = acceptance(rows, speed)
    text = markdown(args, rows, info, speed, selection, checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
