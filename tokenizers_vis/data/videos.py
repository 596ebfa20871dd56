"""Captioned moving-shape videos: the synthetic scenes' shapes, colours and backgrounds, each object gliding in a
straight line ("a large red circle moving to the left").

Like :mod:`.scenes`, a clip is a pure function of ``(seed, split, index)``. Frames are rendered with
:func:`~.scenes.render_scene`, so a single frame looks exactly like a still scene, and the first frame of a clip is a
valid image for an image tokenizer. The words and captions are in :mod:`.language`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .language import COLORS, DIRECTIONS, HELDOUT_PAIRS, SHAPES, SIZE_FRACTION, SIZES, make_video_caption
from .scenes import PALETTES, SPLITS, SeededDataset, sample_scene, uint8_to_tensor, widen_palette
from .scenes import render_scene as _render_frame

_HELDOUT_LIST = sorted(HELDOUT_PAIRS)
_MARGIN = 0.02  # of the image side, kept free between a shape and the border


def sample_video(
    rng: np.random.Generator,
    split: str = "train",
    max_objects: int = 1,
    travel: float = 0.4,
    textured_prob: float = 0.5,
    palette: str = "classic",
) -> dict[str, Any]:
    """Clip description ``{"objects": [...], "background": {...}}``. Each object has ``shape``, ``color``,
    ``size``, ``direction`` (a :data:`DIRECTIONS` key), ``start`` and ``end`` centres (x, y in fractions of the
    image side). It travels ``travel`` of the image side along each axis it moves on, and stays fully inside the
    frame. Shape/colour pairs follow the scenes' split rules (no HELDOUT_PAIRS in "train"/"heldout"; one
    forced in "novel"). ``palette`` as in :func:`~.scenes.sample_scene`."""
    still = sample_scene(rng, split, max_objects, textured_prob)  # shapes, colours, sizes and background
    objects = []
    forced = int(rng.integers(len(still["objects"]))) if split == "novel" else -1
    for k, obj in enumerate(still["objects"]):
        shape, color = obj["shape"], obj["color"]
        if k == forced:
            shape, color = _HELDOUT_LIST[int(rng.integers(len(_HELDOUT_LIST)))]
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        dx, dy = DIRECTIONS[direction]
        radius = SIZE_FRACTION[obj["size"]] / 6.0
        low, high = radius + _MARGIN, 1.0 - radius - _MARGIN

        def start_for(step: float, low: float = low, high: float = high) -> float:
            # the start leaves room for the whole travel in the direction of motion
            lo, hi = (low - step * travel, high) if step < 0 else (low, high - step * travel)
            return float(rng.uniform(lo, hi))

        start = (start_for(dx), start_for(dy))
        end = (start[0] + dx * travel, start[1] + dy * travel)
        objects.append(
            {"shape": shape, "color": color, "size": obj["size"], "angle": obj["angle"]}
            | {"direction": direction, "start": start, "end": end}
        )
    if palette == "wide":
        widen_palette(rng, objects, still["background"])
    return {"objects": objects, "background": still["background"]}


def render_video(
    objects: Sequence[Mapping[str, Any]], background: Mapping[str, Any] | None, frames: int, resolution: int = 64
) -> np.ndarray:
    """(T, H, W, 3) uint8: each object's centre moves linearly from ``start`` to ``end`` over the ``frames``."""
    out = np.empty((frames, resolution, resolution, 3), dtype=np.uint8)
    for t in range(frames):
        a = t / max(frames - 1, 1)
        placed = []
        for o in objects:
            x = (1 - a) * o["start"][0] + a * o["end"][0]
            y = (1 - a) * o["start"][1] + a * o["end"][1]
            # render_scene places a shape at a cell centre plus an offset; use the centre cell (0.5, 0.5)
            placed.append({**o, "cell": 4, "offset": (x - 0.5, y - 0.5)})
        out[t] = _render_frame(placed, background, resolution)
    return out


def video_labels(objects: Sequence[Mapping[str, Any]], max_objects: int) -> torch.Tensor:
    """(max_objects, 4) int64 rows (shape_id, colour_id, size_id, direction_id) in caption order, -1 padded."""
    labels = torch.full((max_objects, 4), -1, dtype=torch.long)
    for k, o in enumerate(objects):
        labels[k] = torch.tensor(
            [
                SHAPES.index(o["shape"]),
                COLORS.index(o["color"]),
                SIZES.index(o["size"]),
                list(DIRECTIONS).index(o["direction"]),
            ]
        )
    return labels


class MovingShapes(SeededDataset):
    """Deterministic captioned clips of ``frames`` frames (default 17 = 1 + 4 * 4, what a temporal-compression-4
    causal tokenizer takes).

    Item ``i`` is a dict: ``video`` (T, 3, R, R) float32 in [-1, 1], ``caption`` str, ``labels``
    (max_objects, 4) int64 (see :func:`video_labels`) and ``num_objects`` int. Splits as in
    :class:`~.scenes.SyntheticScenes`.
    """

    def __init__(
        self,
        num_samples: int = 2000,
        resolution: int = 64,
        frames: int = 17,
        split: str = "train",
        seed: int = 0,
        max_objects: int = 1,
        travel: float = 0.4,
        textured_prob: float = 0.5,
        palette: str = "classic",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if frames < 1 or resolution < 1 or num_samples < 0 or seed < 0:
            raise ValueError("frames and resolution must be >= 1, num_samples and seed >= 0")
        if not 1 <= max_objects <= 3:
            raise ValueError(f"max_objects must be in [1, 3], got {max_objects}")
        if not 0.0 <= travel <= 0.5:
            raise ValueError(f"travel must be in [0, 0.5] of the image side, got {travel}")
        if palette not in PALETTES:
            raise ValueError(f"unknown palette {palette!r}; expected one of {PALETTES}")
        self.num_samples, self.resolution, self.frames = num_samples, resolution, frames
        self.split, self.seed, self.max_objects = split, seed, max_objects
        self.travel, self.textured_prob, self.palette = travel, textured_prob, palette

    def describe(self, index: int) -> dict[str, Any]:
        """Clip description ``{"objects", "background", "caption"}``; pass the first two to :func:`render_video`."""
        # A stream of its own (the trailing 1) keeps clips independent of the still scenes with the same seed.
        rng = self.rng_for(index, SPLITS.index(self.split), index, 1)
        clip = sample_video(rng, self.split, self.max_objects, self.travel, self.textured_prob, self.palette)
        clip["caption"] = make_video_caption(clip["objects"])
        return clip

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.describe(index)
        frames = render_video(clip["objects"], clip["background"], self.frames, self.resolution)
        return {
            "video": torch.stack([uint8_to_tensor(f) for f in frames]),
            "caption": clip["caption"],
            "labels": video_labels(clip["objects"], self.max_objects),
            "num_objects": len(clip["objects"]),
        }
