"""Out-of-distribution test scenes: elongated flat ellipses and rectangles in free colours, anywhere on a plain
background, drawn by a renderer of their own.

Nothing here is shared with :mod:`.scenes`, and the shapes lie where the scene renderer can never reach: it draws
the six ``SHAPES`` (circles and squares are never elongated; its narrowest shape, the diamond, is 0.53 as wide as
long) at most ``max_objects`` (3 by default) to a scene, in distinct 3x3 cells, in shades of eight named colours.
These scenes hold 1-4 ellipses or rectangles of aspect ratio at most ``MAX_ASPECT``, at any angle and position,
overlapping and cut by the border, in colours from the whole HSV cylinder. Tokenizers are only ever tested on them.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .scenes import SeededDataset, uint8_to_tensor

FLAT_KINDS: tuple[str, ...] = ("ellipse", "rectangle")
MAX_ASPECT = 0.5  # minor / major axis: narrower than every shape of the scene renderer
_SUPERSAMPLE = 2
_STREAM = 7  # the seed stream's tag, distinct from every split of the scene and clip datasets


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV in [0, 1] to 8-bit RGB."""
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def random_hsv_rgb(rng: np.random.Generator, value_range: tuple[float, float] = (0.1, 1.0)) -> tuple[int, int, int]:
    """An 8-bit RGB colour with hue and saturation uniform and value uniform in ``value_range``."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(*value_range)
    return hsv_to_rgb(float(h), float(s), float(v))


def sample_flat_scene(rng: np.random.Generator, min_contrast: float = 60.0) -> dict[str, Any]:
    """A description ``{"background": (r, g, b), "objects": [...]}``; each object has ``kind`` (FLAT_KINDS),
    ``color`` (r, g, b), ``center`` (x, y) and ``length`` (major axis) in fractions of the image side, ``aspect``
    (minor / major, in [0.25, MAX_ASPECT]) and ``angle`` in degrees. Object colours differ from the background by
    at least ``min_contrast`` (Euclidean, 8-bit RGB), so every object is visible."""
    background = random_hsv_rgb(rng)
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        while True:
            color = random_hsv_rgb(rng)
            if math.dist(color, background) >= min_contrast:
                break
        objects.append(
            {
                "kind": FLAT_KINDS[int(rng.integers(len(FLAT_KINDS)))],
                "color": color,
                "center": tuple(rng.uniform(0.05, 0.95, size=2).tolist()),
                "length": float(rng.uniform(0.2, 0.6)),
                "aspect": float(rng.uniform(0.25, MAX_ASPECT)),
                "angle": float(rng.uniform(0.0, 180.0)),
            }
        )
    return {"background": background, "objects": objects}


def render_flat_scene(
    background: Sequence[int], objects: Sequence[Mapping[str, Any]], resolution: int = 64
) -> np.ndarray:
    """(H, W, 3) uint8 of a :func:`sample_flat_scene` description, objects painted in order, 2x supersampled."""
    size = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (size, size), tuple(background))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        a = obj["length"] * size / 2
        b = a * obj["aspect"]
        if obj["kind"] == "ellipse":
            t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            x, y = a * np.cos(t), b * np.sin(t)
        else:
            x, y = np.array([-a, a, a, -a]), np.array([-b, -b, b, b])
        theta = math.radians(obj["angle"])
        cx, cy = obj["center"][0] * size, obj["center"][1] * size
        px = cx + x * math.cos(theta) - y * math.sin(theta)
        py = cy + x * math.sin(theta) + y * math.cos(theta)
        draw.polygon(list(zip(px.tolist(), py.tolist(), strict=True)), fill=tuple(obj["color"]))
    return np.asarray(image.reduce(_SUPERSAMPLE))


class FlatShapes(SeededDataset):
    """Deterministic flat-shape scenes for out-of-distribution evaluation (see the module docstring).

    Item ``i`` is a dict: ``image`` (3, R, R) float32 in [-1, 1] and ``caption`` "" (these scenes have no
    language). A pure function of ``(seed, index)``.
    """

    def __init__(self, num_samples: int = 256, resolution: int = 64, seed: int = 0) -> None:
        if seed < 0 or num_samples < 0 or resolution < 1:
            raise ValueError("seed and num_samples must be >= 0 and resolution >= 1")
        self.num_samples, self.resolution, self.seed = num_samples, resolution, seed

    def describe(self, index: int) -> dict[str, Any]:
        return sample_flat_scene(self.rng_for(index, _STREAM, index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.describe(index)
        image = render_flat_scene(scene["background"], scene["objects"], self.resolution)
        return {"image": uint8_to_tensor(image), "caption": ""}
