"""Datasets: captioned synthetic scenes and moving-shape videos (their caption language in :mod:`.language`), bundled
real-photo patches, and user image folders / shards."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from .flat_shapes import FLAT_KINDS, FlatShapes, render_flat_scene, sample_flat_scene
from .folders import (
    IMAGE_EXTENSIONS,
    ClassImageFolder,
    ImageFolderDataset,
    WebDatasetShards,
    class_folder_names,
    decode_image,
    in_holdout,
    is_shard_source,
    read_metadata_captions,
    resolve_shards,
    to_rgb,
)
from .language import (
    COLORS,
    DIRECTIONS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    make_caption,
    make_video_caption,
)
from .photos import PHOTO_FILES, PHOTO_SPLITS, PhotoPatches, load_photo
from .scenes import (
    PALETTES,
    SyntheticScenes,
    render_scene,
    render_scenes,
    sample_scene,
    scene_labels,
    uint8_to_tensor,
    widen_palette,
)
from .videos import MovingShapes, render_video, sample_video

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "FLAT_KINDS",
    "HELDOUT_PAIRS",
    "IMAGE_EXTENSIONS",
    "ClassImageFolder",
    "FlatShapes",
    "PHOTO_FILES",
    "PALETTES",
    "PHOTO_SPLITS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "ImageFolderDataset",
    "MovingShapes",
    "PhotoPatches",
    "SyntheticScenes",
    "WebDatasetShards",
    "build_dataset",
    "class_folder_names",
    "collate_images",
    "collate_readable",
    "decode_image",
    "in_holdout",
    "is_shard_source",
    "load_photo",
    "make_caption",
    "make_video_caption",
    "read_metadata_captions",
    "render_flat_scene",
    "render_scene",
    "render_scenes",
    "render_video",
    "resolve_shards",
    "sample_flat_scene",
    "sample_scene",
    "sample_video",
    "scene_labels",
    "to_rgb",
    "uint8_to_tensor",
    "widen_palette",
]


def build_dataset(
    source: str,
    split: str = "train",
    resolution: int = 64,
    num_samples: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> Dataset:
    """Dataset for ``source``: "scenes", "photos", "videos" (moving shapes; items hold ``video`` instead of
    ``image``), an image directory, or .tar shards (path, glob or a directory holding ``*.tar`` at its top level).

    ``num_samples`` (default 10000) and ``seed`` apply to the generated sources only; folders and shards
    have the size of their data and a fixed order. For those, ``split`` "heldout" is a deterministic 5 %
    of the files/samples (hash of the relative path / sample key) and "train" the rest. Extra keyword
    arguments go to the dataset class.
    """
    if source == "scenes":
        return SyntheticScenes(10000 if num_samples is None else num_samples, resolution, split, seed, **kwargs)
    if source == "photos":
        return PhotoPatches(10000 if num_samples is None else num_samples, resolution, split, seed, **kwargs)
    if source == "videos":
        return MovingShapes(2000 if num_samples is None else num_samples, resolution, split=split, seed=seed, **kwargs)
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r} for folders and shards; expected 'train' or 'heldout'")
    if is_shard_source(source):
        return WebDatasetShards(source, resolution, split=split, **kwargs)
    if os.path.isdir(source):
        return ImageFolderDataset(source, resolution, split=split, **kwargs)
    raise ValueError(
        f"unknown dataset source {source!r}; expected 'scenes', 'photos', 'videos', an existing directory of images, "
        "or a path / glob pattern of .tar shards"
    )


def collate_images(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: tensors are stacked (``image`` -> (B, 3, H, W), ``video`` -> (B, T, 3, H, W),
    ``labels`` -> (B, max_objects, 4)), ints become a (B,) tensor, everything else (captions, paths) stays a list."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def collate_readable(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for ``on_error="drop"`` datasets: drops the None items and reports how many in
    ``skipped`` (an int), so the main process counts the bad files every worker met."""
    items = [item for item in batch if item is not None]
    out = collate_images(items) if items else {}
    out["skipped"] = len(batch) - len(items)
    return out
