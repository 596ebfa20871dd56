"""What a generator trains on: the built-in captioned scenes and videos, or the user's own images, resolved to a
dataset and a condition.

``--data`` accepts "scenes", "videos", a folder of images (captions from ``.txt`` sidecars or a root
``metadata.jsonl`` / ``metadata.csv``), a folder of class sub-folders (the ImageNet layout) or WebDataset shards
(``txt`` / ``json`` / ``cls`` members). ``--condition auto`` picks text for captioned data, class for class folders
and labelled shards, and none otherwise.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from tokenizers_vis.data import (
    IMAGE_EXTENSIONS,
    ClassImageFolder,
    ImageFolderDataset,
    MovingShapes,
    SyntheticScenes,
    WebDatasetShards,
    class_folder_names,
    is_shard_source,
    read_metadata_captions,
    resolve_shards,
)

# command-line names of the conditions -> the generators' own (``generators.conditioning.CONDITIONS``)
CONDITION_NAMES = {"text": "prompt", "class": "class", "none": "none"}
BUILT_IN = ("scenes", "videos")


@dataclass
class GeneratorData:
    """One split of a generator's data: the dataset, the condition it supports, class names for class folders,
    and a key that changes whenever the data (or how it is read) changes, for the token cache."""

    dataset: Dataset
    condition: str  # "prompt" | "class" | "none"
    class_names: list[str] | None
    key: str


def _has_sidecars(root: Path) -> bool:
    return any(name.endswith(".txt") for _, _, names in os.walk(root) for name in names)


def _class_layout(root: Path) -> bool:
    """Every image lies in a first-level sub-folder and there are at least two of them."""
    if len(class_folder_names(root)) < 2:
        return False
    return not any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(root))


def detect_condition(source: str) -> str:
    """The condition ``--condition auto`` picks for ``source`` (a generator condition name)."""
    if source in BUILT_IN:
        return "prompt"
    if is_shard_source(source):
        first = next(iter(WebDatasetShards(source, resolution=8, on_error="drop")), None) or {}
        return "class" if "label" in first else "prompt" if first.get("caption") else "none"
    root = Path(source)
    if not root.is_dir():
        raise ValueError(
            f"unknown data {source!r}; expected 'scenes', 'videos', a folder of images (captioned, or in class "
            "sub-folders) or WebDataset .tar shards (a path, a glob pattern or a folder holding them)"
        )
    if read_metadata_captions(root) is not None or _has_sidecars(root):
        return "prompt"
    return "class" if _class_layout(root) else "none"


def _fingerprint(paths: list[Path]) -> str:
    """Changes when a file is added, removed, replaced or edited (names, sizes and modification times)."""
    h = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def generator_data(
    source: str,
    split: str,
    condition: str,
    resolution: int,
    *,
    count: int | None = None,
    frames: int = 9,
    seed: int = 0,
) -> GeneratorData:
    """The dataset of one split ("train" or "heldout") of ``source`` for a generator conditioned on ``condition``
    (a generator condition name). ``count`` is the number of built-in samples, and caps a user folder's split
    (the held-out evaluation set). Unreadable user files come back as None (``on_error="drop"``) so they are
    counted. Refuses data that cannot give the condition."""
    if source == "scenes":
        data: Dataset = SyntheticScenes(count or 0, resolution, split=split, seed=seed)
        key = f"scenes-{split}-{resolution}-{count}-{seed}"
        return GeneratorData(data, _needs_captions(condition, source), None, key)
    if source == "videos":
        data = MovingShapes(count or 0, resolution, frames, split=split, seed=seed)
        key = f"videos-{split}-{resolution}x{frames}-{count}-{seed}"
        return GeneratorData(data, _needs_captions(condition, source), None, key)
    options: dict[str, Any] = dict(split=split, on_error="drop")
    if is_shard_source(source):
        shards = [Path(s) for s in resolve_shards(source)]
        data = WebDatasetShards(source, resolution, **options)
        return GeneratorData(data, condition, None, f"wds-{split}-{resolution}-{_fingerprint(shards)}")
    if condition == "class":
        data = ClassImageFolder(source, resolution, **options)
        names = data.class_names
    else:
        data, names = ImageFolderDataset(source, resolution, **options), None
        if condition == "prompt" and data.metadata_captions is None and not _has_sidecars(data.root):
            raise ValueError(f"--condition text needs captions, and {source} has no metadata.jsonl/.csv or .txt files")
    key = f"folder-{split}-{resolution}-{_fingerprint(data.files)}"
    if count is not None and count < len(data):
        data, key = Subset(data, range(count)), f"{key}-{count}"
    return GeneratorData(data, condition, names, key)


def _needs_captions(condition: str, source: str) -> str:
    if condition == "class":
        raise ValueError(f"the built-in {source} have captions, not classes: use --condition text or none")
    return condition
