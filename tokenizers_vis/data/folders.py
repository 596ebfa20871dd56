"""User data: a folder of images, a folder of class sub-folders (the ImageNet layout), or local WebDataset shards.

Captions come from ``.txt`` sidecars or from a ``metadata.jsonl`` / ``metadata.csv`` at the folder's root (the
Hugging Face ImageFolder convention: ``file_name`` plus a ``text`` or ``caption`` column); shards carry them in
``txt`` / ``caption`` / ``json`` members and class labels in ``cls`` (or ``json``'s ``label``).

Bad input never stops a run: unreadable, truncated, empty or non-image files are skipped, counted and
reported with a single warning per dataset instance (per process, so once per DataLoader worker). With
``on_error="drop"`` a bad item comes back as None instead of being replaced, so a loader can count it (see
:func:`collate_readable`).
"""

from __future__ import annotations

import copy
import csv
import glob
import hashlib
import io
import json
import os
import posixpath
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .scenes import uint8_to_tensor

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_KEYS: tuple[str, ...] = ("txt", "caption")
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")
METADATA_CAPTION_COLUMNS: tuple[str, ...] = ("text", "caption")
FOLDER_SPLITS: tuple[str, ...] = ("all", "train", "heldout")
ON_ERROR: tuple[str, ...] = ("next", "drop")


def in_holdout(name: str, fraction: float = 0.05) -> bool:
    """Deterministic hold-out membership from a stable hash of ``name`` (unlike ``hash()``, not salted)."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: high-bit-depth greys are rescaled, transparency goes onto white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float32)
        peak = float(array.max(initial=0.0))
        # 16-bit data (I;16, or I holding 16-bit PNG/TIFF values) and float data in [0, 1] are rescaled.
        if image.mode.startswith("I;16") or peak > 255.0:
            array = array / 257.0
        elif image.mode == "F" and peak <= 1.0:
            array = array * 255.0
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    return image.convert("RGB")


def decode_image(source: str | os.PathLike | IO[bytes], resolution: int) -> torch.Tensor:
    """Decode an image file, resize its short side and centre crop: (3, R, R) float32 in [-1, 1].

    Raises on any unreadable input; callers decide to skip. Truncated files fail because PIL's default
    ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` is relied on (and deliberately not changed globally).
    """
    with Image.open(source) as image:
        # JPEGs much larger than needed are decoded at a reduced DCT scale (still >= resolution).
        image.draft("RGB", (resolution, resolution))
        image.load()
        image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    return uint8_to_tensor(np.asarray(image))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _SkipLog:
    """Per-instance record of skipped inputs with a single warning, so bad data cannot flood the log."""

    def _init_skip_log(self, where: str) -> None:
        self.where = where
        self.skipped_files: dict[str, str] = {}  # path or shard:key -> reason
        self._warned = False

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def skipped_paths(self) -> list[str]:
        return list(self.skipped_files)

    def _record_skip(self, item: str, reason: str) -> None:
        self.skipped_files[item] = reason
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"skipping unreadable input {item} ({reason}); further bad inputs of {self.where} are "
                "skipped without warning and counted in .skipped / .skipped_paths",
                stacklevel=3,
            )


class ImageFolderDataset(_SkipLog, Dataset):
    """Images found under ``root`` (sorted relative paths), centre-cropped to ``resolution``.

    Item ``i`` is a dict: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` (the file's row in the root's
    ``metadata.jsonl`` / ``metadata.csv`` if there is one, else the text of a ``.txt`` file with the same stem,
    else "") and ``path``. An unreadable file is recorded and the next readable one (i+1, i+2, ... wrapping
    around) is returned instead, or None with ``on_error="drop"``. ``split`` "train"/"heldout" keeps the files
    outside/inside a deterministic ``holdout_fraction`` chosen by hashing the relative path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 64,
        recursive: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        split: str = "all",
        holdout_fraction: float = 0.05,
        on_error: str = "next",
    ) -> None:
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {FOLDER_SPLITS}")
        if on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {on_error!r}; expected one of {ON_ERROR}")
        self.on_error = on_error
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        self._init_skip_log(str(self.root))
        self.resolution = resolution
        suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        relative = []
        # os.walk without following symlinks: no cycles, and the walk order is made irrelevant by sorting.
        for directory, subdirs, names in os.walk(self.root):
            if not recursive:
                subdirs.clear()
            base = Path(directory).relative_to(self.root)
            relative += [(base / n).as_posix() for n in names if os.path.splitext(n)[1].lower() in suffixes]
        if split != "all":
            relative = [r for r in relative if in_holdout(r, holdout_fraction) == (split == "heldout")]
        if not relative:
            where = f"{str(self.root)!r}" + ("" if split == "all" else f" (split {split!r})")
            raise ValueError(f"no image files found in {where}; accepted extensions: {', '.join(suffixes)}")
        self.files: list[Path] = [self.root / r for r in sorted(relative)]
        self.metadata_captions = read_metadata_captions(self.root)

    def caption(self, path: Path) -> str:
        """The caption of one of :attr:`files`: its metadata row, else its ``.txt`` sidecar, else ""."""
        if self.metadata_captions is not None:
            return self.metadata_captions.get(path.relative_to(self.root).as_posix(), "")
        return _sidecar_caption(path)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self.files)
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for {count} files")
        for offset in range(count):
            path = self.files[(index + offset) % count]
            if str(path) in self.skipped_files:
                if self.on_error == "drop":
                    return None
                continue
            try:
                image = decode_image(path, self.resolution)
            except Exception as error:  # any decoder failure means "bad file", never a crashed run
                self._record_skip(str(path), _describe(error))
                if self.on_error == "drop":
                    return None
                continue
            return self._item(path, image)
        raise RuntimeError(f"none of the {count} image files in {self.root} could be read")

    def _item(self, path: Path, image: torch.Tensor) -> dict[str, Any]:
        return {"image": image, "caption": self.caption(path), "path": str(path)}

    def scan(self) -> tuple[int, list[str]]:
        """Validate every file now (PIL verify + full decode) and drop the bad ones from the index.

        Returns ``(good_count, skipped_paths)`` and emits one summary warning if anything was skipped.
        Raises ValueError if no file is readable.
        """
        good = []
        for path in self.files:
            if str(path) in self.skipped_files:
                continue
            try:
                with Image.open(path) as image:
                    image.verify()  # structural checks (e.g. PNG CRCs) that decoding alone skips
                decode_image(path, self.resolution)
            except Exception as error:  # see __getitem__
                self.skipped_files[str(path)] = _describe(error)
                continue
            good.append(path)
        if self.skipped_files:
            first = "; ".join(f"{p} ({r})" for p, r in list(self.skipped_files.items())[:3])
            warnings.warn(
                f"skipped {self.skipped} unreadable image(s) in {self.root}: {first}"
                + (" ..." if self.skipped > 3 else ""),
                stacklevel=2,
            )
            self._warned = True
        if not good:
            raise ValueError(f"none of the image files in {self.root} could be read")
        self.files = good
        return len(good), self.skipped_paths


