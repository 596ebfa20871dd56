"""Generate images from prompts with a saved text-to-image pipeline (default: the one shipped in assets/).

    python scripts/generate.py --prompt "a large red circle at the top left"
    python scripts/generate.py --prompt "a small blue star at the center" \\
        --prompt "a large white square at the right" --num-images 8 --guidance-scale 3 \\
        --top-k 100 --seed 1 --out outputs/demo

Prompts follow the scene-caption grammar the shipped model was trained on:
"a <small|large> <colour> <shape> at the <position>", objects joined with ", " and " and ".
Writes one PNG per image and grid.png (one row per prompt) under --out and prints their paths.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from generators import SAMPLING_KEYS, TextToImagePipeline, save_grid

DEFAULT_PIPELINE = Path(__file__).resolve().parent.parent / "assets" / "pipeline"


def slug(prompt: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit] or "prompt"


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    p.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE, help="saved pipeline folder")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt")
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--guidance-schedule", choices=("constant", "linear", "cosine"))
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--num-candidates", type=int, help="samples per image; the best CLIP match is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at every step (slow)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("outputs"))
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be >= 1")

    start = time.perf_counter()
    pipe = TextToImagePipeline.from_pretrained(args.pipeline, device=args.device)
    sampling = {k: getattr(args, k) for k in SAMPLING_KEYS if getattr(args, k) is not None}
    out = pipe(
        args.prompt,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        use_cache=not args.no_cache,
        progress=True,
        **sampling,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(out.images):
        prompt = args.prompt[i // args.num_images]
        path = args.out / f"{slug(prompt)}_{i % args.num_images}.png"
        image.save(path)
        paths.append(path)
    save_grid(out.images, args.out / "grid.png", per_row=args.num_images)
    settings = pipe.defaults | sampling
    print(f"{len(paths)} images in {time.perf_counter() - start:.1f} s ({settings})")
    for path in [*paths, args.out / "grid.png"]:
        print(path)
    return paths


if __name__ == "__main__":
    main()
