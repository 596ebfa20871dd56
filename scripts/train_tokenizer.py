"""Train an image tokenizer.

    accelerate launch scripts/train_tokenizer.py                       # default preset on synthetic scenes
    accelerate launch scripts/train_tokenizer.py --tokenizer vq1d      # 32 1D tokens (TiTok style)
    accelerate launch scripts/train_tokenizer.py --tokenizer dual      # semantic + pixel codebooks, CLIP teacher
    accelerate launch scripts/train_tokenizer.py --tokenizer video     # causal 3D, 17-frame moving-shape clips
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
from pathlib import Path

import yaml

from tokenizers_vis import TrainConfig, list_tokenizers, train_tokenizer
from tokenizers_vis.quantizers import QUANTIZERS
from tokenizers_vis.registry import preset_kind, tokenizer_families


def _file_keys(path: str) -> set[str]:
    """The TrainConfig fields a config file sets (they win over a kind's defaults)."""
    text = Path(path).read_text()
    return set(yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON or YAML file with TrainConfig fields; flags override it")
    families = tokenizer_families()  # read at parse time, so families registered after import are offered too
    p.add_argument(
        "--tokenizer",
        choices=list(families),
        help="tokenizer family; picks its default preset ("
        + ", ".join(f"{k}: {f.default_preset}" for k, f in families.items())
        + ") and run defaults "
        + json.dumps({k: f.run_defaults for k, f in families.items() if f.run_defaults}),
    )
    p.add_argument("--preset", choices=list_tokenizers(), help=f"model preset (default {defaults.preset})")
    p.add_argument("--quantizer", choices=QUANTIZERS, help="override the preset's quantizer")
    p.add_argument("--codebook-size", type=int)
    p.add_argument("--data", help="scenes | photos | folder of images | .tar shards (path or glob)")
    for name in (
        "resolution",
        "frames",
        "eval_frames",
        "steps",
        "batch_size",
        "train_samples",
        "image_batch_size",
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
    p.add_argument(
        "--semantic-layer",
        choices=("decoder", "encoder", "quantized"),
        help="tokenizer feature aligned to the teacher (default decoder)",
    )
    for name in ("lr", "gan_weight", "lpips_weight", "weight_decay", "semantic_weight"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, dest=name)
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"))
    p.add_argument("--output-dir")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    args = vars(p.parse_args(argv))

    model_flags = ("quantizer", "codebook_size", "semantic_layer")
    overrides = {
        k: v for k, v in args.items() if v is not None and k not in ("config", "tokenizer") and k not in model_flags
    }
    cfg = TrainConfig.from_file(args["config"], **overrides) if args["config"] else TrainConfig(**overrides)
    if args["tokenizer"]:
        kind = args["tokenizer"]
        explicit = set(overrides) | (_file_keys(args["config"]) if args["config"] else set())
        preset = cfg.preset if "preset" in explicit else families[kind].default_preset
        if preset_kind(preset) != kind:
            raise SystemExit(f"--tokenizer {kind} does not match preset {preset!r} (a {preset_kind(preset)} preset)")
        # a kind's run defaults apply unless the command line or config file says otherwise
        kind_defaults = {k: v for k, v in families[kind].run_defaults.items() if k not in explicit}
        cfg = dataclasses.replace(cfg, preset=preset, **kind_defaults)
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
