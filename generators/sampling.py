"""Token sampling: temperature, top-k and top-p (nucleus) filters, classifier-free guidance and its schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the ``k`` largest logits of each row ``(B, V)`` (ties at the k-th value are kept too); others -> -inf.
    ``k <= 0`` or ``k >= V`` keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keeps the smallest set of most likely tokens whose probability reaches ``p`` (always at least the top one).
    ``p >= 1`` keeps everything."""
    if p >= 1.0:
        return logits
    if p <= 0.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # a token is dropped when the tokens before it already reach p
    drop = probs.cumsum(-1) - probs >= p
    drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``(B, V)`` logits -> ``(B,)``. ``temperature == 0`` is greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def guidance_at(scale: float, step: int, total: int, schedule: str = "constant") -> float:
    """Guidance scale for sampling step ``step`` of ``total``: constant, or ramped up from 1 to ``scale``
    (linear / cosine), so early tokens (layout) are sampled freely and later ones follow the prompt closely."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}; accepted: {', '.join(GUIDANCE_SCHEDULES)}")
    if schedule == "constant" or total <= 1:
        return scale
    t = step / (total - 1)
    ramp = t if schedule == "linear" else 0.5 * (1 - math.cos(math.pi * t))
    return 1.0 + (scale - 1.0) * ramp


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """``(2B, V)`` logits, conditional rows first, unconditional after -> guided ``(B, V)``."""
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class TokenSampler:
    """How one sampling call turns the logits for grid token ``token`` of ``total`` into tokens: guided (rows
    conditional first, null after) with ``guidance_scale`` at that token's point of ``guidance_schedule`` when
    ``guided``, then sampled with temperature / top-k / top-p, or greedy at ``temperature == 0``."""

    total: int
    guided: bool = False
    guidance_scale: float = 1.0
    guidance_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def logits(self, logits: torch.Tensor, token: int) -> torch.Tensor:
        """Logits ``(rows, V)`` -> float ``(B, V)``, guided when guidance is on."""
        logits = logits.float()
        if not self.guided:
            return logits
        return guide(logits, guidance_at(self.guidance_scale, token, self.total, self.guidance_schedule))

    def sample(self, logits: torch.Tensor, token: int) -> torch.Tensor:
        """Logits ``(rows, V)`` -> tokens ``(B,)``."""
        return sample_logits(self.logits(logits, token), self.temperature, self.top_k, self.top_p, self.generator)
