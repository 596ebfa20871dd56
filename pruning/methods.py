"""Pruning methods as a table: each row says which selection runs before the LLM and which pruning runs inside the
decoder.

A method has up to two stages:

1. before the LLM, on the projected visual embeddings of each sample (``MethodRow.before_llm``);
2. inside the decoder at one layer (``MethodRow.in_decoder``), from that layer's attention recomputed from its Q/K
   projections (``pruning.relevance``), so SDPA/FlashAttention keep working everywhere else. It returns which visual
   tokens stay from that layer on; ``pruning.patch`` removes the others and their KV.

Methods:

- ``todre``: ToDRE as published (arXiv 2505.18757 v2): a pivot with the highest [CLS] attention of the vision encoder,
  then greedy max-sum diversity; at 7/8 of the depth, all visual tokens are dropped where both the text→visual and the
  visual→text attention shares are below τ = 0.10, else all stay.
- ``todre-maxmin``: the project's earlier ToDRE variant: feature-norm pivot, greedy k-center (max–min, paper v1),
  then the top ``relevance_keep`` of the visual tokens by the last token's attention at 7/8 of the depth.
- ``idpruner``: Maximal Marginal Relevance of a training-free importance (or a scorer given as ``importance``).
- baselines ``random``, ``importance`` (top-k importance), ``divprune`` (max–min diversity) and ``fastv`` (at layer K,
  keep the visual tokens most attended by the last token in layer K−1, as the reference does).

Adding a method: write its stage functions below, which call ``pruning.selection`` / ``pruning.relevance`` with the
method's options (a new selection algorithm goes there, free of model knowledge), and add one row to ``TABLE``.

``keep_ratio=1.0`` means "prune nothing": every method is then an exact identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from . import relevance, selection


@dataclass(frozen=True)
class Context:
    """What stage 1 may read besides the features, aligned with them.

    Attributes:
        text: ``(B, D)`` mean input embedding of each sample's prompt tokens, or None.
        cls_attention: ``(B, N)`` [CLS] attention of the vision encoder on the tokens it could be mapped to, -inf
            elsewhere (``pruning.pivot``), or None where the model has no [CLS] token.
    """

    text: Tensor | None = None
    cls_attention: Tensor | None = None


# Stage 1: (method, features (B, N, D), budgets (B,), valid (B, N), context) -> kept indices (B, K)
BeforeLLM = Callable[["PruningMethod", Tensor, Tensor, Tensor, Context], Tensor]
# Stage 2: (method, decoder layer, its input (B, L, D), rotary (cos, sin), real tokens (B, L), visual tokens (B, L))
# -> visual tokens to keep (B, L) bool
InDecoder = Callable[["PruningMethod", nn.Module, Tensor, tuple[Tensor, Tensor], Tensor, Tensor], Tensor]
# A trained or custom importance: (features (B, N, D), valid (B, N)) -> scores (B, N)
Scorer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodRow:
    """One pruning method. Either stage may be None (not run); ``defaults`` are option values this method uses
    instead of ``OPTION_DEFAULTS`` when the caller leaves them unset (None). ``scores_previous_layer``: stage 2 reads
    the attention of the layer before ``layer`` and prunes the input of ``layer`` (FastV). ``uses_pivot``: stage 1
    reads the ``pivot`` option (so ``pivot="cls"`` needs the vision encoder's [CLS] attention)."""

    before_llm: BeforeLLM | None = None
    in_decoder: InDecoder | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)
    scores_previous_layer: bool = False
    uses_pivot: bool = False


# ---- stage 1: select before the LLM ----------------------------------------------------------------------------


def _k_center(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, ctx: Context) -> Tensor:
    return selection.k_center(features, k, valid, m.pivot_scores(features, valid, ctx), m.diversity)


def _mmr(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, ctx: Context) -> Tensor:
    return selection.mmr(features, m.importance_of(features, valid, ctx.text), k, m.mmr_lambda, valid)


def _random(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, ctx: Context) -> Tensor:
    gen = torch.Generator(device=features.device).manual_seed(m.seed)
    return selection.random_selection(features.shape[1], k, valid, generator=gen)


def _top_importance(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, ctx: Context) -> Tensor:
    return selection.topk_importance(m.importance_of(features, valid, ctx.text), k, valid)


def _max_min_diversity(m: PruningMethod, features: Tensor, k: Tensor, valid: Tensor, ctx: Context) -> Tensor:
    return selection.max_min_diversity(features, k, valid)


# ---- stage 2: which visual tokens stay inside the decoder -------------------------------------------------------


def _most_attended(m: PruningMethod, attn: Tensor, visual: Tensor, ratio: float) -> Tensor:
    """The ``ratio`` of each sample's visual tokens most attended by its last token ``attn`` ``(B, L)``; none where
    their attention share is below ``relevance_threshold`` (when set)."""
    kept = m.budget(visual.sum(1), ratio)
    if m.relevance_threshold is not None:
        kept = torch.where((attn * visual).sum(1) < m.relevance_threshold, 0, kept)
    return selection.indices_to_mask(selection.topk_importance(attn, kept, visual), visual.shape[1])


