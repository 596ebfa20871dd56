"""Pruning methods: which selection runs before the LLM, and which relevance pruning runs inside the decoder.

A method has up to two stages:

1. before the LLM, on the projected visual embeddings of each sample (``select_before_llm``);
2. inside the decoder at one layer, from the relevance of each visual token to the prompt's last token, computed
   from that layer's Q/K projections (``pruning.relevance``), so SDPA/FlashAttention keep working everywhere else.

Methods: ``todre`` (k-center, then relevance at ``layer``), ``idpruner`` (MMR), and the baselines ``random``,
``importance`` (top-k importance), ``divprune`` (max–min diversity) and ``fastv`` (relevance at ``layer`` only). The
published FastV reads layer K's attention map, which forces eager attention; here that one row of attention is
recomputed from Q/K, so FastV (like ToDRE) runs with SDPA or eager attention alike.

``keep_ratio=1.0`` means "prune nothing": every method is then an exact identity.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from . import selection

METHODS = ("todre", "idpruner", "random", "importance", "divprune", "fastv")
IMPORTANCE_OPTIONS = ("mean", "norm", "text")


@dataclass(frozen=True)
class PruningMethod:
    """Configuration of one pruning method.

    Args:
        name: one of ``METHODS``.
        keep_ratio: fraction of each sample's visual tokens kept at the LLM input (FastV: from ``layer`` on), in (0, 1].
        importance: importance source for ``idpruner``/``importance`` and ToDRE's pivot: ``"norm"`` (feature norm,
            default), ``"mean"`` (cosine similarity to the sample's mean visual feature) or ``"text"`` (cosine
            similarity to the mean input embedding of the sample's prompt tokens).
        mmr_lambda: IDPruner's importance/diversity trade-off λ in [0, 1].
        diversity: ToDRE stage-1 objective, ``"max_min"`` (greedy k-center, paper v1) or ``"max_sum"`` (paper v2).
        layer: decoder layer of the relevance stage (ToDRE default: 7/8 of the depth; FastV default: 2).
        relevance_keep: ToDRE, fraction of the stage-1 visual tokens kept from ``layer`` on.
        relevance_threshold: ToDRE τ; when given, a sample whose last token puts less than τ of its attention on the
            visual tokens at ``layer`` drops all of them from that layer on (the paper's rule, with τ = 0.10).
        seed: seed of ``random``.
    """

    name: str
    keep_ratio: float
    importance: str = "norm"  # "mean" ranks flat background highest (benchmarks/pruning.md)
    mmr_lambda: float = 0.5
    diversity: str = "max_min"
    layer: int | None = None
    relevance_keep: float = 0.5
    relevance_threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown pruning method {self.name!r}; accepted: {', '.join(METHODS)}")
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
    def active(self) -> bool:
        return self.keep_ratio < 1.0

    @property
    def prunes_before_llm(self) -> bool:
        return self.active and self.name != "fastv"

    @property
    def prunes_in_decoder(self) -> bool:
        return self.active and self.name in ("todre", "fastv")

    def decoder_layer(self, num_layers: int) -> int:
        """The decoder layer from which the relevance stage removes tokens, checked against the model's depth."""
        layer = self.layer
        if layer is None:
            layer = 2 if self.name == "fastv" else (num_layers * 7) // 8
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
        k = self.budget(valid.sum(1))
        if self.name == "random":
            gen = torch.Generator(device=features.device).manual_seed(self.seed)
            return selection.random_selection(features.shape[1], k, valid, generator=gen)
        if self.name == "divprune":
            return selection.max_min_diversity(features, k, valid)
        importance = self.importance_of(features, valid, text)
        if self.name == "importance":
            return selection.topk_importance(importance, k, valid)
        if self.name == "idpruner":
            return selection.mmr(features, importance, k, self.mmr_lambda, valid)
        return selection.k_center(features, k, valid, importance, self.diversity)

    def importance_of(self, features: torch.Tensor, valid: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        if self.importance == "text":
            return selection.importance_scores(features, "reference", valid, reference=text)
        return selection.importance_scores(features, self.importance, valid)

    def decoder_budget(self, visual_counts: torch.Tensor, visual_share: torch.Tensor) -> torch.Tensor:
        """Stage 2. Visual tokens to keep per sample ``(B,)`` given the visual tokens present at the layer ``(B,)``
        and the share of the last token's attention that falls on them ``(B,)``."""
        if self.name == "fastv":
            return self.budget(visual_counts)
        kept = self.budget(visual_counts, self.relevance_keep)
        if self.relevance_threshold is not None:
            kept = torch.where(visual_share < self.relevance_threshold, 0, kept)
        return kept
