"""Captioned synthetic scenes: coloured shapes on a 3x3 grid over plain or softly textured backgrounds.

A sample is a pure function of ``(seed, split, index)``: nothing is stored, any resolution can be rendered
from the same scene description, and every attribute of every object is known exactly, which makes the
scenes usable for grading generated images against their captions. The words and captions are in
:mod:`.language`; this module renders.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .language import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZE_FRACTION, SIZES, make_caption

SPLITS: tuple[str, ...] = ("train", "heldout", "novel")
# "classic": the world of the shipped pipeline, grader, CLIP and generator benchmarks (dark muted backgrounds, eight
# fixed object colours). "wide": the same scenes (layout, shapes, colour names, captions, labels) over backgrounds from
# the whole colour range and with each object's colour varied in shade, for tokenizers that must also reconstruct
# light, saturated or muted regions.
PALETTES: tuple[str, ...] = ("classic", "wide")
TEXTURES: tuple[str, ...] = ("plain", "gradient", "stripes", "checker")

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (250, 225, 20),
    "purple": (170, 50, 230),
    "orange": (255, 140, 0),
    "cyan": (0, 215, 225),
    "white": (248, 248, 248),
}
# Muted mid-dark tones: far in saturation/brightness from every object colour, and dark enough that the
# +-0.15 texture modulation never reaches object-like brightness.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "charcoal": (65, 65, 68),
    "slate": (70, 78, 95),
    "olive": (85, 90, 60),
    "brown": (95, 72, 55),
    "teal": (50, 85, 85),
    "mauve": (90, 65, 85),
}

_HELDOUT_LIST = sorted(HELDOUT_PAIRS)  # fixed order so sampling from it is deterministic

_MAX_JITTER = 0.03  # of the image side
_MAX_ROTATION = 10.0  # degrees; small enough that no shape turns into another (square vs diamond)
_SUPERSAMPLE = 4


def _regular(n: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    # Inner radius a bit fatter than a regular pentagram so small stars survive downsampling.
    angles = np.deg2rad(-90.0 + 180.0 / points * np.arange(2 * points))
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Unit polygons (image coordinates, y down) inscribed in the unit circle; the circle is drawn as an ellipse.
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 45.0),
    "triangle": _regular(3, -90.0),
    "diamond": np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]]),
    "star": _star(),
    "hexagon": _regular(6, 0.0),
}


def uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) float32 tensor in [-1, 1]."""
    # Done in numpy: torch's intra-op thread pool costs far more than this tiny op on a busy small CPU.
    array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    array *= 1.0 / 127.5
    array -= 1.0
    return torch.from_numpy(array)


