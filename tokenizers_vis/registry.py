"""Named tokenizer presets (timm-style ``create_tokenizer("name", **overrides)``) and ``load_tokenizer``."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin

from .dual_tokenizer import DualTokenizer
from .image_tokenizer import ImageTokenizer
from .titok import OneDTokenizer
from .video_tokenizer import VideoTokenizer

# Classes that `load_tokenizer` can rebuild from a saved folder, keyed by config.json's `_class_name`.
TOKENIZER_CLASSES: dict[str, type[ModelMixin]] = {
    cls.__name__: cls for cls in (ImageTokenizer, DualTokenizer, OneDTokenizer, VideoTokenizer)
}

_F8 = dict(downsample_factor=8, channels=(64, 128, 256))
PRESETS: dict[str, tuple[type[ModelMixin], dict]] = {
    # default: cosine VQ, 1024 codes of dim 32, f=8 -> 64 tokens for a 64x64 image
    "vq-f8": (ImageTokenizer, dict(**_F8, quantizer_type="vq", codebook_size=1024)),
    # f=4: 256 tokens for a 64x64 image; small shapes keep their corners (at f=8 they decode as blobs), which the
    # text-to-image generator needs
    "vq-f4": (ImageTokenizer, dict(downsample_factor=4, channels=(64, 128), quantizer_type="vq", codebook_size=1024)),
    "vq-f16": (ImageTokenizer, dict(downsample_factor=16, channels=(64, 128, 256, 256), codebook_size=1024)),
    "rvq-f8": (ImageTokenizer, dict(**_F8, quantizer_type="rvq", codebook_size=1024)),
    "fsq-f8": (
        ImageTokenizer,
        dict(**_F8, quantizer_type="fsq", embed_dim=8, quantizer_kwargs={"levels": [8, 5, 5, 5]}),
    ),
    "lfq-f8": (ImageTokenizer, dict(**_F8, quantizer_type="lfq", embed_dim=16, codebook_size=1024)),
    # a few hundred thousand parameters: for tests and smoke runs
    "vq-f8-tiny": (
        ImageTokenizer,
        dict(
            downsample_factor=8,
            channels=(16, 32, 32),
            norm_groups=8,
            codebook_size=64,
            embed_dim=8,
            encoder_res_blocks=1,
            decoder_res_blocks=1,
        ),
    ),
}
DEFAULT_PRESET = "vq-f8"


def list_tokenizers() -> list[str]:
    return sorted(PRESETS)


def create_tokenizer(name: str = DEFAULT_PRESET, **overrides) -> ModelMixin:
    """Builds a preset; keyword overrides replace the preset's constructor arguments."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; available: {', '.join(list_tokenizers())}")
    cls, kwargs = PRESETS[name]
    return cls(**{**kwargs, **overrides})


def load_tokenizer(path: str | Path) -> ModelMixin:
    """Loads any tokenizer saved with ``save_pretrained`` (a folder with config.json + safetensors)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved tokenizer folder: no config.json in it")
    name = json.loads(config_file.read_text()).get("_class_name")
    if name not in TOKENIZER_CLASSES:
        raise ValueError(f"{path} holds a {name!r}; loadable tokenizers: {', '.join(TOKENIZER_CLASSES)}")
    return TOKENIZER_CLASSES[name].from_pretrained(path)
