"""Train an image tokenizer.

    accelerate launch scripts/train_tokenizer.py                       # default preset on synthetic scenes
    accelerate launch scripts/train_tokenizer.py --data photos --output-dir runs/photos
    accelerate launch scripts/train_tokenizer.py --config my_run.yaml --steps 500
    accelerate launch scripts/train_tokenizer.py --semantic-teacher clip --semantic-weight 0.5   # GigaTok-style
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_tokenizer.py   # 2 CPU procs

A run killed mid-way continues from its last checkpoint with the same command plus ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from tokenizers_vis import TrainConfig, list_tokenizers, train_tokenizer
from tokenizers_vis.quantizers import QUANTIZERS


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON or YAML file with TrainConfig fields; flags override it")
    p.add_argument("--preset", choices=list_tokenizers(), help=f"model preset (default {defaults.preset})")
    p.add_argument("--quantizer", choices=QUANTIZERS, help="override the preset's quantizer")
    p.add_argument("--codebook-size", type=int)
    p.add_argument("--data", help="scenes | photos | folder of images | .tar shards (path or glob)")
    for name in (
        "resolution",
        "steps",
        "batch_size",
        "train_samples",
        "eval_samples",
        "save_every",
        "seed",
        "warmup_steps",
        "gan_start",
        "num_workers",
        "cpu_threads",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    p.add_argument(
        "--semantic-teacher",
        help="frozen teacher for semantic regularization: clip (the project's CLIP), a CLIP folder, "
        "timm:<name>, timm:<name>@<checkpoint>, open_clip:<name>:<tag>",
    )
    p.add_argument("--semantic-layer", choices=("decoder", "encoder"), help="tokenizer feature aligned to it")
    for name in ("lr", "gan_weight", "lpips_weight", "weight_decay", "semantic_weight"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, dest=name)
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"))
    p.add_argument("--output-dir")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    args = vars(p.parse_args(argv))

    model_flags = ("quantizer", "codebook_size", "semantic_layer")
    overrides = {k: v for k, v in args.items() if v is not None and k != "config" and k not in model_flags}
    cfg = TrainConfig.from_file(args["config"], **overrides) if args["config"] else TrainConfig(**overrides)
    model_overrides = dict(cfg.model_overrides)
    if args["quantizer"]:
        model_overrides["quantizer_type"] = args["quantizer"]
    if args["codebook_size"]:
        model_overrides["codebook_size"] = args["codebook_size"]
    if args["semantic_layer"]:
        model_overrides["semantic_layer"] = args["semantic_layer"]
    return dataclasses.replace(cfg, model_overrides=model_overrides)


def main() -> None:
    metrics = train_tokenizer(parse_args())
    if metrics:
        keys = ("psnr", "ssim", "codebook_usage", "perplexity", "steps", "wall_seconds")
        print(json.dumps({k: metrics[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