def _background(background: Mapping[str, Any], resolution: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]. Textures are smooth, so they are evaluated at the target resolution."""
    rgb = background["rgb"] if "rgb" in background else BACKGROUND_RGB[background["color"]]
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    texture = background.get("texture", "plain")
    if texture == "plain":
        return np.broadcast_to(base, (resolution, resolution, 3))
    coords = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5
    x, y = coords[None, :], coords[:, None]
    theta = math.radians(background.get("angle", 0.0))
    phase = background.get("phase", 0.0)
    # Periods are fractions of the image side, so the texture scales with the resolution.
    period = background.get("period", 0.25)
    if texture == "gradient":
        cos, sin = math.cos(theta), math.sin(theta)
        pattern = (x * cos + y * sin) / (0.5 * (abs(cos) + abs(sin)))
    elif texture == "stripes":
        pattern = np.sin(2 * math.pi / period * (x * math.cos(theta) + y * math.sin(theta)) + phase)
    elif texture == "checker":
        sharpness = 3.0  # soft edges: a tanh-squashed product of two sinusoids
        wave = np.sin(2 * math.pi / period * x + phase) * np.sin(2 * math.pi / period * y + phase)
        pattern = np.tanh(sharpness * wave) / math.tanh(sharpness)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    amplitude = background.get("amplitude", 0.15)
    return np.clip(base + amplitude * pattern[..., None], 0.0, 1.0)


def render_scene(
    objects: Sequence[Mapping[str, Any]],
    background: Mapping[str, Any] | None = None,
    resolution: int = 64,
) -> np.ndarray:
    """Render a scene description to an (H, W, 3) uint8 array with H = W = ``resolution``.

    ``objects``: dicts with ``shape``, ``color``, ``size`` (names from SHAPES/COLORS/SIZES) and ``cell``
    (index into POSITIONS); optional ``offset`` (dx, dy) in fractions of the image side, ``angle`` in
    degrees and ``rgb`` (8-bit, replaces the colour name's COLOR_RGB). ``background``: dict with ``color`` (a
    BACKGROUND_RGB name) or ``rgb``, ``texture`` (TEXTURES) and its parameters ``angle``, ``period``, ``phase``,
    ``amplitude``; None gives a plain charcoal background.
    """
    if background is None:
        background = {"color": "charcoal", "texture": "plain"}
    size = resolution * _SUPERSAMPLE
    cell = size / 3.0
    # Objects are drawn opaque on a transparent premultiplied-alpha layer at 4x and box-filtered down
    # (Image.reduce: an exact box filter, much cheaper than resize); alpha then holds each pixel's coverage,
    # giving anti-aliased edges composited over a background computed directly at the target size.
    layer = Image.new("RGBa", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in objects:
        row, col = divmod(int(obj["cell"]), 3)
        dx, dy = obj.get("offset", (0.0, 0.0))
        cx, cy = (col + 0.5) * cell + dx * size, (row + 0.5) * cell + dy * size
        radius = SIZE_FRACTION[obj["size"]] * cell / 2.0
        fill = (*(obj["rgb"] if "rgb" in obj else COLOR_RGB[obj["color"]]), 255)
        if obj["shape"] == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
            continue
        angle = math.radians(obj.get("angle", 0.0))
        cos, sin = math.cos(angle), math.sin(angle)
        unit = _UNIT_POLYGONS[obj["shape"]]
        px = cx + radius * (unit[:, 0] * cos - unit[:, 1] * sin)
        py = cy + radius * (unit[:, 0] * sin + unit[:, 1] * cos)
        draw.polygon(list(zip(px.tolist(), py.tolist(), strict=True)), fill=fill)
    rgba = np.asarray(layer.reduce(_SUPERSAMPLE), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    out = rgba[..., :3] + (255.0 * _background(background, resolution)) * (1.0 - alpha)
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def sample_scene(
    rng: np.random.Generator,
    split: str = "train",
    max_objects: int = 3,
    textured_prob: float = 0.5,
    palette: str = "classic",
) -> dict[str, Any]:
    """Draw a scene description ``{"objects": [...], "background": {...}}`` (objects in caption order).

    "train"/"heldout" never use HELDOUT_PAIRS; "novel" forces one randomly chosen object to use one
    (the others are drawn from all pairs, so they may too). ``palette`` "wide" draws the "classic" scene first
    (same layout, names and caption for the same ``rng`` state), then its colours: see :func:`_widen`.
    """
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; expected one of {PALETTES}")
    count = int(rng.integers(1, max_objects + 1))
    cells = np.sort(rng.choice(len(POSITIONS), size=count, replace=False))
    forced = int(rng.integers(count)) if split == "novel" else -1
    objects = []
    for k, cell in enumerate(cells.tolist()):
        if k == forced:
            shape, color = _HELDOUT_LIST[int(rng.integers(len(_HELDOUT_LIST)))]
        else:
            # Rejection keeps the pair distribution uniform over the allowed pairs.
            while True:
                shape, color = SHAPES[int(rng.integers(len(SHAPES)))], COLORS[int(rng.integers(len(COLORS)))]
                if split == "novel" or (shape, color) not in HELDOUT_PAIRS:
                    break
        size = SIZES[int(rng.integers(len(SIZES)))]
        radius = SIZE_FRACTION[size] / 6.0  # in image-side units (cell side = 1/3)
        jitter = min(_MAX_JITTER, 1.0 / 6.0 - radius)
        dx, dy = rng.uniform(-jitter, jitter, size=2).tolist()
        angle = 0.0 if shape == "circle" else float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
        objects.append({"shape": shape, "color": color, "size": size, "cell": cell, "offset": (dx, dy), "angle": angle})
    names = list(BACKGROUND_RGB)
    background: dict[str, Any] = {"color": names[int(rng.integers(len(names)))], "texture": "plain"}
    if rng.random() < textured_prob:
        texture = TEXTURES[1 + int(rng.integers(len(TEXTURES) - 1))]
        # Stripe periods of 8-16 px and checker cells of 8-16 px at 64 px resolution.
        period = rng.uniform(0.125, 0.25) if texture == "stripes" else rng.uniform(0.25, 0.5)
        background.update(
            texture=texture,
            angle=float(rng.uniform(0.0, 360.0)),
            period=float(period),
            phase=float(rng.uniform(0.0, 2 * math.pi)),
            amplitude=float(rng.uniform(0.1, 0.15)),
        )
    if palette == "wide":
        widen_palette(rng, objects, background)
    return {"objects": objects, "background": background}


_MIN_CONTRAST = 80.0  # Euclidean 8-bit RGB distance kept between every object and the background's base colour


def widen_palette(rng: np.random.Generator, objects: list[dict[str, Any]], background: dict[str, Any]) -> None:
    """Recolours a "classic" scene description in place into the "wide" palette: each object's colour varied in
    shade (hue within 10 degrees, saturation and value scaled down to 60 %; whites only in brightness) so that its
    name still holds; the background's base colour drawn with uniform hue, saturation and value and redrawn until
    every object stands out from it."""
    for obj in objects:
        h, sat, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in COLOR_RGB[obj["color"]]))
        if obj["color"] == "white":
            dh, ds, dv = 0.0, 1.0, rng.uniform(0.85, 1.0)
        else:
            dh, ds, dv = rng.uniform(-10 / 360, 10 / 360), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
        obj["rgb"] = tuple(round(255 * c) for c in colorsys.hsv_to_rgb((h + dh) % 1.0, sat * ds, v * dv))
    while True:
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(*rng.uniform(0.0, 1.0, size=3).tolist()))
        if all(math.dist(rgb, obj["rgb"]) >= _MIN_CONTRAST for obj in objects):
            break
    background.pop("color")
    background["rgb"] = rgb


def scene_labels(objects: Sequence[Mapping[str, Any]], max_objects: int) -> torch.Tensor:
    """(max_objects, 4) int64 rows (shape_id, colour_id, size_id, cell_id) in caption order, -1 padded."""
    labels = torch.full((max_objects, 4), -1, dtype=torch.long)
    for k, o in enumerate(sorted(objects, key=lambda o: o["cell"])):
        labels[k] = torch.tensor(
            [SHAPES.index(o["shape"]), COLORS.index(o["color"]), SIZES.index(o["size"]), o["cell"]]
        )
    return labels


def render_scenes(scenes: Sequence[Mapping[str, Any]], resolution: int, desc: str = "render") -> torch.Tensor:
    """Scene descriptions (``objects`` and ``background``) rendered into ``(N, 3, R, R)`` uint8: in-memory training
    pools keep a quarter of float32's size."""
    images = torch.empty(len(scenes), 3, resolution, resolution, dtype=torch.uint8)
    for i, scene in enumerate(tqdm(scenes, desc=desc, leave=False, mininterval=2.0)):
        images[i] = torch.from_numpy(render_scene(scene["objects"], scene["background"], resolution)).permute(2, 0, 1)
    return images


