"""Text-to-video tokens in two parts: the first frame's tokens from an image tokenizer, then the motion tokens of an
anchored 1D video tokenizer (``Video1DTokenizer(anchor_frame=True)``), which decodes the rest of the clip given that
first frame.

The anchored tokens code only what the first frame does not show (where things go), and they code it relative to
that frame, so a generator of them has to write the frame too. Joined in one index sequence (frame tokens in raster
order, then the K motion tokens; both parts share one index range), they are a clip's tokens for the existing
next-token generator, token cache and :class:`~generators.TextToVideoPipeline`, and a prefilled first frame is
image-to-video. Built from two trained tokenizers (``AnchoredVideoTokenizer.from_parts``, or
``scripts/assemble_video_tokenizer.py``) and loaded as one model by ``load_tokenizer``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .image_tokenizer import ImageTokenizer
from .registry import TokenizerFamily, load_tokenizer, register_assembled, tokenizer_class
from .video1d import Video1DTokenizer


def _build(config: dict) -> ModelMixin:
    """A tokenizer with random weights from a saved ``config.json``'s contents (``_class_name`` included)."""
    cls = tokenizer_class(config.get("_class_name"))
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def _config_of(model: ModelMixin) -> dict:
    """A tokenizer's constructor arguments and its class name, as ``_build`` reads them."""
    return {"_class_name": type(model).__name__} | {k: v for k, v in model.config.items() if not k.startswith("_")}


@register_assembled
class AnchoredVideoTokenizer(ModelMixin, ConfigMixin):
    """Videos (B, T, 3, S, S) in [-1, 1] -> indices (B, frame tokens + K) and back.

    ``image_tokenizer``: the config of a 2D image tokenizer (its (h, w) grid of frame 0 comes first);
    ``motion_tokenizer``: the config of an anchored :class:`~.video1d.Video1DTokenizer` of the same frame size
    and codebook size.
    """

    family = TokenizerFamily(kind="video-anchored", default_preset="", takes_videos=True, decodes_any_length=True)

    @register_to_config
    def __init__(self, image_tokenizer: dict, motion_tokenizer: dict) -> None:
        super().__init__()
        self.image = _build(image_tokenizer)
        self.motion = _build(motion_tokenizer)
        if not isinstance(self.image, ImageTokenizer) or self.image.config.quantizer_type == "rvq":
            raise ValueError(
                "the image tokenizer (first frame) must be an ImageTokenizer with one index per cell (not residual "
                f"VQ), got a {type(self.image).__name__}"
            )
        if not (isinstance(self.motion, Video1DTokenizer) and self.motion.config.anchor_frame):
            raise ValueError(
                "the motion tokenizer must be a Video1DTokenizer with anchor_frame=True, got "
                f"{type(self.motion).__name__}"
            )
        if self.image.codebook_size != self.motion.codebook_size:
            raise ValueError(
                "both parts must share one index range: the image tokenizer has "
                f"{self.image.codebook_size} codes, the motion tokenizer {self.motion.codebook_size}"
            )
        side = self.motion.config.image_size // self.image.config.downsample_factor
        self.frame_grid = (side, side)

    @classmethod
    def from_parts(cls, image: nn.Module, motion: nn.Module) -> AnchoredVideoTokenizer:
        """The composite of two trained tokenizers (their weights copied)."""
        model = cls(_config_of(image), _config_of(motion))
        model.image.load_state_dict(image.state_dict())
        model.motion.load_state_dict(motion.state_dict())
        return model

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """``config.json``, then each part as its own saved tokenizer (``image/``, ``motion/``; ``kwargs`` go to
        their ``save_pretrained``), so a shipped folder can link a part shipped elsewhere instead of a copy."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        self.image.save_pretrained(folder / "image", **kwargs)
        self.motion.save_pretrained(folder / "motion", **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AnchoredVideoTokenizer:
        """Loads what ``save_pretrained`` wrote."""
        folder = Path(folder)
        return cls.from_parts(load_tokenizer(folder / "image"), load_tokenizer(folder / "motion"))

    @property
    def codebook_size(self) -> int:
        return self.image.codebook_size

    @property
    def frame_tokens(self) -> int:
        """How many of a clip's tokens are its first frame's (the rest are its motion tokens)."""
        return self.frame_grid[0] * self.frame_grid[1]

    @property
    def num_tokens(self) -> int:
        return self.frame_tokens + self.motion.config.num_tokens

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [-1, 1] (or images (B, 3, S, S), one-frame clips) -> indices (B, frame tokens + K)."""
        if videos.ndim == 4:
            videos = videos[:, None]
        size = self.motion.config.image_size
        if videos.ndim != 5 or videos.shape[2:] != (3, size, size):
            raise ValueError(f"expected videos (B, T, 3, {size}, {size}), got {tuple(videos.shape)}")
        return torch.cat([self.encode_first_frame(videos[:, 0]), self.motion.encode(videos)], dim=1)

    def encode_first_frame(self, images: torch.Tensor) -> torch.Tensor:
        """First frames (B, 3, S, S) in [-1, 1] -> their tokens (B, frame tokens), a clip's first tokens."""
        size = self.motion.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected first frames (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return self.image.encode(images).flatten(1)

    def decode_first_frame(self, indices: torch.Tensor) -> torch.Tensor:
        """The first frame (B, 3, S, S) in [-1, 1] from a clip's indices (or from its frame tokens alone)."""
        grid = indices[:, : self.frame_tokens].reshape(len(indices), *self.frame_grid)
        return self.image.decode(grid).float().clamp(-1, 1)

    def decode(self, indices: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Indices (B, frame tokens + K) -> videos (B, frames, 3, S, S) in roughly [-1, 1] (``frames``: the motion
        tokenizer's training length unless told)."""
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(
                f"expected indices (B, {self.num_tokens}): {self.frame_tokens} frame tokens then "
                f"{self.num_tokens - self.frame_tokens} motion tokens, got {tuple(indices.shape)}"
            )
        anchor = self.decode_first_frame(indices)
        return self.motion.decode(indices[:, self.frame_tokens :], frames, anchor=anchor)

    def round_trip_distance(self, indices: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
        """The motion tokenizer's :meth:`~.video1d.Video1DTokenizer.round_trip_distance` of the clips ``videos``
        (B, T, 3, S, S) in [-1, 1] decoded from ``indices`` (B, frame tokens + K): the motion tokens only, since
        the first frame's tokens decode to that frame as they are."""
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(f"expected indices (B, {self.num_tokens}), got {tuple(indices.shape)}")
        return self.motion.round_trip_distance(indices[:, self.frame_tokens :], videos)
