"""Token selection: pure, batched tensor functions with no model knowledge.

Every selector takes features ``(B, N, D)`` or scores ``(B, N)``, a budget ``k`` (an int, or a ``(B,)`` tensor of
per-sample budgets) and an optional validity mask ``(B, N)`` (False = padding, never picked). It returns the kept
indices ``(B, K)`` with ``K = max(k)``, ascending (original token order); rows that keep fewer than ``K`` tokens are
padded at the end with ``-1``. Greedy loops stay on tensors (one step per pick, no host sync per pick).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPORTANCE_SOURCES = ("mean", "norm", "reference")


def _valid(mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool, device=device) if mask is None else mask.to(device, torch.bool)


def _budgets(k: int | torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample budgets ``(B,)``, clamped to the number of valid tokens."""
    k = torch.as_tensor(k, device=valid.device, dtype=torch.long).expand(valid.shape[0])
    if (k < 0).any():
        raise ValueError("k must be >= 0")
    return torch.minimum(k, valid.sum(1))


def _finish(picks: torch.Tensor, budgets: torch.Tensor, n: int) -> torch.Tensor:
    """Sort picks ``(B, K)`` into original order; slots beyond each budget become -1 at the end."""
    slot = torch.arange(picks.shape[1], device=picks.device)
    live = slot[None] < budgets[:, None]
    ordered = torch.where(live, picks, n).sort(dim=1).values
    return torch.where(ordered == n, -1, ordered)


