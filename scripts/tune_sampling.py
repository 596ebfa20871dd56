"""Pick a text-to-image (or text-to-video) pipeline's sampling defaults (guidance scale, temperature, top-k) by
grader accuracy, for a given number of re-ranking candidates and re-ranker.

    python scripts/tune_sampling.py --pipeline runs/assets/generator/pipeline --write
    python scripts/tune_sampling.py --pipeline runs/video/pipeline --top-ks 0 --write     # a text-to-video one

Prompts are captions of *training-split* scenes or clips (a seed no other script uses), so the choice is made on
prompts the benchmark never scores: ``scripts/bench_generation.py`` reports on held-out-split and novel-split
captions. Videos are scored with ``grade_videos`` (shape and colour on both end frames, and motion direction); their
CLIP re-ranking compares each candidate clip's last frame with its caption (``TextToVideoPipeline``); ``--rerank
round-trip`` keeps the candidate whose frames encode back closest to its tokens instead.
Prints a table; ``--report PATH`` saves it as JSON. ``--write`` stores the best setting as the pipeline's defaults in
``model_index.json`` and the table beside them as ``sampling_sweep.json``; without it the pipeline folder is left
untouched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch

from generators import RERANKERS, TextToImagePipeline, TextToVideoPipeline, is_video_pipeline
from generators.evaluate import IMAGE_METRICS, VIDEO_METRICS, sampling_sweep
from tokenizers_vis.data import MovingShapes, SyntheticScenes
from tokenizers_vis.evaluation import load_grader

TUNING_SEED = 101  # scene stream of the tuning prompts; the grader, CLIP and benchmark use other seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=Path("runs/assets/generator/pipeline"))
    p.add_argument("--grader", type=Path, default=Path("assets/grader"))
    p.add_argument("--prompts", type=int, default=64, help="training-split captions, one image each")
    p.add_argument("--guidance-scales", default="1.5,2,2.5,3")
    p.add_argument("--temperatures", default="1.0,0.7,0.5")
    p.add_argument("--top-ks", default="0,50")
    p.add_argument("--num-candidates", type=int, default=1, help="re-ranking, stored with the defaults")
    p.add_argument("--rerank", choices=RERANKERS, help="re-ranker, stored with the defaults (default: the pipeline's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="store the best setting as the pipeline's defaults")
    p.add_argument("--report", type=Path, help="also save the table and the best setting to this JSON file")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def write_defaults(pipeline: Path, defaults: dict) -> None:
    """Replaces the sampling defaults in model_index.json (write to a temporary file, then rename)."""
    index_file = pipeline / "model_index.json"
    index = json.loads(index_file.read_text())
    index["defaults"] = {**index.get("defaults", {}), **defaults}
    tmp = index_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, index_file)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    video = is_video_pipeline(args.pipeline)
    pipe = (TextToVideoPipeline if video else TextToImagePipeline).from_pretrained(args.pipeline)
    grader = load_grader(args.grader)
    source = (MovingShapes if video else SyntheticScenes)(args.prompts, 64, split="train", seed=TUNING_SEED)
    prompts = [source.describe(i)["caption"] for i in range(args.prompts)]
    top_ks = [int(k) for k in floats(args.top_ks)]
    grid = itertools.product(floats(args.guidance_scales), floats(args.temperatures), top_ks)
    settings = [{"guidance_scale": g, "temperature": t, "top_k": k} for g, t, k in grid]
    ranking = {"num_candidates": args.num_candidates, "rerank": args.rerank or pipe.defaults["rerank"]}
    results = sampling_sweep(pipe, grader, prompts, settings, **ranking)
    metrics = list(VIDEO_METRICS if video else IMAGE_METRICS)
    # best accuracy; ties go to the setting with the higher sum of the other scores
    best = max(results, key=lambda r: (r["accuracy"], sum(r[k] for k in metrics[1:])))
    print("| guidance | temperature | top-k | " + " | ".join(m.removesuffix("_accuracy") for m in metrics) + " | s |")
    print("|---" * (len(metrics) + 4) + "|")
    for r in results:
        cells = [f"{r['guidance_scale']:g}", f"{r['temperature']:g}", str(r["top_k"])]
        print("| " + " | ".join(cells + [f"{r[m]:.1%}" for m in metrics] + [str(r["seconds"])]) + " |")
    chosen = {k: best[k] for k in ("guidance_scale", "temperature", "top_k")} | ranking
    print(f"best on {args.prompts} training-split prompts: {json.dumps(chosen)} ({best['accuracy']:.1%})")
    report = {"prompts": args.prompts, "seed": TUNING_SEED, "results": results, "best": chosen}
    text = json.dumps(report, indent=2) + "\n"
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if args.write:
        write_defaults(args.pipeline, chosen)
        (args.pipeline / "sampling_sweep.json").write_text(text)
        print(f"stored as the defaults of {args.pipeline}")


if __name__ == "__main__":
    main()
