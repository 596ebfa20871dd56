"""Pick a text-to-image pipeline's sampling defaults (guidance scale, temperature, top-k) by grader accuracy, for a
given number of CLIP re-ranking candidates.

    python scripts/tune_sampling.py --pipeline runs/assets/generator/pipeline --write

Prompts are captions of *training-split* scenes (a seed no other script uses), so the choice is made on prompts
the benchmark never scores: ``scripts/bench_generation.py`` reports on held-out-split and novel-split captions.
Prints a table, writes ``<pipeline>/sampling_sweep.json`` and, with ``--write``, stores the best setting as the
pipeline's defaults in ``model_index.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from generators import TextToImagePipeline
from generators.grading import grade, load_grader
from tokenizers_vis.data.scenes import SyntheticScenes

TUNING_SEED = 101  # scene stream of the tuning prompts; the grader, CLIP and benchmark use other seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=Path("runs/assets/generator/pipeline"))
    p.add_argument("--grader", type=Path, default=Path("assets/grader"))
    p.add_argument("--prompts", type=int, default=64, help="training-split captions, one image each")
    p.add_argument("--guidance-scales", default="1.5,2,2.5,3")
    p.add_argument("--temperatures", default="1.0,0.7,0.5")
    p.add_argument("--top-ks", default="0,50")
    p.add_argument("--num-candidates", type=int, default=1, help="CLIP re-ranking, stored with the defaults")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="store the best setting as the pipeline's defaults")
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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pipe = TextToImagePipeline.from_pretrained(args.pipeline)
    grader = load_grader(args.grader)
    scenes = SyntheticScenes(args.prompts, 64, split="train", seed=TUNING_SEED)
    prompts = [scenes.describe(i)["caption"] for i in range(args.prompts)]
    grid = list(
        itertools.product(
            floats(args.guidance_scales), floats(args.temperatures), [int(k) for k in floats(args.top_ks)]
        )
    )
    results = []
    for scale, temperature, top_k in tqdm(grid, desc="sampling settings"):
        setting = {"guidance_scale": scale, "temperature": temperature, "top_k": top_k}
        start = time.perf_counter()
        pixels = pipe(prompts, seed=0, num_candidates=args.num_candidates, **setting).pixels
        scores = grade(grader, pixels * 2 - 1, prompts)
        results.append(
            {**setting, "seconds": round(time.perf_counter() - start, 1)}
            | {k: scores[k] for k in ("accuracy", "shape", "color", "size", "position")}
        )
    # best accuracy; ties go to the setting with the higher mean attribute accuracy
    best = max(results, key=lambda r: (r["accuracy"], r["shape"] + r["color"] + r["size"] + r["position"]))
    print("| guidance | temperature | top-k | accuracy | shape | colour | size | position | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['guidance_scale']:g} | {r['temperature']:g} | {r['top_k']} | {r['accuracy']:.1%} | {r['shape']:.1%} "
            f"| {r['color']:.1%} | {r['size']:.1%} | {r['position']:.1%} | {r['seconds']} |"
        )
    chosen = {k: best[k] for k in ("guidance_scale", "temperature", "top_k")} | {"num_candidates": args.num_candidates}
    print(f"best on {args.prompts} training-split prompts: {json.dumps(chosen)} ({best['accuracy']:.1%})")
    report = {"prompts": args.prompts, "seed": TUNING_SEED, "results": results, "best": chosen}
    (args.pipeline / "sampling_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.write:
        write_defaults(args.pipeline, chosen)
        print(f"stored as the defaults of {args.pipeline}")


if __name__ == "__main__":
    main()
