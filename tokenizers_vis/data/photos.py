"""Patches of real photographs that ship inside installed packages (scikit-image and scikit-learn).

No download is needed, so this gives natural-image statistics on offline machines. Splits are by source
photo, so "heldout" patches come from photographs never seen in training.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .scenes import uint8_to_tensor

# name -> (package, file inside the package). Files are read directly rather than through
# skimage.data / sklearn.datasets, which avoids importing those heavy modules.
PHOTO_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "camera": ("skimage", "data/camera.png"),
    "coins": ("skimage", "data/coins.png"),
    "moon": ("skimage", "data/moon.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}
# Heldout mixes an animal, a natural close-up and a texture so it is as varied as training.
PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "motorcycle",
        "china",
        "camera",
        "coins",
        "moon",
        "brick",
        "grass",
    ),
    "heldout": ("chelsea", "flower", "gravel"),
}
# Photos are first normalised to at most this short side, so a given scale means a similar field of
# view whatever the original size of the photograph.
_BASE_SHORT_SIDE = 512


def load_photo(name: str) -> Image.Image | None:
    """The named photo as an RGB PIL image, or None when its package or file is not installed."""
    package, relative = PHOTO_FILES[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with Image.open(Path(spec.submodule_search_locations[0]) / relative) as image:
            return image.convert("RGB")
    except OSError:
        return None


def _rescale(image: Image.Image, scale: float, resolution: int) -> np.ndarray:
    """(H, W, 3) uint8: the photo at ``scale`` of its normalised size, but never smaller than a crop."""
    short = min(image.size)
    factor = min(1.0, _BASE_SHORT_SIDE / short) * scale
    factor = max(factor, resolution / short)
    if factor != 1.0:
        size = tuple(max(resolution, round(side * factor)) for side in image.size)
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image)


class PhotoPatches(Dataset):
    """Random crops of bundled photographs, deterministic per ``(seed, split, index)``.

    Item ``i`` is a dict: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` "" and ``source`` (photo
    name). ``scales`` are downsampling factors applied to the photo (after normalising its short side to
    512 px) before cropping; smaller scales put more context into a patch. ``color_augment`` (default: on
    for the train split) permutes the RGB channels of each patch at random.
    """

    def __init__(
        self,
        num_samples: int = 10000,
        resolution: int = 64,
        split: str = "train",
        seed: int = 0,
        scales: Sequence[float] = (1.0, 0.5),
        color_augment: bool | None = None,
    ) -> None:
        if split not in PHOTO_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(PHOTO_SPLITS)}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of positive factors, got {scales}")
        if seed < 0 or num_samples < 0 or resolution < 1:
            raise ValueError("seed and num_samples must be >= 0 and resolution >= 1")
        photos = {name: load_photo(name) for name in PHOTO_SPLITS[split]}
        photos = {name: image for name, image in photos.items() if image is not None}
        if not photos:
            available = [name for name in PHOTO_FILES if load_photo(name) is not None]
            raise ValueError(
                f"none of the photos of split {split!r} ({', '.join(PHOTO_SPLITS[split])}) could be loaded; "
                f"available on this machine: {available or 'none (install scikit-image / scikit-learn)'}"
            )
        self.num_samples = num_samples
        self.resolution = resolution
        self.split = split
        self.seed = seed
        self.scales = tuple(scales)
        # A dozen photos hold few hues (no teal, little green): permuting RGB channels in training lets the
        # codebook cover colours that held-out photos have. Off for held-out data, which stays as shot.
        self.color_augment = split == "train" if color_augment is None else color_augment
        self.sources: tuple[str, ...] = tuple(photos)
        # Every (photo, scale) level is computed once; together they take a few tens of MB at most.
        self._levels = [[_rescale(image, s, resolution) for s in self.scales] for image in photos.values()]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        split_id = list(PHOTO_SPLITS).index(self.split)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, split_id, index]))
        photo = int(rng.integers(len(self.sources)))
        level = self._levels[photo][int(rng.integers(len(self.scales)))]
        top = int(rng.integers(level.shape[0] - self.resolution + 1))
        left = int(rng.integers(level.shape[1] - self.resolution + 1))
        patch = level[top : top + self.resolution, left : left + self.resolution]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if self.color_augment:
            patch = patch[..., rng.permutation(3)]
        return {"image": uint8_to_tensor(patch), "caption": "", "source": self.sources[photo]}