def _relevance_keep(m, layer, hidden, rotary, real, visual) -> Tensor:
    """ToDRE-maxmin: the ``relevance_keep`` of the visual tokens most attended by the last token."""
    attn = relevance.last_token_attention(layer, hidden, rotary, real)
    return _most_attended(m, attn, visual, m.relevance_keep)


def _fastv(m, layer, hidden, rotary, real, visual) -> Tensor:
    """FastV: ``keep_ratio`` of the visual tokens most attended by the last token (nothing was pruned before)."""
    return _most_attended(m, relevance.last_token_attention(layer, hidden, rotary, real), visual, m.keep_ratio)


def _all_or_nothing(m, layer, hidden, rotary, real, visual) -> Tensor:
    """ToDRE v2: drop every visual token of a sample where both its text→visual and visual→text attention shares are
    below τ (``relevance_threshold``), keep them all otherwise."""
    text_to_visual, visual_to_text = relevance.attention_shares(layer, hidden, rotary, real, visual)
    drop = (text_to_visual < m.relevance_threshold) & (visual_to_text < m.relevance_threshold)
    return visual & ~drop.unsqueeze(1)


TABLE: dict[str, MethodRow] = {
    "todre": MethodRow(
        before_llm=_k_center,
        in_decoder=_all_or_nothing,
        defaults={"diversity": "max_sum", "pivot": "cls", "relevance_threshold": 0.10},
        uses_pivot=True,
    ),
    "todre-maxmin": MethodRow(
        before_llm=_k_center,
        in_decoder=_relevance_keep,
        defaults={"diversity": "max_min", "pivot": "norm", "relevance_keep": 0.5},
        uses_pivot=True,
    ),
    "idpruner": MethodRow(before_llm=_mmr),
    "random": MethodRow(before_llm=_random),
    "importance": MethodRow(before_llm=_top_importance),
    "divprune": MethodRow(before_llm=_max_min_diversity),
    "fastv": MethodRow(in_decoder=_fastv, defaults={"layer": 2}, scores_previous_layer=True),
}
METHODS = tuple(TABLE)
IMPORTANCE_OPTIONS = ("mean", "norm", "text")
PIVOT_OPTIONS = ("cls", *IMPORTANCE_OPTIONS)
DIVERSITY_OPTIONS = ("max_min", "max_sum")
# Values of the options a row leaves unset; layer and relevance_threshold stay None (depth-relative layer, no τ).
OPTION_DEFAULTS: dict[str, object] = {
    "importance": "norm",  # training-free; "mean" ranks flat background highest (benchmarks/pruning.md)
    "pivot": "norm",
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
        importance: importance of ``idpruner`` / ``importance``: ``"norm"`` (feature norm, default), ``"mean"`` (cosine
            similarity to the sample's mean visual feature), ``"text"`` (cosine similarity to the mean input
            embedding of the sample's prompt tokens), or a scorer: a callable or ``nn.Module`` mapping features
            ``(B, N, D)`` and the valid mask ``(B, N)`` to scores ``(B, N)`` (e.g. a trained token selector).
        pivot: ToDRE's first pick: ``"cls"`` (highest [CLS] attention in the vision encoder, ``todre`` default; where
            the model has no [CLS] token, the token most similar to the mean feature), or ``"norm"`` (``todre-maxmin``
            default), ``"mean"``, ``"text"`` as for ``importance``.
        mmr_lambda: IDPruner's importance/diversity trade-off λ in [0, 1] (default 0.5).
        diversity: ToDRE stage-1 objective, ``"max_sum"`` (paper v2, ``todre`` default) or ``"max_min"`` (greedy
            k-center, paper v1, ``todre-maxmin`` default).
        layer: decoder layer of the in-decoder stage (ToDRE default: 7/8 of the depth; FastV default: 2).
        relevance_keep: ``todre-maxmin``, fraction of the stage-1 visual tokens kept from ``layer`` on (default 0.5).
        relevance_threshold: τ. ``todre`` (default 0.10): a sample drops all its visual tokens from ``layer`` on when
            both its text→visual and visual→text attention shares are below τ. ``todre-maxmin`` / ``fastv`` (default
            None): a sample drops them all when its last token puts less than τ of its attention on them.
        seed: seed of ``random`` (default 0).
        per_frame: run the selection before the LLM on each video frame on its own, keeping ``keep_ratio`` of every
            frame's tokens; the other visual tokens of a sample (images) keep ``keep_ratio`` together (default False).
    """

    name: str
    keep_ratio: float
    importance: str | Scorer | None = None
    pivot: str | None = None
    mmr_lambda: float | None = None
    diversity: str | None = None
    layer: int | None = None
    relevance_keep: float | None = None
    relevance_threshold: float | None = None
    seed: int | None = None
    per_frame: bool = False

    def __post_init__(self) -> None:
        if self.name not in TABLE:
            raise ValueError(f"unknown pruning method {self.name!r}; accepted: {', '.join(TABLE)}")
        for option, value in {**OPTION_DEFAULTS, **TABLE[self.name].defaults}.items():
            if getattr(self, option) is None:
                object.__setattr__(self, option, value)  # frozen: fill in once, at construction
        if not (isinstance(self.keep_ratio, (int, float)) and 0.0 < self.keep_ratio <= 1.0):
            raise ValueError(f"keep_ratio must be a number in (0, 1] (1.0 = no pruning), got {self.keep_ratio!r}")
        if not callable(self.importance) and self.importance not in IMPORTANCE_OPTIONS:
            raise ValueError(
                f"unknown importance {self.importance!r}; accepted: {', '.join(IMPORTANCE_OPTIONS)}, or a scorer "
                "(callable or nn.Module: features (B, N, D), valid (B, N) -> scores (B, N))"
            )
        if self.pivot not in PIVOT_OPTIONS:
            raise ValueError(f"unknown pivot {self.pivot!r}; accepted: {', '.join(PIVOT_OPTIONS)}")
        if self.diversity not in DIVERSITY_OPTIONS:
            raise ValueError(f"unknown diversity {self.diversity!r}; accepted: {', '.join(DIVERSITY_OPTIONS)}")
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

    @property
    def needs_cls_attention(self) -> bool:
        """Whether stage 1 reads the vision encoder's [CLS] attention."""
        return self.prunes_before_llm and self.row.uses_pivot and self.pivot == "cls"

    def decoder_layer(self, num_layers: int) -> int:
        """The decoder layer from which the in-decoder stage removes tokens, checked against the model's depth."""
        layer = (num_layers * 7) // 8 if self.layer is None else self.layer
        if not 1 <= layer < num_layers:
            raise ValueError(f"layer must be in [1, {num_layers - 1}] for a {num_layers}-layer decoder, got {layer}")
        return layer

    def scoring_layer(self, num_layers: int) -> int:
        """The decoder layer whose attention the in-decoder stage reads (FastV: the one before ``decoder_layer``)."""
        return self.decoder_layer(num_layers) - int(self.row.scores_previous_layer)

    def budget(self, counts: torch.Tensor, ratio: float | None = None) -> torch.Tensor:
        """Tokens to keep per sample ``(B,)`` from visual counts ``(B,)``; at least one where any exist."""
        ratio = self.keep_ratio if ratio is None else ratio
        kept = torch.round(counts.double() * ratio).long()
        return torch.where(counts > 0, kept.clamp(min=1 if ratio > 0 else 0), 0)

    def select_before_llm(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        text: torch.Tensor | None = None,
        cls_attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage 1. features ``(B, N, D)`` visual embeddings (left-aligned, ``valid`` ``(B, N)``), text ``(B, D)``
        mean prompt embedding, cls_attention ``(B, N)`` (see ``Context``) -> kept indices ``(B, K)``."""
        if self.row.before_llm is None:
            raise ValueError(f"method {self.name!r} has no stage before the LLM")
        ctx = Context(text=text, cls_attention=cls_attention)
        return self.row.before_llm(self, features, self.budget(valid.sum(1)), valid, ctx)

    def importance_of(self, features: torch.Tensor, valid: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Importance ``(B, N)`` of features ``(B, N, D)`` from the ``importance`` option; text ``(B, D)`` or None."""
        if callable(self.importance):
            with torch.no_grad():
                scores = self.importance(features, valid)
            if tuple(scores.shape) != tuple(valid.shape):
                raise ValueError(f"the importance scorer returned {tuple(scores.shape)}, expected {tuple(valid.shape)}")
            return scores
        return _training_free(self.importance, features, valid, text)

    def pivot_scores(self, features: torch.Tensor, valid: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Scores ``(B, N)`` whose argmax is ToDRE's pivot, from the ``pivot`` option. ``"cls"`` falls back to the
        similarity to the mean feature in samples without [CLS] attention."""
        if self.pivot != "cls":
            return _training_free(self.pivot, features, valid, ctx.text)
        fallback = selection.importance_scores(features, "mean", valid)
        if ctx.cls_attention is None:
            return fallback
        cls = ctx.cls_attention.to(fallback.dtype)
        found = (cls.isfinite() & valid).any(1, keepdim=True)
        return torch.where(found, cls, fallback)

    def keep_in_decoder(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        real: torch.Tensor,
        visual: torch.Tensor,
    ) -> torch.Tensor:
        """Stage 2 at ``layer`` (input ``hidden`` ``(B, L, D)``, rotary ``(cos, sin)``, real and visual tokens
        ``(B, L)`` bool) -> visual tokens kept from ``decoder_layer`` on ``(B, L)`` bool."""
        if self.row.in_decoder is None:
            raise ValueError(f"method {self.name!r} has no stage inside the decoder")
        return self.row.in_decoder(self, layer, hidden, rotary, real, visual) & visual


def _training_free(source: str, features: Tensor, valid: Tensor, text: Tensor | None) -> Tensor:
    if source == "text":
        return selection.importance_scores(features, "reference", valid, reference=text)
    return selection.importance_scores(features, source, valid)
