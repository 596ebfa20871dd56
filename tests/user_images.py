"""Image folders the project never draws, for the generator-data tests: four pattern classes in class sub-folders,
and captioned stripe / gradient images whose captions follow a grammar unlike the scene captions."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# class name -> foreground colour; every class also has its own pattern on a dark background
CLASSES = {
    "blue_rings": (60, 80, 230),
    "green_checks": (50, 200, 70),
    "red_stripes": (220, 50, 50),
    "yellow_waves": (230, 210, 50),
}
BACKGROUND = 25
STRIPE_COLOURS = {"orange": (240, 140, 20), "teal": (20, 160, 150), "purple": (130, 40, 170), "white": (240, 240, 240)}


def draw_class(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase, freq = rng.uniform(0, 6.3), rng.uniform(12, 20)
    mask = {
        "red_stripes": np.sin(yy * freq + phase) > 0,
        "green_checks": ((xx * 4).astype(int) + (yy * 4).astype(int)) % 2 == 0,
        "blue_rings": np.sin(np.hypot(xx - 0.5, yy - 0.5) * freq + phase) > 0,
        "yellow_waves": np.sin(xx * freq + phase + 3 * np.sin(yy * 6)) > 0,
    }[name]
    return np.where(mask[..., None], np.array(CLASSES[name]), BACKGROUND).astype(np.uint8)


def make_class_folder(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw_class(name, size, rng)).save(root / name / f"{i:03d}.png")
    return root


def make_captioned_folder(root: Path, count: int, size: int, metadata: str = "jsonl", seed: int = 0) -> Path:
    """Stripes ("vertical stripes of orange and teal") and gradients ("a gradient from purple to white"),
    captioned in ``metadata.jsonl`` / ``metadata.csv`` or ``.txt`` sidecars (``metadata="txt"``)."""
    rng = np.random.default_rng(seed)
    names = list(STRIPE_COLOURS)
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a, b = rng.choice(len(names), 2, replace=False)
        ca, cb = np.array(STRIPE_COLOURS[names[a]]), np.array(STRIPE_COLOURS[names[b]])
        yy, xx = np.mgrid[0:size, 0:size] / size
        if i % 2 == 0:
            vertical = rng.random() < 0.5
            mask = np.sin((xx if vertical else yy) * 20) > 0
            image = np.where(mask[..., None], ca, cb)
            caption = f"{'vertical' if vertical else 'horizontal'} stripes of {names[a]} and {names[b]}"
        else:
            image = ca * (1 - xx[..., None]) + cb * xx[..., None]
            caption = f"a gradient from {names[a]} to {names[b]}"
        file_name = f"images/{i:04d}.png"
        Image.fromarray(image.astype(np.uint8)).save(root / file_name)
        if metadata == "txt":
            (root / file_name).with_suffix(".txt").write_text(caption)
        rows.append({"file_name": file_name, "text": caption})
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif metadata == "csv":
        lines = ["file_name,caption"] + [f"{r['file_name']},{r['text']}" for r in rows]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def classify_by_colour(pixels, class_names: list[str]):
    """Pixel statistic: each bright pixel (any channel > 0.4) votes for the nearest class colour; the image goes to
    the class with most votes. ``pixels`` (B, 3, H, W) in [0, 1] -> (B,) class ids."""
    import torch

    colours = torch.tensor([CLASSES[n] for n in class_names]).float() / 255
    flat = pixels.flatten(2).transpose(1, 2)
    nearest = (flat[:, :, None] - colours[None, None]).norm(dim=-1).argmin(-1)
    bright = flat.max(-1).values > 0.4
    votes = torch.stack([((nearest == c) & bright).sum(1) for c in range(len(class_names))], 1)
    return votes.argmax(1)


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A WebDataset-style .tar holding ``members`` (name, bytes) in the given order."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