def indices_to_mask(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Kept indices ``(B, K)`` (-1 = none) to a boolean keep mask ``(B, n)``."""
    keep = torch.zeros(indices.shape[0], n + 1, dtype=torch.bool, device=indices.device)
    keep.scatter_(1, torch.where(indices < 0, n, indices), True)
    return keep[:, :n]


def importance_scores(
    features: torch.Tensor,
    source: str = "mean",
    mask: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention-free importance of each token, ``(B, N)``.

    - ``"mean"``: cosine similarity to the sample's mean (global) feature over valid tokens.
    - ``"norm"``: L2 norm of the feature.
    - ``"reference"``: cosine similarity to a given vector ``reference`` ``(B, D)``, e.g. a [CLS] feature or the
      prompt's text embedding projected into the same space.
    """
    valid = _valid(mask, features.shape[:2], features.device)
    if source == "norm":
        return features.norm(dim=-1)
    if source == "mean":
        w = valid.unsqueeze(-1).to(features.dtype)
        reference = (features * w).sum(1) / w.sum(1).clamp(min=1)
    elif source == "reference":
        if reference is None:
            raise ValueError('importance source "reference" needs a reference vector of shape (B, D)')
    else:
        raise ValueError(f"unknown importance source {source!r}; accepted: {', '.join(IMPORTANCE_SOURCES)}")
    return F.cosine_similarity(features, reference.unsqueeze(1).to(features.dtype), dim=-1)


def topk_importance(scores: torch.Tensor, k: int | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` highest-scoring valid tokens. scores ``(B, N)`` -> indices ``(B, K)``."""
    valid = _valid(mask, scores.shape, scores.device)
    budgets = _budgets(k, valid)
    kmax = int(budgets.max()) if budgets.numel() else 0
    masked = scores.float().masked_fill(~valid, float("-inf"))
    return _finish(masked.topk(kmax, dim=1).indices, budgets, scores.shape[1])


def random_selection(
    n_tokens: int,
    k: int | torch.Tensor,
    mask: torch.Tensor | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``k`` valid tokens chosen uniformly at random (reproducible with ``generator``). -> ``(B, K)``."""
    if mask is None and batch_size is None:
        raise ValueError("random_selection needs a mask or a batch_size")
    device = mask.device if mask is not None else device
    shape = mask.shape if mask is not None else (batch_size, n_tokens)
    scores = torch.rand(shape, generator=generator, device=device)
    return topk_importance(scores, k, mask)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


def k_center(
    features: torch.Tensor,
    k: int | torch.Tensor,
    mask: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    objective: str = "max_min",
) -> torch.Tensor:
    """Greedy diversity selection seeded by a pivot (ToDRE stage 1). features ``(B, N, D)`` -> ``(B, K)``.

    The pivot is the most important token (``importance`` ``(B, N)``; default: similarity to the mean feature).
    ``objective="max_min"`` (greedy k-center) then adds the token whose highest cosine similarity to the chosen set is
    lowest; ``"max_sum"`` adds the token whose summed cosine similarity to the chosen set is lowest.
    """
    if objective not in ("max_min", "max_sum"):
        raise ValueError(f'unknown k-center objective {objective!r}; accepted: "max_min", "max_sum"')
    valid = _valid(mask, features.shape[:2], features.device)
    if importance is None:
        importance = importance_scores(features, "mean", valid)
    first = importance.float().masked_fill(~valid, float("-inf")).argmax(1)
    combine = torch.maximum if objective == "max_min" else torch.add
    return _farthest_first(_unit(features), first, _budgets(k, valid), valid, combine)


def max_min_diversity(features: torch.Tensor, k: int | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DivPrune-style max–min diversity on cosine distance. features ``(B, N, D)`` -> ``(B, K)``.

    The first pick is the token farthest from its nearest neighbour; each next pick is the token farthest from the
    chosen set (farthest-point sampling).
    """
    valid = _valid(mask, features.shape[:2], features.device)
    unit = _unit(features)
    sim = unit @ unit.transpose(1, 2)
    pair_ok = valid.unsqueeze(1) & valid.unsqueeze(2)
    pair_ok &= ~torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
    nearest = sim.masked_fill(~pair_ok, float("-inf")).max(2).values  # similarity to the nearest neighbour
    first = nearest.masked_fill(~valid, float("inf")).argmin(1)
    return _farthest_first(unit, first, _budgets(k, valid), valid, torch.maximum)


def _farthest_first(
    unit: torch.Tensor, first: torch.Tensor, budgets: torch.Tensor, valid: torch.Tensor, combine
) -> torch.Tensor:
    """Greedy picks minimising a running similarity-to-selected statistic (max or sum, per ``combine``)."""
    b, n, _ = unit.shape
    kmax = int(budgets.max()) if b else 0
    rows = torch.arange(b, device=unit.device)
    picks = torch.zeros(b, max(kmax, 1), dtype=torch.long, device=unit.device)
    taken = ~valid.clone()
    stat = torch.full((b, n), float("-inf") if combine is torch.maximum else 0.0, device=unit.device)
    pick = first
    for step in range(kmax):
        picks[:, step] = pick
        taken[rows, pick] = True
        stat = combine(stat, (unit @ unit[rows, pick].unsqueeze(-1)).squeeze(-1))
        pick = stat.masked_fill(taken, float("inf")).argmin(1)
    return _finish(picks[:, :kmax], budgets, n)


def mmr(
    features: torch.Tensor,
    importance: torch.Tensor,
    k: int | torch.Tensor,
    lam: float = 0.5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximal Marginal Relevance (IDPruner). features ``(B, N, D)``, importance ``(B, N)`` -> ``(B, K)``.

    Importance is min–max normalised per sample to [0, 1]. The first pick is the most important token; each next pick
    maximises ``lam * importance - (1 - lam) * max cosine similarity to the chosen set``. A running max-similarity
    vector keeps the cost at O(K·N·D).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid = _valid(mask, features.shape[:2], features.device)
    budgets = _budgets(k, valid)
    imp = importance.float()
    lo = imp.masked_fill(~valid, float("inf")).min(1, keepdim=True).values
    hi = imp.masked_fill(~valid, float("-inf")).max(1, keepdim=True).values
    imp = (imp - lo) / (hi - lo).clamp(min=1e-12)
    unit = _unit(features)
    b, n, _ = unit.shape
    kmax = int(budgets.max()) if b else 0
    rows = torch.arange(b, device=unit.device)
    picks = torch.zeros(b, max(kmax, 1), dtype=torch.long, device=unit.device)
    taken = ~valid.clone()
    max_sim = torch.zeros(b, n, device=unit.device)  # only read after the first pick
    pick = imp.masked_fill(~valid, float("-inf")).argmax(1)
    for step in range(kmax):
        picks[:, step] = pick
        taken[rows, pick] = True
        sim = (unit @ unit[rows, pick].unsqueeze(-1)).squeeze(-1)
        max_sim = sim if step == 0 else torch.maximum(max_sim, sim)
        gain = lam * imp - (1.0 - lam) * max_sim
        pick = gain.masked_fill(taken, float("-inf")).argmax(1)
    return _finish(picks[:, :kmax], budgets, n)
