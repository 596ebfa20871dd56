"""One factory over `vector-quantize-pytorch` quantizers with a single output form.

Every quantizer here takes channel-last token sequences ``(B, N, D)`` and returns a
:class:`QuantizerOutput`. The nearest-neighbour search, EMA updates, k-means init and
dead-code replacement all live in `vector-quantize-pytorch`; this module only unifies
their call signatures and reports codebook usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize

QUANTIZERS = ("vq", "rvq", "fsq", "lfq")


@dataclass
class QuantizerOutput:
    """quantized: (B, N, D); indices: (B, N) or (B, N, Q) for residual VQ; aux_loss: scalar;
    usage: fraction of codes hit in this batch; perplexity: exp(entropy) of the batch's code histogram."""

    quantized: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor
    usage: torch.Tensor
    perplexity: torch.Tensor


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts per code, (codebook_size,) for (B, N) indices or (Q, codebook_size) for (B, N, Q)."""
    if indices.ndim == 3:
        return torch.stack([code_histogram(indices[..., q], codebook_size) for q in range(indices.shape[-1])])
    return torch.bincount(indices.flatten().long(), minlength=codebook_size).float()


def usage_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of codes used, perplexity) from a histogram; residual levels are averaged."""
    counts = counts.reshape(-1, counts.shape[-1])
    probs = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return (counts > 0).float().mean(-1).mean(), entropy.exp().mean()


class Quantizer(nn.Module):
    """Uniform wrapper: ``forward(z (B, N, D)) -> QuantizerOutput``; ``codes(indices) -> (B, N, D)``."""

    def __init__(self, kind: str, dim: int, codebook_size: int = 1024, **kwargs) -> None:
        super().__init__()
        if kind not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {kind!r}; accepted: {', '.join(QUANTIZERS)}")
        self.kind, self.dim = kind, dim
        if kind == "vq":
            self.codebook_size = codebook_size
            self.impl = VectorQuantize(dim=dim, codebook_size=codebook_size, **_vq_defaults(kwargs))
        elif kind == "rvq":
            self.codebook_size = codebook_size
            kwargs.setdefault("num_quantizers", 2)
            self.impl = ResidualVQ(dim=dim, codebook_size=codebook_size, **_vq_defaults(kwargs))
        elif kind == "fsq":
            levels = list(kwargs.pop("levels", (8, 5, 5, 5)))
            self.codebook_size = math.prod(levels)
            self.impl = FSQ(levels=levels, dim=dim, **kwargs)
        else:  # lfq: codebook_size must be a power of two; the entropy loss keeps codes spread out
            if codebook_size & (codebook_size - 1):
                raise ValueError(f"lfq needs a power-of-two codebook_size, got {codebook_size}")
            self.codebook_size = codebook_size
            kwargs.setdefault("entropy_loss_weight", 0.1)
            kwargs.setdefault("commitment_loss_weight", 0.25)
            self.impl = LFQ(dim=dim, codebook_size=codebook_size, **kwargs)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"quantizer expects (B, N, {self.dim}) tokens, got {tuple(z.shape)}")
        z = z.float()  # codebook distances and EMA statistics are kept in fp32 under autocast
        with torch.autocast(z.device.type, enabled=False):
            if self.kind == "fsq":
                quantized, indices = self.impl(z)
                aux = z.new_zeros(())
            else:
                quantized, indices, aux = self.impl(z)
                aux = aux.sum()
        usage, perplexity = usage_stats(code_histogram(indices.detach(), self.codebook_size))
        return QuantizerOutput(quantized, indices, aux, usage, perplexity)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, N) or (B, N, Q) -> quantized vectors (B, N, D), exactly as `forward` produced them."""
        if self.kind in ("vq", "rvq"):
            return self.impl.get_output_from_indices(indices)
        return self.impl.indices_to_codes(indices)


def _vq_defaults(kwargs: dict) -> dict:
    """Defaults that keep a small codebook alive: cosine codes, EMA, k-means init, dead-code replacement."""
    out = dict(
        use_cosine_sim=True,
        decay=0.99,
        kmeans_init=True,
        kmeans_iters=10,
        threshold_ema_dead_code=2,
        commitment_weight=0.25,
    )
    out.update(kwargs)
    return out


def build_quantizer(kind: str, dim: int, codebook_size: int = 1024, **kwargs) -> Quantizer:
    """Factory: ``kind`` in ``vq | rvq | fsq | lfq``; extra kwargs go to the library class."""
    return Quantizer(kind, dim, codebook_size, **kwargs)
