"""Reconstruction and codebook metrics over a held-out set."""

from __future__ import annotations

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from .quantizers import code_histogram, usage_stats


@torch.no_grad()
def evaluate_tokenizer(model, images: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """PSNR / SSIM (images mapped to [0, 1]), codebook usage and perplexity of ``model`` on
    held-out ``images`` (N, 3, H, W) in [-1, 1]. ``model`` is any project tokenizer."""
    model.eval()
    device = next(model.parameters()).device
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(device)  # evaluation is local to one rank
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False).to(device)
    counts = None
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        indices = model.encode(x)
        recon = model.decode(indices).clamp(-1, 1)
        psnr.update((recon + 1) / 2, (x + 1) / 2)
        ssim.update((recon + 1) / 2, (x + 1) / 2)
        flat = indices.reshape(indices.shape[0], -1, *indices.shape[3:])
        hist = code_histogram(flat, model.codebook_size)
        counts = hist if counts is None else counts + hist
    usage, perplexity = usage_stats(counts)
    return {
        "psnr": float(psnr.compute()),
        "ssim": float(ssim.compute()),
        "codebook_usage": float(usage),
        "perplexity": float(perplexity),
    }