class ClassImageFolder(ImageFolderDataset):
    """Images in class sub-folders (the ImageNet layout ``root/<class>/.../<image>``): items also hold ``label``,
    the index of the first-level sub-folder in :attr:`class_names` (sorted folder names). Images directly in
    ``root`` are refused, since they have no class."""

    def __init__(self, root: str | os.PathLike, resolution: int = 64, **kwargs: Any) -> None:
        super().__init__(root, resolution, recursive=True, **kwargs)
        top = [p.relative_to(self.root).parts for p in self.files]
        loose = [p for p in top if len(p) == 1]
        if loose:
            raise ValueError(
                f"{self.root} has {len(loose)} image(s) outside class sub-folders (e.g. {loose[0][0]!r}); "
                "a class-folder dataset needs root/<class name>/<image>"
            )
        # the class list comes from every sub-folder, not this split's files, so train and held-out agree
        self.class_names: list[str] = class_folder_names(self.root)
        self._labels = {name: i for i, name in enumerate(self.class_names)}

    def _item(self, path: Path, image: torch.Tensor) -> dict[str, Any]:
        label = self._labels[path.relative_to(self.root).parts[0]]
        return {"image": image, "caption": self.class_names[label], "label": label, "path": str(path)}


def class_folder_names(root: str | os.PathLike) -> list[str]:
    """Sorted names of the first-level sub-folders of ``root`` (hidden ones excluded)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def read_metadata_captions(root: Path) -> dict[str, str] | None:
    """``{relative file name: caption}`` from ``root/metadata.jsonl`` or ``root/metadata.csv`` (``file_name`` and a
    ``text`` or ``caption`` column), or None when neither exists. A malformed file is refused with its line."""
    for name in METADATA_FILES:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".jsonl"):
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number} is not valid JSON ({error})") from None
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        captions = {}
        for number, row in enumerate(rows, 1):
            column = next((c for c in METADATA_CAPTION_COLUMNS if c in row), None)
            if "file_name" not in row or column is None:
                raise ValueError(
                    f"{path} row {number} needs 'file_name' and one of {METADATA_CAPTION_COLUMNS}, has {sorted(row)}"
                )
            captions[posixpath.normpath(str(row["file_name"]))] = str(row[column]).strip()
        return captions
    return None


def _sidecar_caption(path: Path) -> str:
    caption = path.with_suffix(".txt")
    try:
        return caption.read_text(encoding="utf-8", errors="replace").strip() if caption.is_file() else ""
    except OSError:
        return ""


def is_shard_source(source: str) -> bool:
    """Whether ``source`` names WebDataset shards: a ``.tar`` path, a glob pattern, or a folder with ``*.tar`` at
    its top level (any other folder is an image folder)."""
    if os.path.isdir(source):
        return bool(glob.glob(os.path.join(glob.escape(source), "*.tar")))
    return source.endswith(".tar") or any(c in source for c in "*?[")


def resolve_shards(urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand a directory (its ``*.tar`` files), a glob pattern, a path, or a list of those."""
    items = [urls_or_paths] if isinstance(urls_or_paths, (str, os.PathLike)) else list(urls_or_paths)
    shards: list[str] = []
    for item in map(str, items):
        if os.path.isdir(item):
            shards += sorted(glob.glob(os.path.join(glob.escape(item), "*.tar")))
        elif any(c in item for c in "*?["):
            shards += sorted(glob.glob(item))
        elif os.path.isfile(item):
            shards.append(item)
        else:
            raise ValueError(f"shard {item!r} does not exist (only local .tar shards are supported)")
    if not shards:
        raise ValueError(f"no .tar shards found for {urls_or_paths!r}")
    return shards


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: "dir/0001.seg.png" -> key "dir/0001", extension "seg.png"."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(directory, stem), extension.lower()


