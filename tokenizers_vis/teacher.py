"""Frozen semantic teachers for GigaTok-style semantic regularization of tokenizers.

A teacher maps images (B, 3, H, W) in [-1, 1] to patch features (B, N, D) on a g x g grid (N = g * g). It resizes
and normalises inputs the way its model expects, stays in eval mode and never takes gradients. Sources:

- ``"clip"`` (default) or a project CLIP folder: the image tower of the project's small CLIP, offline;
- the project's attribute grader folder (``assets/grader``): a CNN supervised on the scenes' per-cell shape, colour
  and size, whose stride-8 feature map is a dense, label-informed teacher (the offline stand-in for the supervised
  ImageNet backbones used as teachers elsewhere). It also grades generated images, so do not judge a generator
  built on a grader-aligned tokenizer with it;
- ``"timm:<model name>"``: ``timm.create_model(name, pretrained=True)`` (needs the Hugging Face hub or a cache);
- ``"timm:<model name>@<checkpoint file>"``: the same architecture with local weights (safetensors or a
  ``weights_only`` torch checkpoint, via timm's own loader);
- ``"open_clip:<model name>:<pretrained tag>"``: an open_clip image tower.

:func:`~tokenizers_vis.losses.semantic_alignment_loss` (1 - cosine similarity) compares projected tokenizer features
with these features.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .clip import DEFAULT_CLIP, CLIPEncoder, load_clip
from .evaluation import AttributeGrader

TEACHER_FORMS = (
    "'clip' (the project's CLIP), a CLIP folder, the attribute grader's folder, 'timm:<name>', "
    "'timm:<name>@<checkpoint>', "
    "'open_clip:<name>:<pretrained tag>'"
)


class SemanticTeacher(nn.Module):
    """Frozen feature extractor: ``forward(images) -> (B, N, D)`` float32 patch features, N = ``grid ** 2``.

    Args:
        model: the network; ``features(model, x)`` must return (B, N, D) patch tokens or a (B, D, h, w) map.
        features: callable ``(model, preprocessed images) -> features`` as above.
        image_size: input side the model expects; images are resized to it (bicubic, antialiased).
        mean, std: per-channel normalisation of [0, 1] images.
        name: description for logs and error messages.
    """

    def __init__(
        self,
        model: nn.Module,
        features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        name: str,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self._features = features
        self.image_size = int(image_size)
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, self.image_size, self.image_size, device=self.mean.device))
        self.num_tokens, self.dim = probe.shape[1], probe.shape[2]
        self.grid = math.isqrt(self.num_tokens)
        if self.grid**2 != self.num_tokens:
            raise ValueError(f"teacher {name} gives {self.num_tokens} patch tokens, not a square grid")

    def train(self, mode: bool = True) -> SemanticTeacher:
        """Frozen: stays in eval mode (dropout, norm statistics) whatever ``mode`` is."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
        x = ((x + 1) * 0.5 - self.mean) / self.std
        feats = self._features(self.model, x).float()
        if feats.ndim == 4:  # CNN feature map
            feats = feats.flatten(2).transpose(1, 2)
        return feats


def _clip_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    visual.output_tokens = True  # open_clip's VisionTransformer then returns (pooled, patch tokens)
    out = visual(x)
    return out[1] if isinstance(out, tuple) else out


def _from_clip(clip: CLIPEncoder, name: str) -> SemanticTeacher:
    cfg = clip.preprocess_cfg
    size = clip.image_size if isinstance(clip.image_size, int) else clip.image_size[0]
    return SemanticTeacher(clip.model.visual, _clip_tokens, size, cfg["mean"], cfg["std"], name)


def _grader_features(grader: AttributeGrader, x: torch.Tensor) -> torch.Tensor:
    return grader.features(x)


def _from_grader(folder: str) -> SemanticTeacher:
    grader = AttributeGrader.from_pretrained(folder)
    size = grader.config.resolution
    return SemanticTeacher(grader, _grader_features, size, (0.5,) * 3, (0.5,) * 3, f"grader:{folder}")


def _timm_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    feats = model.forward_features(x)
    if feats.ndim == 3:  # ViT-like: drop class / register tokens
        feats = feats[:, getattr(model, "num_prefix_tokens", 0) :]
    return feats


def _from_timm(spec: str) -> SemanticTeacher:
    import timm  # imported here: only this teacher needs it

    name, _, checkpoint = spec.partition("@")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint file at {checkpoint!r} for timm teacher {name!r}")
    try:
        if checkpoint:  # timm's loader reads safetensors, or torch files with weights_only=True
            model = timm.create_model(name, pretrained=False, checkpoint_path=checkpoint)
        else:
            model = timm.create_model(name, pretrained=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise RuntimeError(
            f"could not load timm teacher {name!r} ({'checkpoint ' + checkpoint if checkpoint else 'pretrained'}):"
            " without Hugging Face hub access pretrained weights cannot be downloaded; pass a local checkpoint "
            f"('timm:{name}@/path/to/weights.safetensors') or use the project's CLIP ('clip'). Cause: {err}"
        ) from err
    cfg = timm.data.resolve_data_config({}, model=model)
    return SemanticTeacher(model, _timm_tokens, cfg["input_size"][-1], cfg["mean"], cfg["std"], f"timm:{spec}")


def load_teacher(spec: str | os.PathLike = "clip") -> SemanticTeacher:
    """A frozen teacher from a spec (see the module docstring for the accepted forms)."""
    text = os.fspath(spec)
    if text == "clip":
        if not Path(DEFAULT_CLIP).is_dir():
            raise FileNotFoundError(f"the project's CLIP is not at {DEFAULT_CLIP}; run `make assets` or pass a folder")
        return _from_clip(load_clip(DEFAULT_CLIP), f"clip:{DEFAULT_CLIP}")
    if Path(text).is_dir():
        config = Path(text) / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == AttributeGrader.__name__:
            return _from_grader(text)
        return _from_clip(load_clip(text), f"clip:{text}")
    if text.startswith("timm:"):
        return _from_timm(text.removeprefix("timm:"))
    if text.startswith("open_clip:"):
        name, _, tag = text.removeprefix("open_clip:").partition(":")
        return _from_clip(load_clip(name, tag or None), text)
    raise ValueError(f"unknown semantic teacher {text!r}; accepted: {TEACHER_FORMS}")