class SeededDataset(Dataset):
    """Base of the built-in datasets: ``num_samples`` items, item ``i`` a pure function of ``seed`` and ``i``."""

    num_samples: int
    seed: int

    def __len__(self) -> int:
        return self.num_samples

    def rng_for(self, index: int, *entropy: int) -> np.random.Generator:
        """The generator of item ``index``, seeded by ``(seed, *entropy)``; refuses an index out of range."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return np.random.default_rng(np.random.SeedSequence([self.seed, *entropy]))


class SyntheticScenes(SeededDataset):
    """Deterministic captioned shape scenes.

    Item ``i`` is a dict: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` str, ``labels``
    (max_objects, 4) int64 (see :func:`scene_labels`) and ``num_objects`` int. Splits "train" and
    "heldout" share a distribution but use disjoint seed streams; "novel" scenes each contain a
    held-out (shape, colour) pair. ``palette`` (PALETTES) "wide" recolours the same scenes (see
    :func:`widen_palette`); "classic" is the world of the shipped pipeline, grader and CLIP.
    """

    def __init__(
        self,
        num_samples: int = 10000,
        resolution: int = 64,
        split: str = "train",
        seed: int = 0,
        textured_prob: float = 0.5,
        max_objects: int = 3,
        palette: str = "classic",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if not 1 <= max_objects <= len(POSITIONS):
            raise ValueError(f"max_objects must be in [1, {len(POSITIONS)}], got {max_objects}")
        if not 0.0 <= textured_prob <= 1.0:
            raise ValueError(f"textured_prob must be in [0, 1], got {textured_prob}")
        if palette not in PALETTES:
            raise ValueError(f"unknown palette {palette!r}; expected one of {PALETTES}")
        if seed < 0 or num_samples < 0 or resolution < 1:
            raise ValueError("seed and num_samples must be >= 0 and resolution >= 1")
        self.num_samples = num_samples
        self.resolution = resolution
        self.split = split
        self.seed = seed
        self.textured_prob = textured_prob
        self.max_objects = max_objects
        self.palette = palette

    def describe(self, index: int) -> dict[str, Any]:
        """Scene description ``{"objects", "background", "caption"}``; pass the first two to render_scene."""
        # Split id in the entropy gives every split its own, disjoint stream of scenes.
        rng = self.rng_for(index, SPLITS.index(self.split), index)
        scene = sample_scene(rng, self.split, self.max_objects, self.textured_prob, self.palette)
        scene["caption"] = make_caption(scene["objects"])
        return scene

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.describe(index)
        image = render_scene(scene["objects"], scene["background"], self.resolution)
        return {
            "image": uint8_to_tensor(image),
            "caption": scene["caption"],
            "labels": scene_labels(scene["objects"], self.max_objects),
            "num_objects": len(scene["objects"]),
        }
