"""Named generator presets (``create_generator("nt-small", codebook_size=1024, ...)``), generator families and
``load_generator``.

Each generator class declares its family and its presets in a ``family`` class attribute (a
:class:`~generators.family.GeneratorFamily`); this module collects them. A new generator: its class with a
``family``, an entry in ``GENERATOR_CLASSES`` and its tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin

from .family import GeneratorFamily
from .next_token import NextTokenGenerator
from .next_x import NextXGenerator

# in command-line order (`scripts/generate.py --generator`)
GENERATOR_CLASSES: dict[str, type[ModelMixin]] = {cls.__name__: cls for cls in (NextTokenGenerator, NextXGenerator)}


def _collect_presets() -> dict[str, tuple[type[ModelMixin], dict]]:
    presets: dict[str, tuple[type[ModelMixin], dict]] = {}
    for cls in GENERATOR_CLASSES.values():
        for name, kwargs in cls.family.presets.items():
            if name in presets:
                raise ValueError(
                    f"generator preset {name!r} is declared by {presets[name][0].__name__} and {cls.__name__}"
                )
            presets[name] = (cls, kwargs)
    return presets


PRESETS = _collect_presets()
DEFAULT_PRESET = "nt-small"


def generator_families() -> dict[str, GeneratorFamily]:
    """Every generator family by kind, in command-line order."""
    return {cls.family.kind: cls.family for cls in GENERATOR_CLASSES.values()}


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
