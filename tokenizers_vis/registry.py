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
# 1D tokenizer with a CNN stem and decoder around the latent-token transformers (GigaTok-style hybrid)
_HYBRID_1D = dict(num_tokens=32, codebook_size=1024, cnn_channels=(64, 128, 256), encoder_depth=3, decoder_depth=3)

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
    # DualToken: 512 semantic (deepest level, aligned to the teacher) + 512 pixel (shallowest level) codes, f=8
    "dual-f8": (DualTokenizer, dict(**_F8, pixel_codebook_size=512, semantic_codebook_size=512)),
    # TiTok-style 1D tokens for 64x64 images; K is independent of the resolution. -hybrid: convolutional stem and
    # decoder around the latent-token transformers (GigaTok's hybrid design)
    "vq1d-32": (OneDTokenizer, dict(num_tokens=32, codebook_size=1024)),
    "vq1d-64": (OneDTokenizer, dict(num_tokens=64, codebook_size=1024)),
    "vq1d-32-hybrid": (OneDTokenizer, _HYBRID_1D),
    "vq1d-32-prior": (OneDTokenizer, {**_HYBRID_1D, "raster_prior": True}),
    # causal 3D video tokenizer: 17 frames of 64x64 -> 5 x 8 x 8 indices
    "video-f8t4": (VideoTokenizer, dict(spatial_factor=8, temporal_factor=4)),
    # 4x finer grids (16 x 16 per latent frame): small shapes keep their corners, as with the image vq-f4
    "video-f4t4": (
        VideoTokenizer,
        dict(spatial_factor=4, temporal_factor=4, channels=(64, 128), decoder_res_blocks=2),
    ),
    # tiny versions of each family, for tests and smoke runs
    "dual-f8-tiny": (
        DualTokenizer,
        dict(channels=(16, 32, 32), norm_groups=8, embed_dim=8, pixel_codebook_size=32, semantic_codebook_size=32),
    ),
    "vq1d-tiny": (
        OneDTokenizer,
        dict(num_tokens=8, width=32, encoder_depth=1, decoder_depth=1, heads=2, head_channels=8, codebook_size=64),
    ),
    "video-tiny": (VideoTokenizer, dict(channels=(16, 32, 32), norm_groups=8, embed_dim=8, codebook_size=64)),
}
DEFAULT_PRESET = "vq-f8"

# `--tokenizer` kinds of scripts/train_tokenizer.py: the class each accepts and its default preset
KINDS: dict[str, tuple[type[ModelMixin], str]] = {
    "vq2d": (ImageTokenizer, DEFAULT_PRESET),
    "vq1d": (OneDTokenizer, "vq1d-32-prior"),
    "dual": (DualTokenizer, "dual-f8"),
    "video": (VideoTokenizer, "video-f8t4"),
}


def preset_class(name: str) -> type[ModelMixin]:
    """The tokenizer class a preset builds."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; available: {', '.join(list_tokenizers())}")
    return PRESETS[name][0]


def preset_kind(name: str) -> str:
    """The ``--tokenizer`` kind a preset belongs to."""
    return next(kind for kind, (cls, _) in KINDS.items() if preset_class(name) is cls)


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
