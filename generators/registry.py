"""Named generator presets (``create_generator("nt-small", codebook_size=1024, ...)``) and ``load_generator``."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin

from .next_token import NextTokenGenerator
from .next_x import NextXGenerator

GENERATOR_CLASSES: dict[str, type[ModelMixin]] = {cls.__name__: cls for cls in (NextTokenGenerator, NextXGenerator)}

PRESETS: dict[str, tuple[type[ModelMixin], dict]] = {
    # tests and smoke runs
    "nt-tiny": (NextTokenGenerator, dict(dim=64, depth=2, heads=4)),
    # the shipped text-to-image model (3.1 M parameters): 0.9 s per step of 32 images on two CPU cores
    "nt-small": (NextTokenGenerator, dict(dim=192, depth=6, heads=6)),
    # GPU-sized
    "nt-base": (NextTokenGenerator, dict(dim=768, depth=12, heads=12)),
    "nt-large": (NextTokenGenerator, dict(dim=1024, depth=24, heads=16)),
    # next-X (xAR): the same transformer sizes plus a flow-matching head; entity / k are overrides
    "nx-tiny": (NextXGenerator, dict(dim=64, depth=2, heads=4, head_width=64, head_depth=2)),
    "nx-small": (NextXGenerator, dict(dim=192, depth=6, heads=6, head_width=256, head_depth=3)),
    "nx-base": (NextXGenerator, dict(dim=768, depth=12, heads=12, head_width=1024, head_depth=3)),
}
DEFAULT_PRESET = "nt-small"


def preset_class(name: str) -> type[ModelMixin]:
    if name not in PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; available: {', '.join(list_generators())}")
    return PRESETS[name][0]


def list_generators() -> list[str]:
    return sorted(PRESETS)


def create_generator(name: str = DEFAULT_PRESET, **overrides) -> ModelMixin:
    """Builds a preset; keyword overrides (``codebook_size``, ``grid_size``, ``condition``, ...) replace its
    constructor arguments."""
    cls, kwargs = preset_class(name), PRESETS[name][1]
    return cls(**{**kwargs, **overrides})


def load_generator(path: str | Path) -> ModelMixin:
    """Loads any generator saved with ``save_pretrained``."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved generator folder: no config.json in it")
    name = json.loads(config_file.read_text()).get("_class_name")
    if name not in GENERATOR_CLASSES:
        raise ValueError(f"{path} holds a {name!r}; loadable generators: {', '.join(GENERATOR_CLASSES)}")
    return GENERATOR_CLASSES[name].from_pretrained(path)
