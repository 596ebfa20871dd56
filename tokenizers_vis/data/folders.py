"""User data: a folder of images (optionally with ``.txt`` sidecar captions) or local WebDataset shards.

Bad input never stops a run: unreadable, truncated, empty or non-image files are skipped, counted and
reported with a single warning per dataset instance (per process, so once per DataLoader worker).
"""

from __future__ import annotations

import glob
import hashlib
import io
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
FOLDER_SPLITS: tuple[str, ...] = ("all", "train", "heldout")


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

    Item ``i`` is a dict: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` (text of a ``.txt`` file
    with the same stem, else "") and ``path``. An unreadable file is recorded and the next readable one
    (i+1, i+2, ... wrapping around) is returned instead. ``split`` "train"/"heldout" keeps the files
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
    ) -> None:
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {FOLDER_SPLITS}")
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

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self.files)
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for {count} files")
        for offset in range(count):
            path = self.files[(index + offset) % count]
            if str(path) in self.skipped_files:
                continue
            try:
                image = decode_image(path, self.resolution)
            except Exception as error:  # any decoder failure means "bad file", never a crashed run
                self._record_skip(str(path), _describe(error))
                continue
            return {"image": image, "caption": _sidecar_caption(path), "path": str(path)}
        raise RuntimeError(f"none of the {count} image files in {self.root} could be read")

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


def _sidecar_caption(path: Path) -> str:
    caption = path.with_suffix(".txt")
    try:
        return caption.read_text(encoding="utf-8", errors="replace").strip() if caption.is_file() else ""
    except OSError:
        return ""


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

    Yields dicts: ``image`` (3, R, R) float32 in [-1, 1], ``caption`` (``txt``/``caption`` member, else
    ""), ``key``. Shards are divided over ``world_size`` ranks and then over DataLoader workers; a slot
    without a shard yields nothing, so use at least ``world_size * num_workers`` shards. ``split``
    "train"/"heldout" filters samples by a hash of their key.
    """

    def __init__(
        self,
        urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
        resolution: int = 64,
        rank: int = 0,
        world_size: int = 1,
        split: str = "all",
        holdout_fraction: float = 0.05,
    ) -> None:
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {FOLDER_SPLITS}")
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

    def _make_sample(self, shard: str, key: str | None, members: dict[str, bytes]) -> Iterator[dict[str, Any]]:
        if key is None:
            return
        if self.split != "all" and in_holdout(key, self.holdout_fraction) != (self.split == "heldout"):
            return
        extension = next((e for e in members if e in self._image_keys), None)
        if extension is None:
            self._record_skip(f"{shard}:{key}", "no image member")
            return
        try:
            image = decode_image(io.BytesIO(members[extension]), self.resolution)
        except Exception as error:  # any decoder failure means "bad sample", never a crashed run
            self._record_skip(f"{shard}:{key}.{extension}", _describe(error))
            return
        caption = next((members[k] for k in CAPTION_KEYS if k in members), b"")
        yield {"image": image, "caption": caption.decode("utf-8", errors="replace").strip(), "key": key}
