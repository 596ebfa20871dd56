"""Reconstruction and codebook metrics over a held-out set, for every tokenizer family."""

from __future__ import annotations

import math
import time

import torch

from ..quantizers import QuantizerOutput, code_histogram, usage_stats
from ..registry import family_of


def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    """``decode(encode(x))`` for any project tokenizer (the dual tokenizer's encode returns two index grids; a
    1D video tokenizer's K tokens say nothing of the clip's length, so it is told: images are one-frame clips; an
    anchored one decodes given the clip's own first frame)."""
    codes = model.encode(x)
    if isinstance(codes, tuple):
        return model.decode(*codes)
    if family_of(type(model)).decodes_any_length:
        anchor = {"anchor": x[:, 0] if x.ndim == 5 else x} if getattr(model.config, "anchor_frame", False) else {}
        return model.decode(codes, frames=x.shape[1] if x.ndim == 5 else 1, **anchor)
    return model.decode(codes)


def codebook_sizes(model) -> tuple[int, ...]:
    """Sizes of the model's codebooks, in the order its ``quantize`` returns their outputs."""
    return tuple(model.codebook_sizes) if hasattr(model, "codebook_sizes") else (model.codebook_size,)


def code_streams(model, x: torch.Tensor) -> list[QuantizerOutput]:
    """The quantizer outputs (indices (B, N) or (B, N, Q)) of every codebook of ``model`` for ``x``."""
    return [o for o in model.quantize(x) if isinstance(o, QuantizerOutput)]


@torch.no_grad()
def reconstruction_psnr(model, images: torch.Tensor, batch_size: int = 128) -> float:
    """PSNR (dB, images mapped to [0, 1]) of ``decode(encode(images))`` over images (N, 3, H, W) or videos
    (N, T, 3, H, W) in [-1, 1]; video tokenizers read images as one-frame clips."""
    # imported here, not at the top: torchmetrics is slow to import and the sampling scripts never need it
    from torchmetrics.image import PeakSignalNoiseRatio

    model.eval()
    device = next(model.parameters()).device
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        recon = reconstruct(model, x).clamp(-1, 1)
        psnr.update((recon.reshape(x.shape) + 1) / 2, (x + 1) / 2)
    return float(psnr.compute())


@torch.no_grad()
def evaluate_tokenizer(model, images: torch.Tensor, batch_size: int = 128) -> dict:
    """PSNR / SSIM (images mapped to [0, 1]), codebook usage and perplexity of ``model`` on held-out ``images``
    (N, 3, H, W) or videos (N, T, 3, H, W) in [-1, 1]; video metrics are over all frames. With several codebooks
    (dual tokenizer) usage and perplexity are their means and ``codebook_usage_each`` lists them."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure  # as above: slow import

    model.eval()
    device = next(model.parameters()).device
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(device)  # evaluation is local to one rank
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False).to(device)
    sizes = codebook_sizes(model)
    counts: list[torch.Tensor | None] = [None] * len(sizes)
    if images.ndim == 5:  # keep the number of frames per batch about the same as for images
        batch_size = max(1, batch_size // images.shape[1])
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        recon = reconstruct(model, x).clamp(-1, 1)
        frames, target = recon.reshape(-1, *recon.shape[-3:]), x.reshape(-1, *x.shape[-3:])
        psnr.update((frames + 1) / 2, (target + 1) / 2)
        ssim.update((frames + 1) / 2, (target + 1) / 2)
        for k, (out, size) in enumerate(zip(code_streams(model, x), sizes, strict=True)):
            hist = code_histogram(out.indices, size)
            counts[k] = hist if counts[k] is None else counts[k] + hist
    stats = [usage_stats(c) for c in counts]
    metrics = {
        "psnr": float(psnr.compute()),
        "ssim": float(ssim.compute()),
        "codebook_usage": float(sum(u for u, _ in stats) / len(stats)),
        "perplexity": float(sum(p for _, p in stats) / len(stats)),
    }
    if len(stats) > 1:
        metrics["codebook_usage_each"] = [float(u) for u, _ in stats]
    return metrics


@torch.no_grad()
def items_per_second(model, x: torch.Tensor, repeats: int = 3) -> float:
    """Encode + decode throughput (fp32, no grad) in items of ``x`` per second, best of ``repeats``."""
    model.eval()
    reconstruct(model, x[:2])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reconstruct(model, x)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


@torch.no_grad()
def token_budget(model, image: torch.Tensor) -> tuple[int, float]:
    """(tokens per image, bits per image) from the index shapes of one image."""
    codes = model.encode(image[None])
    codes = codes if isinstance(codes, tuple) else (codes,)
    tokens = [c[0].numel() for c in codes]
    return sum(tokens), sum(n * math.log2(size) for n, size in zip(tokens, codebook_sizes(model), strict=True))
