"""Command-line parsing of a tokenizer run, kept in the library so that tests and other drivers can call it:
flags and an optional JSON / YAML config file become a ``TrainConfig``, with a tokenizer family's run defaults
applied where neither says otherwise."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import yaml

from .data import PALETTES
from .quantizers import QUANTIZERS
from .registry import list_tokenizers, preset_kind, tokenizer_families
from .training import TrainConfig


def _file_keys(path: str) -> set[str]:
    """The TrainConfig fields a config file sets (they win over a kind's defaults)."""
    text = Path(path).read_text()
    return set(yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text))


def parse_train_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """``scripts/train_tokenizer.py``'s command line (``argv``, default ``sys.argv[1:]``) as a ``TrainConfig``."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--data", help="scenes | photos | videos | folder of images | .tar shards (path or glob)")
    p.add_argument(
        "--palette",
        choices=PALETTES,
        help=f"colours of the built-in scenes and clips (default {defaults.palette}; classic: the shipped pipeline's)",
    )
    for name in (
        "resolution",
        "frames",
        "eval_frames",
        "steps",
        "batch_size",
        "train_samples",
        "image_batch_size",
        "eval_samples",
        "ood_samples",
        "save_every",
        "seed",
        "warmup_steps",
        "gan_start",
        "num_workers",
        "cpu_threads",
        "max_nonfinite_skips",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    p.add_argument(
        "--semantic-teacher",
        help="frozen teacher for semantic regularization: clip (the project's CLIP), a CLIP folder, "
        "timm:<name>, timm:<name>@<checkpoint>, open_clip:<name>:<tag>",
    )
    p.add_argument(
        "--anchor-tokenizer",
        help="anchored video1d: a saved image tokenizer; the decoder learns from its reconstruction of each clip's "
        "first frame (what a text-to-video pipeline's first-frame tokens draw) instead of the real frame",
    )
    p.add_argument(
        "--semantic-layer",
        choices=("decoder", "encoder", "quantized"),
        help="tokenizer feature aligned to the teacher (default decoder)",
    )
    for name in ("lr", "gan_weight", "lpips_weight", "weight_decay", "semantic_weight", "photo_fraction"):
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
