"""The attribute grader: does an image of a synthetic scene show exactly what its prompt asks for?

``AttributeGrader`` is a small CNN that reads the objects (presence, shape, colour and size in each cell of the 3x3
grid) off an image; ``grade`` compares them with the objects that
:func:`~tokenizers_vis.data.language.parse_prompt` reads from the prompt.

    grader = load_grader("assets/grader")   # made by `python scripts/train_grader.py`
    report = grade(grader, images, prompts)  # report["accuracy"]: share of images that match their prompt exactly
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from ..data.language import COLORS, SHAPES, SIZES, parse_prompt

ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")
# Where scripts/train_grader.py saves by default (the repository's assets folder).
DEFAULT_GRADER = Path(__file__).resolve().parents[2] / "assets" / "grader"
GRID = 3  # the scenes' 3x3 grid of cells; cell id = row * GRID + column, as in POSITIONS


def _conv(in_channels: int, out_channels: int, stride: int, groups: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    ]


class AttributeGrader(ModelMixin, ConfigMixin):
    """Reads the objects of a synthetic scene off its image: for each of the 9 cells, whether an object is there
    and its shape, colour and size.

    Images (B, 3, H, W) in [-1, 1]; other sizes than ``resolution`` are resized first. A plain conv stack
    (stride 8 overall) is pooled to a (2*3, 2*3) map, so every cell keeps a 2x2 layout of features for a head
    shared by all cells. GroupNorm rather than BatchNorm: no train/eval difference, so predictions never depend
    on the module's mode or on the batch. ``shapes``/``colors``/``sizes`` name the class indices of the heads,
    so a saved grader keeps its vocabulary.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        channels: tuple[int, ...] = (24, 48, 96, 160),
        hidden_dim: int = 256,
        norm_groups: int = 8,
        shapes: tuple[str, ...] = SHAPES,
        colors: tuple[str, ...] = COLORS,
        sizes: tuple[str, ...] = SIZES,
    ) -> None:
        super().__init__()
        layers = _conv(3, channels[0], 1, norm_groups)  # full resolution first: small shapes are ~10 px wide
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += _conv(c_in, c_out, 2, norm_groups) + _conv(c_out, c_out, 1, norm_groups)
        self.features = nn.Sequential(*layers)
        self.head_sizes = {"presence": 2, "shape": len(shapes), "color": len(colors), "size": len(sizes)}
        self.head = nn.Sequential(
            nn.Linear(channels[-1] * 4, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, sum(self.head_sizes.values())),
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> float32 logits per cell: ``presence`` (B, 9, 2), ``shape`` (B, 9, S),
        ``color`` (B, 9, C), ``size`` (B, 9, Z)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        x = F.adaptive_avg_pool2d(self.features(images), 2 * GRID)
        x = rearrange(x, "b c (gh kh) (gw kw) -> b (gh gw) (c kh kw)", gh=GRID, gw=GRID)
        logits = self.head(x).float().split(list(self.head_sizes.values()), dim=-1)
        return dict(zip(self.head_sizes, logits, strict=True))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of images (B, 3, H, W) against scene labels (B, M, 4) int64 rows (shape_id, colour_id,
        size_id, cell_id), -1 padded (see ``tokenizers_vis.data.scene_labels``). ``loss`` is presence + shape +
        colour + size, the attribute terms over occupied cells only; the other entries are its detached parts."""
        logits = self(images)
        b = labels.shape[0]
        valid = labels[..., 3] >= 0
        rows, cells = valid.nonzero(as_tuple=True)[0], labels[..., 3][valid]
        occupied = torch.zeros(b, GRID * GRID, dtype=torch.long, device=labels.device)
        occupied[rows, cells] = 1
        parts = {"presence": F.cross_entropy(logits["presence"].flatten(0, 1), occupied.flatten())}
        for k, name in enumerate(ATTRIBUTES):
            # Empty label sets give an empty selection; cross_entropy's mean over it would be NaN.
            picked = logits[name][rows, cells]
            parts[name] = F.cross_entropy(picked, labels[..., k][valid]) if len(picked) else picked.sum()
        total = sum(parts.values())
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[list[dict[str, Any]]]:
        """(B, 3, H, W) in [-1, 1] -> per image the objects seen, ``{"shape", "color", "size", "cell"}`` dicts
        sorted by cell (the format of :func:`parse_prompt`)."""
        logits = self(images.to(self.device, self.dtype))
        present = logits["presence"].argmax(-1).cpu()
        ids = {name: logits[name].argmax(-1).cpu() for name in ATTRIBUTES}
        vocab = {"shape": self.config.shapes, "color": self.config.colors, "size": self.config.sizes}
        return [
            [
                {**{name: vocab[name][int(ids[name][i, cell])] for name in ATTRIBUTES}, "cell": cell}
                for cell in present[i].nonzero().flatten().tolist()
            ]
            for i in range(len(present))
        ]


def grade(
    grader: AttributeGrader, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256
) -> dict[str, Any]:
    """Scores images (N, 3, H, W) in [-1, 1] against their prompts.

    Returns ``correct`` (N bools: the predicted objects are exactly the prompted ones, no object missing, wrong
    or extra), ``accuracy`` (their mean), per-attribute accuracies over the prompted objects (``shape``,
    ``color``, ``size``: the object predicted in the prompted cell has it; ``position``: some object is
    predicted in the prompted cell) and ``predictions`` (per image, as :meth:`AttributeGrader.predict`).
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    targets = [parse_prompt(p) for p in prompts]  # parse first: a bad prompt fails before any compute
    predictions = [
        objects
        for start in range(0, len(images), batch_size)
        for objects in grader.predict(images[start : start + batch_size])
    ]
    hits = {name: 0 for name in (*ATTRIBUTES, "position")}
    for target, predicted in zip(targets, predictions, strict=True):
        by_cell = {o["cell"]: o for o in predicted}
        for obj in target:
            seen = by_cell.get(obj["cell"])
            hits["position"] += seen is not None
            for name in ATTRIBUTES:
                hits[name] += seen is not None and seen[name] == obj[name]
    num_objects = max(sum(len(t) for t in targets), 1)
    correct = [p == t for p, t in zip(predictions, targets, strict=True)]
    return {
        "correct": correct,
        "accuracy": sum(correct) / max(len(correct), 1),
        **{name: count / num_objects for name, count in hits.items()},
        "predictions": predictions,
    }


def load_grader(path: str | Path = DEFAULT_GRADER) -> AttributeGrader:
    """Loads a grader saved by ``scripts/train_grader.py`` (a folder with config.json + safetensors)."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained grader at {path} (no config.json there); train one with `python scripts/train_grader.py` "
            f"(writes assets/grader, a few minutes on CPU) or pass the folder it was saved to"
        )
    return AttributeGrader.from_pretrained(path)
