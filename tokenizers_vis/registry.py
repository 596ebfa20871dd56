"""Tokenizer families and named presets (timm-style ``create_tokenizer("name", **overrides)``), and ``load_tokenizer``.

Each tokenizer class says what it is in a ``family`` class attribute (a :class:`TokenizerFamily`) and registers
itself and its presets in its own module, with ``@register_family`` and ``register_preset``; the training loop and
the scripts read those capabilities instead of testing classes. A new family: its module, an entry in
``FAMILY_MODULES`` and its tests.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from diffusers import ModelMixin

# Modules whose tokenizer classes register themselves on import, in the order the command line lists their
# families. They import this module, so it imports them on first use rather than at the top.
FAMILY_MODULES = ("image_tokenizer", "titok", "dual_tokenizer", "video_tokenizer", "video1d")
# Tokenizers assembled from trained ones (not a `--tokenizer` kind), loadable by `load_tokenizer`
ASSEMBLED_MODULES = ("anchored_video",)
DEFAULT_PRESET = "vq-f4"


@dataclass(frozen=True)
class TokenizerFamily:
    """What a tokenizer class is, for the training loop and the scripts."""

    kind: str  # its name on the command line (`--tokenizer`)
    default_preset: str  # the preset `--tokenizer <kind>` trains
    takes_videos: bool = False  # (B, T, 3, H, W) clips, an image being a one-frame clip; else (B, 3, H, W) images
    accepts_teacher: bool = False  # forward(x, semantic_target) aligns a feature to a frozen teacher's
    supports_gan: bool = False  # has the decoder.last_layer that the PatchGAN loss's adaptive weight reads
    # decode(indices, frames=T): its tokens do not say the clip's length, so reconstructions are told it
    decodes_any_length: bool = False
    run_defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of `--tokenizer <kind>` runs


# A model from outside the registry (the benchmark's diffusers peer): images only, no teacher, no GAN loss
_UNREGISTERED = TokenizerFamily(kind="", default_preset="")

PRESETS: dict[str, tuple[type[ModelMixin], dict]] = {}
_CLASSES: dict[str, type[ModelMixin]] = {}  # kind -> class
_ASSEMBLED: dict[str, type[ModelMixin]] = {}  # class name -> class

_Class = TypeVar("_Class", bound=type)


def register_family(cls: _Class) -> _Class:
    """Class decorator: makes ``cls.family`` a ``--tokenizer`` kind and ``cls`` loadable by ``load_tokenizer``."""
    kind = cls.family.kind
    if kind in _CLASSES:
        raise ValueError(f"tokenizer kind {kind!r} is already registered by {_CLASSES[kind].__name__}")
    _CLASSES[kind] = cls
    return cls


def register_preset(name: str, cls: type[ModelMixin], /, **kwargs: Any) -> None:
    """Makes ``create_tokenizer(name)`` build ``cls(**kwargs)``."""
    if name in PRESETS:
        raise ValueError(f"tokenizer preset {name!r} is already registered")
    PRESETS[name] = (cls, kwargs)


def register_assembled(cls: _Class) -> _Class:
    """Class decorator: makes ``cls`` (built from trained tokenizers, not trained itself) loadable by
    ``load_tokenizer``; its ``family`` still says what it takes and decodes."""
    _ASSEMBLED[cls.__name__] = cls
    return cls


def _import_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def _family_classes() -> list[type[ModelMixin]]:
    """Registered classes: the built-in families in FAMILY_MODULES order (not import order), then the others."""
    _import_families()
    rank = {f"{__package__}.{module}": i for i, module in enumerate(FAMILY_MODULES)}
    return sorted(_CLASSES.values(), key=lambda cls: rank.get(cls.__module__, len(rank)))


def tokenizer_families() -> dict[str, TokenizerFamily]:
    """Every registered family by kind, in command-line order."""
    return {cls.family.kind: cls.family for cls in _family_classes()}


def family_of(cls: type) -> TokenizerFamily:
    """The family of a tokenizer class or subclass; see ``_UNREGISTERED`` for any other model class."""
    return getattr(cls, "family", _UNREGISTERED)


def __getattr__(name: str) -> Any:
    # KINDS, the hand-written table the families replaced, now derived: kind -> (class, default preset)
    if name == "KINDS":
        return {cls.family.kind: (cls, cls.family.default_preset) for cls in _family_classes()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preset_class(name: str) -> type[ModelMixin]:
    """The tokenizer class a preset builds."""
    _import_families()
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; available: {', '.join(list_tokenizers())}")
    return PRESETS[name][0]


def preset_kind(name: str) -> str:
    """The ``--tokenizer`` kind a preset belongs to."""
    return preset_class(name).family.kind


def list_tokenizers() -> list[str]:
    _import_families()
    return sorted(PRESETS)


def create_tokenizer(name: str = DEFAULT_PRESET, **overrides) -> ModelMixin:
    """Builds a preset; keyword overrides replace the preset's constructor arguments."""
    cls = preset_class(name)
    return cls(**{**PRESETS[name][1], **overrides})


def tokenizer_class(name: str | None) -> type[ModelMixin]:
    """The tokenizer class a saved config's ``_class_name`` names."""
    for module in ASSEMBLED_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    classes = {cls.__name__: cls for cls in _family_classes()} | _ASSEMBLED
    if name not in classes:
        raise ValueError(f"not a loadable tokenizer: {name!r}; loadable tokenizers: {', '.join(classes)}")
    return classes[name]


def load_tokenizer(path: str | Path) -> ModelMixin:
    """Loads any tokenizer saved with ``save_pretrained`` (a folder with config.json + safetensors)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved tokenizer folder: no config.json in it")
    name = json.loads(config_file.read_text()).get("_class_name")
    try:
        cls = tokenizer_class(name)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return cls.from_pretrained(path)
