"""Token shards on disk: a dataset streamed once through a frozen tokenizer, read back lazily by the trainer.

A store is a folder of chunks plus ``index.json``::

    tokens-<key>/
      index.json              written last, by the main process: chunk list, counts, grid, class names
      chunk-000000/           a fixed slice of the dataset, written to a temporary folder and renamed
        tokens.npy            (n, *grid) int16 (int32 for codebooks over 32767 codes)
        tokens_flip.npy       the same images mirrored left-right (only when flip augmentation is on)
        labels.npy            (n,) int64 class labels (only for labelled data)
        captions.jsonl        one JSON string per line; caption_offsets.npy holds each line's byte offset
        meta.json             n, and how many input items the chunk consumed (bad files included)

Why chunks: each one is an atomic unit of work, so a killed run resumes at the first missing chunk and never
re-encodes what was written; Accelerate ranks split the chunks between them (chunk k goes to rank k mod world) and
never write the same folder. Why ``.npy``: ``np.load(mmap_mode="r")`` maps them, so reading a batch touches only its
rows and memory does not grow with the dataset. WebDataset shards (no ``len``) give one chunk per input shard,
divided between ranks the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from tokenizers_vis.data import WebDatasetShards, collate_readable

INDEX = "index.json"


class TokenShards:
    """Read side of a token store: ``tokens(idx, flip)``, ``captions(idx)``, ``labels(idx)`` for a batch of global
    sample indices, reading only those rows from the memory-mapped chunks."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index_file = self.folder / INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"{self.folder} is not a finished token store (no {INDEX}); run pretokenize")
        self.index = json.loads(index_file.read_text())
        self.chunks = [self.folder / c["name"] for c in self.index["chunks"]]
        self.starts = np.cumsum([0] + [c["count"] for c in self.index["chunks"]])
        if self.starts[-1] == 0:
            raise ValueError(f"token store {self.folder} holds no samples (every input was unreadable?)")
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.index["grid"])

    @property
    def has_flip(self) -> bool:
        return self.index["flip"]

    @property
    def has_labels(self) -> bool:
        return self.index["has_labels"]

    @property
    def class_names(self) -> list[str] | None:
        return self.index.get("class_names")

    @property
    def num_classes(self) -> int | None:
        return self.index["num_classes"]

    @property
    def skipped(self) -> int:
        """Unreadable inputs met while encoding (not stored)."""
        return self.index["skipped"]

    def _array(self, chunk: int, name: str) -> np.ndarray:
        key = (chunk, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.chunks[chunk] / f"{name}.npy", mmap_mode="r")
        return self._arrays[key]

    def _locate(self, idx: torch.Tensor) -> Iterator[tuple[int, int, int]]:
        """(position in the batch, chunk, row) for every requested global index."""
        flat = idx.reshape(-1).tolist()
        if flat and (min(flat) < 0 or max(flat) >= len(self)):
            raise IndexError(f"sample indices must lie in [0, {len(self)}), got {min(flat)}..{max(flat)}")
        chunks = np.searchsorted(self.starts, flat, side="right") - 1
        for i, (g, c) in enumerate(zip(flat, chunks.tolist(), strict=True)):
            yield i, c, g - int(self.starts[c])

    def tokens(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Index grids ``(B, *grid)`` int64; rows where ``flip`` (bool ``(B,)``) is True come from the mirrored
        images."""
        if flip is not None and flip.any() and not self.has_flip:
            raise ValueError(f"token store {self.folder} was written without flipped tokens")
        flips = [False] * idx.numel() if flip is None else flip.tolist()
        rows = [
            self._array(c, "tokens_flip" if flips[i] else "tokens")[r].astype(np.int64) for i, c, r in self._locate(idx)
        ]
        return torch.from_numpy(np.stack(rows)).reshape(*idx.shape, *self.grid)

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.has_labels:
            raise ValueError(f"token store {self.folder} has no class labels")
        return torch.tensor([int(self._array(c, "labels")[r]) for _, c, r in self._locate(idx)])

    def captions(self, idx: torch.Tensor) -> list[str]:
        """The captions of a batch, each chunk's file opened once per call (a batch is on the training hot path)."""
        out: list[str] = [""] * idx.numel()
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for i, c, r in self._locate(idx):
            by_chunk.setdefault(c, []).append((i, r))
        for c, rows in by_chunk.items():
            offsets = self._array(c, "caption_offsets")
            with open(self.chunks[c] / "captions.jsonl", "rb") as f:
                for i, r in rows:
                    f.seek(int(offsets[r]))
                    out[i] = json.loads(f.readline())
        return out


def _write_chunk(folder: Path, parts: dict[str, list], consumed: int, codebook_size: int) -> None:
    """Writes one chunk into a temporary folder and renames it into place."""
    tmp = folder.with_name(f".tmp_{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32
    count = sum(len(t) for t in parts.get("tokens", []))
    for name in ("tokens", "tokens_flip"):
        if parts.get(name):
            np.save(tmp / f"{name}.npy", torch.cat(parts[name]).numpy().astype(dtype))
    if parts.get("labels"):
        np.save(tmp / "labels.npy", torch.cat(parts["labels"]).numpy().astype(np.int64))
    offsets, position = [], 0
    with open(tmp / "captions.jsonl", "wb") as f:
        for caption in parts["captions"]:
            line = (json.dumps(caption) + "\n").encode()
            offsets.append(position)
            position += len(line)
            f.write(line)
    np.save(tmp / "caption_offsets.npy", np.asarray(offsets, dtype=np.int64))
    (tmp / "meta.json").write_text(json.dumps({"count": count, "consumed": consumed}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


@torch.no_grad()
def _encode_batches(
    batches: Iterable[dict[str, Any]], tokenizer, device: torch.device, flip: bool, precision: str
) -> Iterator[tuple[dict[str, torch.Tensor | list], int]]:
    """(encoded part, items consumed) per loader batch; a batch of only unreadable items yields an empty part."""
    for batch in batches:
        skipped = batch.pop("skipped", 0)
        pixels = batch.get("image", batch.get("video"))
        if pixels is None:
            yield {}, skipped
            continue
        part: dict[str, Any] = {"captions": list(batch.get("caption", [""] * len(pixels)))}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            part["tokens"] = tokenizer.encode(pixels.to(device)).cpu()
            if flip:
                part["tokens_flip"] = tokenizer.encode(pixels.to(device).flip(-1)).cpu()
        if "label" in batch:
            part["labels"] = batch["label"]
        yield part, skipped + len(pixels)


def _append(parts: dict[str, list], part: dict[str, Any]) -> None:
    for name, value in part.items():
        if name == "captions":
            parts[name] += value
        else:
            parts.setdefault(name, []).append(value)


def pretokenize(
    dataset: Dataset,
    tokenizer,
    folder: str | os.PathLike,
    *,
    accelerator=None,
    flip: bool = False,
    class_names: list[str] | None = None,
    chunk_size: int = 4096,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "no",
    desc: str = "tokenizing",
) -> TokenShards:
    """Encodes ``dataset`` (items with ``image`` or ``video`` in [-1, 1], ``caption``, optionally ``label``; None for
    an unreadable item, see ``on_error="drop"``) with the frozen ``tokenizer`` into a token store at ``folder`` and
    returns its reader. A finished store is returned as is; an unfinished one is completed, keeping its chunks.
    With ``accelerator`` each rank encodes its share of the chunks; every rank must call this. ``flip`` also
    stores the tokens of the mirrored images."""
    folder = Path(folder)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = next(tokenizer.parameters()).device
    if not (folder / INDEX).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        job = _Job(tokenizer, folder, rank, world, device, flip, precision, batch_size, num_workers, desc)
        if isinstance(dataset, WebDatasetShards):
            _encode_stream(dataset, job)
        elif isinstance(dataset, IterableDataset):
            raise TypeError("streaming datasets other than WebDatasetShards cannot be resumed; pass a map-style one")
        else:
            _encode_indexed(dataset, job, chunk_size)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if rank == 0:
            _write_index(folder, tokenizer, flip, class_names)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return TokenShards(folder)


@dataclass
class _Job:
    """What every chunk writer needs to know."""

    tokenizer: Any
    folder: Path
    rank: int
    world: int
    device: torch.device
    flip: bool
    precision: str
    batch_size: int
    workers: int
    desc: str

    def encode(self, batches: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], int]]:
        return _encode_batches(batches, self.tokenizer, self.device, self.flip, self.precision)

    def write(self, name: str, parts: dict[str, list], consumed: int) -> None:
        _write_chunk(self.folder / name, parts, consumed, self.tokenizer.codebook_size)

    def progress(self, total: int | None = None) -> tqdm:
        return tqdm(total=total, desc=self.desc, disable=self.rank != 0, leave=False, unit="img")


def _encode_indexed(dataset: Dataset, job: _Job, chunk_size: int) -> None:
    """Chunk k holds items [k * chunk_size, (k + 1) * chunk_size) and belongs to rank k mod world."""
    mine = [k for k in range(-(-len(dataset) // chunk_size)) if k % job.world == job.rank]
    todo = [k for k in mine if not (job.folder / f"chunk-{k:06d}").is_dir()]
    bar = job.progress(sum(min(chunk_size, len(dataset) - k * chunk_size) for k in todo))
    for k in todo:
        items = Subset(dataset, range(k * chunk_size, min(len(dataset), (k + 1) * chunk_size)))
        loader = DataLoader(items, job.batch_size, num_workers=job.workers, collate_fn=collate_readable)
        parts: dict[str, list] = {"captions": []}
        consumed = 0
        for part, n in job.encode(loader):
            _append(parts, part)
            consumed += n
            bar.update(n)
        job.write(f"chunk-{k:06d}", parts, consumed)
    bar.close()


def _encode_stream(dataset: WebDatasetShards, job: _Job) -> None:
    """WebDataset shards: chunk ``s<i>`` holds input shard i (of the sorted list) and belongs to rank i mod world.
    Workers read whole shards in turn, so when an item of a worker's next shard arrives its previous one is
    complete and is written; a restart reads only the shards without a chunk."""
    names = {shard: f"chunk-s{i:06d}" for i, shard in enumerate(dataset.shards)}
    todo = [
        shard
        for i, shard in enumerate(dataset.shards)
        if i % job.world == job.rank and not (job.folder / names[shard]).is_dir()
    ]
    if not todo:
        return
    workers = min(job.workers, len(todo))
    owner = {shard: i % max(1, workers) for i, shard in enumerate(todo)}  # how WebDatasetShards divides them
    loader = DataLoader(dataset.with_shards(todo), batch_size=None, num_workers=workers, collate_fn=_as_is)
    parts: dict[str, dict[str, list]] = {shard: {"captions": []} for shard in todo}
    consumed = dict.fromkeys(todo, 0)
    pending: list[dict[str, Any]] = []
    current: dict[int, str] = {}  # worker -> the shard it is reading
    skipped = 0

    def encode_pending() -> None:
        if pending:
            batch = collate_readable(pending)
            shards = batch.pop("shard")
            part, _ = next(job.encode([batch]))
            for row, shard in enumerate(shards):
                _append(parts[shard], {k: v[row : row + 1] for k, v in part.items()})
            pending.clear()

    def write(shard: str) -> None:
        nonlocal skipped
        encode_pending()
        consumed[shard] += skipped  # unreadable items are not traced to a shard: the next one written counts them
        skipped = 0
        job.write(names[shard], parts.pop(shard), consumed[shard])

    bar = job.progress()
    for item in loader:
        bar.update(1)
        if item is None:
            skipped += 1
            continue
        shard = item["shard"]
        consumed[shard] += 1
        previous = current.get(owner[shard])
        if previous is not None and previous != shard:
            write(previous)
        current[owner[shard]] = shard
        pending.append(item)
        if len(pending) >= job.batch_size:
            encode_pending()
    for shard in list(parts):
        write(shard)
    bar.close()


def _as_is(item: Any) -> Any:
    """``collate_fn`` for item-by-item loading (a module-level function, so workers can pickle it)."""
    return item


def _write_index(folder: Path, tokenizer, flip: bool, class_names: list[str] | None) -> None:
    chunks = []
    for chunk in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("chunk-")):
        meta = json.loads((chunk / "meta.json").read_text())
        chunks.append({"name": chunk.name, **meta})
    first = next((folder / c["name"] for c in chunks if c["count"]), None)
    grid = list(np.load(first / "tokens.npy", mmap_mode="r").shape[1:]) if first else []
    has_labels = first is not None and (first / "labels.npy").is_file()
    num_classes = len(class_names) if class_names else None
    if has_labels and num_classes is None:  # labelled shards name no classes: labels run from 0 to the largest
        num_classes = 1 + max(int(np.load(folder / c["name"] / "labels.npy").max()) for c in chunks if c["count"])
    index = {
        "count": sum(c["count"] for c in chunks),
        "skipped": sum(c["consumed"] - c["count"] for c in chunks),
        "grid": grid,
        "codebook_size": tokenizer.codebook_size,
        "flip": flip,
        "has_labels": has_labels,
        "num_classes": num_classes,
        "class_names": class_names,
        "chunks": chunks,
    }
    tmp = folder / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, folder / INDEX)