class WebDatasetShards(_SkipLog, IterableDataset):
    """Samples from local WebDataset ``.tar`` shards, read with :mod:`tarfile`.

    Yields dicts: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` (``txt``/``caption`` member, else a
    ``json`` member's ``caption`` or ``text``, else ""), ``key``, and ``label`` (int) when the sample has a ``cls``
    member or a ``json`` ``label``. Shards are divided over ``world_size`` ranks and then over DataLoader workers;
    a slot without a shard yields nothing, so use at least ``world_size * num_workers`` shards. ``split``
    "train"/"heldout" filters samples by a hash of their key. A bad sample is skipped, or yielded as None with
    ``on_error="drop"``.
    """

    def __init__(
        self,
        urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
        resolution: int = 64,
        rank: int = 0,
        world_size: int = 1,
        split: str = "all",
        holdout_fraction: float = 0.05,
        on_error: str = "next",
    ) -> None:
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {FOLDER_SPLITS}")
        if on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {on_error!r}; expected one of {ON_ERROR}")
        self.on_error = on_error
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.shards = resolve_shards(urls_or_paths)
        self._init_skip_log(f"{len(self.shards)} shard(s) (first: {self.shards[0]})")
        self.resolution = resolution
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.holdout_fraction = holdout_fraction
        self._image_keys = {e.lstrip(".") for e in IMAGE_EXTENSIONS}

    def with_shards(self, shards: Sequence[str]) -> WebDatasetShards:
        """The same reader over other shards (e.g. one rank's unfinished ones), with a fresh skip log."""
        subset = copy.copy(self)
        subset.shards = list(shards)
        subset._init_skip_log(f"{len(subset.shards)} shard(s)")
        return subset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for shard in self.shards[self.rank * workers + worker :: self.world_size * workers]:
            yield from self._read_shard(shard)

    def _read_shard(self, shard: str) -> Iterator[dict[str, Any]]:
        # Streaming mode: members of one sample are consecutive in WebDataset shards, so a group is
        # complete as soon as the key changes and nothing needs to be held in memory beyond it.
        try:
            with tarfile.open(shard, "r|*") as tar:
                key, members = None, {}
                for member in tar:
                    if not member.isfile() or posixpath.basename(member.name).startswith("."):
                        continue
                    member_key, extension = _split_key(member.name)
                    if member_key != key:
                        yield from self._make_sample(shard, key, members)
                        key, members = member_key, {}
                    members[extension] = tar.extractfile(member).read()
                yield from self._make_sample(shard, key, members)
        except (tarfile.TarError, OSError, EOFError) as error:
            self._record_skip(f"{shard} (rest of shard)", _describe(error))
            if self.on_error == "drop":
                yield None

    def _make_sample(self, shard: str, key: str | None, members: dict[str, bytes]) -> Iterator[dict[str, Any]]:
        if key is None:
            return
        if self.split != "all" and in_holdout(key, self.holdout_fraction) != (self.split == "heldout"):
            return
        extension = next((e for e in members if e in self._image_keys), None)
        try:
            if extension is None:
                raise ValueError("no image member")
            image = decode_image(io.BytesIO(members[extension]), self.resolution)
            sample = {"image": image, "key": key, "shard": shard, **_annotations(members)}
        except Exception as error:  # any decoder failure means "bad sample", never a crashed run
            self._record_skip(f"{shard}:{key}" + (f".{extension}" if extension else ""), _describe(error))
            if self.on_error == "drop":
                yield None
            return
        yield sample


def _annotations(members: dict[str, bytes]) -> dict[str, Any]:
    """Caption (and class label, if any) of one WebDataset sample from its txt / caption / json / cls members."""
    meta = json.loads(members["json"]) if "json" in members else {}
    if not isinstance(meta, dict):
        raise ValueError("the json member must hold an object")
    caption = next((members[k].decode("utf-8", errors="replace") for k in CAPTION_KEYS if k in members), None)
    if caption is None:
        caption = str(meta.get("caption", meta.get("text", "")))
    out: dict[str, Any] = {"caption": caption.strip()}
    if "cls" in members:
        out["label"] = int(members["cls"].decode().strip())
    elif "label" in meta:
        out["label"] = int(meta["label"])
    return out
