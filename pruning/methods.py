"""Pruning methods as a table: each row says which selection runs before the LLM and which relevance pruning runs
inside the decoder.

A method has up to two stages:

1. before the LLM, on the projected visual embeddings of each sample (``MethodRow.before_llm``);
2. inside the decoder at one layer, from the relevance of each visual token to the prompt's last token, computed
   from that layer's Q/K projections (``pruning.relevance``), so SDPA/FlashAttention keep working everywhere else.
   The row's ``in_decoder`` only sets how many visual tokens stay; ``pruning.patch`` keeps the most relevant ones.

Methods: ``todre`` (k-center, then relevance at ``layer``), ``idpruner`` (MMR), and the baselines ``random``,
``importance`` (top-k importance), ``divprune`` (max–min diversity) and ``fastv`` (relevance at ``layer`` only). The
published FastV reads layer K's attention map, which forces eager attention; here that one row of attention is
recomputed from Q/K, so FastV (like ToDRE) runs with SDPA or eager attention alike.

Adding a method: write its stage-1 function below, which calls a selector of ``pruning.selection`` with the method's
options (a new selection algorithm goes there, free of model knowledge), and add one row to ``TABLE``.

``keep_ratio=1.0`` means "prune nothing": every method is then an exact identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from . import selection

# Stage 1: (method, features (B, N, D), budgets (B,), valid (B, N), text (B, D) or None) -> kept indices (B, K)
BeforeLLM = Callable[["PruningMethod", Tensor, Tensor, Tensor, Tensor | None], Tensor]
# Stage 2: (method, visual tokens present at the layer (B,), their share of the last token's attention (B,))
# -> visual tokens to keep (B,)
InDecoder = Callable[["PruningMethod", Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodRow:
    """One pruning method. Either stage may be None (not run); ``defaults`` are option values this method uses
    instead of ``OPTION_DEFAULTS`` when the caller leaves them unset (None)."""

    before_llm: BeforeLLM | None = None
    in_decoder: InDecoder | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)


# ---- stage 1: select before the LLM ----------------------------------------------------------------------------


def _k_center(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    return selection.k_center(features, k, valid, m.importance_of(features, valid, text), m.diversity)


def _mmr(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    return selection.mmr(features, m.importance_of(features, valid, text), k, m.mmr_lambda, valid)


def _random(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    gen = torch.Generator(device=features.device).manual_seed(m.seed)
    return selection.random_selection(features.shape[1], k, valid, generator=gen)


def _top_importance(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    return selection.topk_importance(m.importance_of(features, valid, text), k, valid)


def _max_min_diversity(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    return selection.max_min_diversity(features, k, valid)


# ---- stage 2: how many visual tokens the relevance pruning keeps inside the decoder ---------------------------


def _relevance_keep(m: PruningMethod, visual_counts: Tensor, visual_share: Tensor) -> Tensor:
    """ToDRE: ``relevance_keep`` of the tokens present, none where the share is below τ."""
    kept = m.budget(visual_counts, m.relevance_keep)
    if m.relevance_threshold is not None:
        kept = torch.where(visual_share < m.relevance_threshold, 0, kept)
    return kept


def _keep_ratio(m: PruningMethod, visual_counts: Tensor, visual_share: Tensor) -> Tensor:
    """FastV: ``keep_ratio`` of the tokens present (nothing was pruned before the LLM)."""
    return m.budget(visual_counts)


TABLE: dict[str, MethodRow] = {
    "todre": MethodRow(before_llm=_k_center, in_decoder=_relevance_keep),
    "idpruner": MethodRow(before_llm=_mmr),
    "random": MethodRow(before_llm=_random),
    "importance": MethodRow(before_llm=_top_importance),
    "divprune": MethodRow(before_llm=_max_min_diversity),
    "fastv": MethodRow(in_decoder=_keep_ratio, defaults={"layer": 2}),
}
METHODS = tuple(TABLE)
IMPORTANCE_OPTIONS = ("mean", "norm", "text")
# Values of the options a row leaves unset; layer and relevance_threshold stay None (depth-relative layer, no τ).
OPTION_DEFAULTS: dict[str, object] = {
    "importance": "norm",  # "mean" ranks flat background highest (benchmarks/pruning.md)
    "mmr_lambda": 0.5,
    "diversity": "max_min",
    "relevance_keep": 0.5,
    "seed": 0,
}


@dataclass(frozen=True)
class PruningMethod:
    """Configuration of one pruning method. Options left at None take the method's row default, then
    ``OPTION_DEFAULTS``.

    Args:
        name: one of ``METHODS`` (a key of ``TABLE``).
        keep_ratio: fraction of each sample's visual tokens kept at the LLM input (FastV: from ``layer`` on), in (0, 1].
        importance: importance source for ``idpruner``/``importance`` and ToDRE's pivot: ``"norm"`` (feature norm,
            default), ``"mean"`` (cosine similarity to the sample's mean visual feature) or ``"text"`` (cosine
            similarity to the mean input embedding of the sample's prompt tokens).
        mmr_lambda: IDPruner's importance/diversity trade-off λ in [0, 1] (default 0.5).
        diversity: ToDRE stage-1 objective, ``"max_min"`` (greedy k-center, paper v1, default) or ``"max_sum"``
            (paper v2).
        layer: decoder layer of the relevance stage (ToDRE default: 7/8 of the depth; FastV default: 2).
        relevance_keep: ToDRE, fraction of the stage-1 visual tokens kept from ``layer`` on (default 0.5).
        relevance_threshold: ToDRE τ; when given, a sample whose last token puts less than τ of its attention on the
            visual tokens at ``layer`` drops all of them from that layer on (the paper's rule, with τ = 0.10).
        seed: seed of ``random`` (default 0).
    """

    name: str
    keep_ratio: float
    importance: str | None = None
    mmr_lambda: float | None = None
    diversity: str | None = None
    layer: int | None = None
    relevance_keep: float | None = None
    relevance_threshold: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TABLE:
            raise ValueError(f"unknown pruning method {self.name!r}; accepted: {', '.join(TABLE)}")
        for option, value in {**OPTION_DEFAULTS, **TABLE[self.name].defaults}.items():
            if getattr(self, option) is None:
                object.__setattr__(self, option, value)  # frozen: fill in once, at construction
        if not (isinstance(self.keep_ratio, (int, float)) and 0.0 < self.keep_ratio <= 1.0):
            raise ValueError(f"keep_ratio must be a number in (0, 1] (1.0 = no pruning), got {self.keep_ratio!r}")
        if self.importance not in IMPORTANCE_OPTIONS:
            raise ValueError(f"unknown importance {self.importance!r}; accepted: {', '.join(IMPORTANCE_OPTIONS)}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if not 0.0 <= self.relevance_keep <= 1.0:
            raise ValueError(f"relevance_keep must be in [0, 1], got {self.relevance_keep}")

    @classmethod
    def create(cls, name: str, keep_ratio: float, **kwargs) -> PruningMethod:
        """Like the constructor, but unknown options are refused with the list of accepted ones."""
        accepted = sorted(f.name for f in fields(cls) if f.name not in ("name", "keep_ratio"))
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {name!r}; accepted: {', '.join(accepted)}")
        return cls(name=name, keep_ratio=keep_ratio, **kwargs)

    @property
    def row(self) -> MethodRow:
        return TABLE[self.name]

    @property
    def active(self) -> bool:
        return self.keep_ratio < 1.0

    @property
    def prunes_before_llm(self) -> bool:
        return self.active and self.row.before_llm is not None

    @property
    def prunes_in_decoder(self) -> bool:
        return self.active and self.row.in_decoder is not None

    def decoder_layer(self, num_layers: int) -> int:
        """The decoder layer from which the relevance stage removes tokens, checked against the model's depth."""
        layer = (num_layers * 7) // 8 if self.layer is None else self.layer
        if not 1 <= layer < num_layers:
            raise ValueError(f"layer must be in [1, {num_layers - 1}] for a {num_layers}-layer decoder, got {layer}")
        return layer

    def budget(self, counts: torch.Tensor, ratio: float | None = None) -> torch.Tensor:
        """Tokens to keep per sample ``(B,)`` from visual counts ``(B,)``; at least one where any exist."""
        ratio = self.keep_ratio if ratio is None else ratio
        kept = torch.round(counts.double() * ratio).long()
        return torch.where(counts > 0, kept.clamp(min=1 if ratio > 0 else 0), 0)

    def select_before_llm(
        self, features: torch.Tensor, valid: torch.Tensor, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stage 1. features ``(B, N, D)`` visual embeddings (left-aligned, ``valid`` ``(B, N)``), text ``(B, D)``
        mean prompt embedding -> kept indices ``(B, K)`` (see ``pruning.selection``)."""
        if self.row.before_llm is None:
            raise ValueError(f"method {self.name!r} has no stage before the LLM")
        return self.row.before_llm(self, features, self.budget(valid.sum(1)), valid, text)

    def importance_of(self, features: torch.Tensor, valid: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Importance ``(B, N)`` of features ``(B, N, D)`` from the ``importance`` option; text ``(B, D)`` or None."""
        if self.importance == "text":
            return selection.importance_scores(features, "reference", valid, reference=text)
        return selection.importance_scores(features, self.importance, valid)

    def decoder_budget(self, visual_counts: torch.Tensor, visual_share: torch.Tensor) -> torch.Tensor:
        """Stage 2. Visual tokens to keep per sample ``(B,)`` given the visual tokens present at the layer ``(B,)``
        and the share of the last token's attention that falls on them ``(B,)``."""
        if self.row.in_decoder is None:
            raise ValueError(f"method {self.name!r} has no stage inside the decoder")
        return self.row.in_decoder(self, visual_counts, visual_share)
