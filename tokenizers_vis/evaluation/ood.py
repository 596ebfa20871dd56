"""Out-of-distribution reconstruction: images no tokenizer run ever trains on.

Two sets: flat-shape scenes from a renderer of their own (:class:`~tokenizers_vis.data.FlatShapes`, parameters the
scene renderer cannot draw) and patches of the photographs of the held-out photo split (other photographs than the
training split's). Both are deterministic in ``seed``, so numbers are comparable across runs and tokenizers.
"""

from __future__ import annotations

import torch

from ..data import FlatShapes, PhotoPatches
from .reconstruction import reconstruction_psnr

OOD_SETS: tuple[str, ...] = ("ood_scenes", "ood_photos")


def ood_images(count: int = 256, resolution: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"ood_scenes": (count, 3, R, R), "ood_photos": (count, 3, R, R)}`` float32 in [-1, 1]."""
    datasets = {
        "ood_scenes": FlatShapes(count, resolution, seed),
        "ood_photos": PhotoPatches(count, resolution, "heldout", seed),
    }
    return {name: torch.stack([ds[i]["image"] for i in range(count)]) for name, ds in datasets.items()}


def evaluate_ood(model, sets: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{"psnr_<set>": dB}`` of ``model`` (any tokenizer family; videos see one-frame clips) on each set."""
    return {f"psnr_{name}": reconstruction_psnr(model, images) for name, images in sets.items()}
