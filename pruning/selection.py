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


# Above this many entries per batch (fp32: 1 GiB) the greedy loops never compute the whole similarity matrix, so that
# very long visual sequences (video) still fit in memory.
MATRIX_LIMIT = 1 << 28
# Features of at least this many entries per batch (fp32: 4 MiB) do not stay in cache: a matrix-vector product per pick
# is then memory-bound, and one matmul is cheaper even when few tokens are picked.
CACHED_FEATURES = 1 << 20


def _use_matrix(b: int, n: int, d: int, picks: int) -> bool:
    """Whether greedy selection computes the whole ``(B, N, N)`` similarity matrix once (``B·N²·D`` multiply-adds in
    one matmul) rather than one row per pick (``picks·B·N·D`` in ``picks`` memory-bound matrix-vector products)."""
    if b * n * n > MATRIX_LIMIT:
        return False
    return picks * 8 >= n or b * n * d >= CACHED_FEATURES


class _Similarity:
    """Rows of the cosine-similarity matrix of unit features ``(B, N, D)``: gathered from the whole matrix, computed
    once, or computed one per pick (``_use_matrix``); both give the same values."""

    def __init__(self, unit: torch.Tensor, picks: int, matrix: torch.Tensor | None = None) -> None:
        b, n, d = unit.shape
        if matrix is None and _use_matrix(b, n, d, picks):
            matrix = unit @ unit.transpose(1, 2)
        self.unit, self.matrix = unit, matrix
        self.offset = torch.arange(b, device=unit.device) * n  # flat row of each sample's token 0

    def row(self, pick: torch.Tensor) -> torch.Tensor:
        """Similarity of every token to each sample's ``pick`` ``(B,)`` -> ``(B, N)``."""
        flat = self.offset + pick
        if self.matrix is not None:
            return self.matrix.flatten(0, 1).index_select(0, flat)
        chosen = self.unit.flatten(0, 1).index_select(0, flat)  # (B, D)
        return (self.unit @ chosen.unsqueeze(-1)).squeeze(-1)


def k_center(
    features: torch.Tensor,
    k: int | torch.Tensor,
    mask: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    objective: str = "max_min",
) -> torch.Tensor:
    """Greedy diversity selection seeded by a pivot (ToDRE stage 1). features ``(B, N, D)`` -> ``(B, K)``.

    The pivot is the most important token (``importance`` ``(B, N)``; default: similarity to the mean feature).
    ``objective="max_min"`` (greedy k-center, ToDRE v1) then adds the token whose highest cosine similarity to the
    chosen set is lowest; ``"max_sum"`` (ToDRE v2) adds the token whose summed cosine similarity to the chosen set is
    lowest (a running sum, so each pick costs O(N)).
    """
    if objective not in ("max_min", "max_sum"):
        raise ValueError(f'unknown k-center objective {objective!r}; accepted: "max_min", "max_sum"')
    valid = _valid(mask, features.shape[:2], features.device)
    if importance is None:
        importance = importance_scores(features, "mean", valid)
    first = importance.float().masked_fill(~valid, float("-inf")).argmax(1)
    budgets = _budgets(k, valid)
    sim = _Similarity(_unit(features), _most(budgets))
    return _farthest_first(sim, first, budgets, valid, objective == "max_min")


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
    budgets = _budgets(k, valid)
    return _farthest_first(_Similarity(unit, _most(budgets), sim), first, budgets, valid, True)


def _farthest_first(
    sim: _Similarity, first: torch.Tensor, budgets: torch.Tensor, valid: torch.Tensor, max_min: bool
) -> torch.Tensor:
    """Greedy picks minimising the running max (``max_min``) or sum of the similarity to the chosen set."""
    b, n = valid.shape
    kmax = _most(budgets)
    inf = torch.tensor(float("inf"), device=valid.device)
    # +inf marks tokens that may not be picked (padding, already chosen); it survives max and sum, so no mask per pick
    stat = torch.where(valid, float("-inf") if max_min else 0.0, inf)
    picks, pick = [], first
    for _ in range(kmax):
        picks.append(pick)
        row = sim.row(pick)
        if max_min:
            torch.maximum(stat, row, out=stat)
        else:
            stat.add_(row)
        stat.scatter_(1, pick.unsqueeze(1), inf.expand(b, 1))
        pick = stat.argmin(1)
    return _finish(_stack(picks, b, valid.device), budgets, n)


def _most(budgets: torch.Tensor) -> int:
    return int(budgets.max()) if budgets.numel() else 0


def _stack(picks: list[torch.Tensor], b: int, device: torch.device) -> torch.Tensor:
    return torch.stack(picks, 1) if picks else torch.zeros(b, 0, dtype=torch.long, device=device)


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
    vector keeps each pick at O(N) once the similarity matrix is computed.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid = _valid(mask, features.shape[:2], features.device)
    budgets = _budgets(k, valid)
    imp = importance.float()
    lo = imp.masked_fill(~valid, float("inf")).min(1, keepdim=True).values
    hi = imp.masked_fill(~valid, float("-inf")).max(1, keepdim=True).values
    imp = (imp - lo) / (hi - lo).clamp(min=1e-12)
    b, n = valid.shape
    kmax = _most(budgets)
    sim = _Similarity(_unit(features), kmax)
    minus_inf = torch.tensor(float("-inf"), device=valid.device)
    # the importance term once; -inf marks tokens that may not be picked (padding, already chosen)
    relevance = (lam * imp).masked_fill(~valid, float("-inf"))
    max_sim = torch.full((b, n), float("-inf"), device=valid.device)
    gain = torch.empty_like(max_sim)
    picks, pick = [], imp.masked_fill(~valid, float("-inf")).argmax(1)
    for _ in range(kmax):
        picks.append(pick)
        torch.maximum(max_sim, sim.row(pick), out=max_sim)
        relevance.scatter_(1, pick.unsqueeze(1), minus_inf.expand(b, 1))
        torch.mul(max_sim, 1.0 - lam, out=gain)
        torch.sub(relevance, gain, out=gain)
        pick = gain.argmax(1)
    return _finish(_stack(picks, b, valid.device), budgets, n)
