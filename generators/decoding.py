"""Decoding apart from the models (as LlamaGen keeps ``generate.py`` beside ``gpt.py``): the guided condition prefix
both generators sample from, and next-token decoding with a KV cache and multi-token self-verification.

**Guidance.** With ``guidance_scale`` != 1 (and a conditioned model) the conditional and the learned null prefix run
side by side: rows ``[0, B)`` hold the conditional prefix, rows ``[B, 2B)`` the null one, and one KV cache serves
both.

**Next-token decoding.** A *prefill* runs the prefix and every slot so far in one forward from the sequence's start:
the first forward with a cache, and every forward without one (a whole recompute, kept for checking the cache). A
*decode step* runs only the new slots after the cached ones.

**Self-verification** (blockwise parallel decoding, Stern et al. 2018) with a generator's extra multi-token heads:
the main head's token and the extra heads' argmax proposals for the tokens after it are fed in one forward, the main
head's choices on that block are drawn (guided, filtered, sampled or greedy exactly as in plain decoding), proposals
are accepted up to the first one that differs from the main head's choice, that choice is accepted too, and the KV
cache is rolled back to the accepted length; the extra heads on the last accepted slot give the next proposals.
Every emitted token is thus the main head's own choice given the emitted prefix: greedy output equals
one-token-at-a-time decoding, and sampled output has the same distribution (a proposal is accepted only when it
equals the sample drawn at its position; the random stream differs, so seeded samples differ). A batch advances by
the shortest accepted block of its rows, which keeps one cache for all rows.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .conditioning import Condition, PrefixConditioning
from .sampling import TokenSampler
from .transformer import KVCache, Transformer, thin_input_layout

if TYPE_CHECKING:
    from .next_token import NextTokenGenerator

# the most rows (batch x 2 with guidance) a decode step may have for thin_input_layout to pay (measured up to 16 rows
# on a 2-core CPU; benchmarks/sampler.md)
THIN_ROWS = 16


@dataclass(frozen=True)
class GuidedPrefix:
    """The condition prefix of one sampling call: ``embeds`` ``(copies * B, P, dim)``, the conditional rows first,
    then the null rows when ``guided``."""

    embeds: torch.Tensor
    batch_size: int
    guided: bool

    @property
    def copies(self) -> int:
        """Rows per sample: 2 with guidance, else 1."""
        return self.embeds.shape[0] // self.batch_size

    @property
    def length(self) -> int:
        """The prefix length P."""
        return self.embeds.shape[1]

    def new_cache(self, transformer: Transformer, slots: int) -> KVCache:
        """An empty KV cache for every row's prefix and ``slots`` more slots."""
        rows = self.embeds.shape[0]
        return transformer.new_cache(rows, self.length + slots, self.embeds.device, self.embeds.dtype)


def guided_prefix(
    model: PrefixConditioning, condition: Condition, batch_size: int | None, guidance_scale: float
) -> GuidedPrefix:
    """The model's prefix ``(B, P, dim)`` for ``condition``, followed by its null prefix (``(2B, P, dim)`` in all)
    when guidance is on: ``guidance_scale`` != 1 and a conditioned model. ``batch_size`` defaults to the
    condition's."""
    batch_size = model._batch_of(condition, batch_size)
    guided = guidance_scale != 1.0 and model.config.condition != "none"
    prefix = model.prefix(condition, batch_size)
    if guided:
        prefix = torch.cat([prefix, model._null_prefix(batch_size).to(prefix.dtype)])
    return GuidedPrefix(prefix, batch_size, guided)


class TokenDecoder:
    """Next-token decoding of one batch with a :class:`~generators.next_token.NextTokenGenerator`: its guided
    prefix, its sampler, ``num_predict`` tokens proposed per forward (1 = plain next-token decoding) and a KV cache
    (None without ``use_cache``). ``forward_passes`` counts the transformer forwards run."""

    def __init__(
        self,
        model: NextTokenGenerator,
        prefix: GuidedPrefix,
        sampler: TokenSampler,
        num_predict: int = 1,
        use_cache: bool = True,
        first_tokens: torch.Tensor | None = None,
    ) -> None:
        self.model, self.prefix, self.sampler, self.num_predict = model, prefix, sampler, num_predict
        self.first_tokens = first_tokens  # (B, G): the grids' first tokens, given rather than sampled
        self.cache = prefix.new_cache(model.transformer, model.num_tokens) if use_cache else None
        self.forward_passes = 0
        # every slot's rotary angles, computed once: each forward slices them
        self.cos, self.sin = model._rotary(model._positions(0, model.first_slot + model.num_tokens))

    def _rotary(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[start : start + count], self.sin[start : start + count]

    def decode(self, progress: bool = False) -> torch.Tensor:
        """Samples the flat token grids ``(B, N)``."""
        n = self.model.num_tokens
        # seq[:, j] is what slot j holds: the start token, then the accepted tokens
        seq = self.prefix.embeds.new_full(
            (self.prefix.batch_size, 1), self.model.config.codebook_size, dtype=torch.long
        )
        if self.first_tokens is not None:
            seq = torch.cat([seq, self.first_tokens.to(seq.device)], dim=1)
        proposals = seq[:, :0]  # for the tokens right after the accepted ones
        # decode steps of a few rows run their matmuls faster on input-major weights (CPU; see thin_input_layout)
        rows = self.prefix.embeds.shape[0]
        thin = self.cache is not None and rows <= THIN_ROWS and self.prefix.embeds.device.type == "cpu"
        with (
            thin_input_layout(self.model) if thin else nullcontext(),
            tqdm(total=n, initial=seq.shape[1] - 1, desc="sampling", disable=not progress, leave=False) as bar,
        ):
            while (i := seq.shape[1] - 1) < n:
                # slot i holds the last accepted token, slots i + 1 ... the proposals; a proposal for the grid's last
                # token has no slot to be fed into and is only checked
                fed = min(proposals.shape[1], n - 1 - i)
                h = self.forward(torch.cat([seq, proposals[:, :fed]], dim=1), i)
                accepted = self.verify(h, i, proposals)
                seq = torch.cat([seq, accepted], dim=1)
                if self.cache is not None:
                    self.cache.length = self.model.first_slot + seq.shape[1] - 1  # drops the rejected proposals' slots
                bar.update(accepted.shape[1])
                proposals = self.propose(h[:, accepted.shape[1] - 1], seq.shape[1] - 1)
        return seq[:, 1:]

    def forward(self, held: torch.Tensor, first: int) -> torch.Tensor:
        """Hidden states ``(rows, T - first, dim)`` of slots ``first ... T - 1``, where ``held`` ``(B, T)`` is what
        slots ``0 ... T - 1`` hold: a decode step when slots ``0 ... first - 1`` are cached, else a prefill (the
        first forward, which with given first tokens already ends past slot 0)."""
        held = held.repeat(self.prefix.copies, 1)
        self.forward_passes += 1
        if self.cache is not None and self.cache.length > 0:
            return self.decode_step(held[:, first:], first)
        return self.prefill(held)[:, first - held.shape[1] :]

    def prefill(self, held: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(rows, first_slot + T, dim)`` of the prefix and the slots holding ``held`` ``(rows, T)``
        (``first_slot``: the model's, P or P - 1 by layout), run from the sequence's start; fills the cache, which
        must be empty."""
        slots = self.model._token_slots(held, 0, self.model.slot_condition(self.prefix.embeds))
        x = torch.cat([self.prefix.embeds, slots], dim=1)
        return self.model.transformer(x, self._rotary(0, x.shape[1]), cache=self.cache)

    def decode_step(self, held: torch.Tensor, first: int) -> torch.Tensor:
        """Hidden states ``(rows, T, dim)`` of slots ``first ... first + T - 1`` holding ``held`` ``(rows, T)``,
        attending to the prefix and slots cached before them; appends them to the cache."""
        x = self.model._token_slots(held, first, self.model.slot_condition(self.prefix.embeds))
        return self.model.transformer(x, self._rotary(self.cache.length, x.shape[1]), cache=self.cache)

    def verify(self, h: torch.Tensor, first: int, proposals: torch.Tensor) -> torch.Tensor:
        """The tokens ``(B, A)`` accepted from one forward, 1 <= A <= F + 1: ``h`` ``(rows, F + 1, dim)`` are the
        hidden states of the slots predicting tokens ``first ... first + F``, ``proposals`` ``(B, M)`` (M <= F + 1)
        the guesses for tokens ``first, first + 1, ...``. The main head draws its token at every slot, in order;
        its tokens are kept up to and including the first that differs from its proposal in any row."""
        if not proposals.shape[1]:  # plain decoding: the first choice is accepted, with no host sync
            return self.sampler.sample(self.model.head(h[:, 0]), first)[:, None]
        choices = torch.stack(
            [self.sampler.sample(self.model.head(h[:, j]), first + j) for j in range(h.shape[1])], dim=1
        )
        agree = (choices[:, : proposals.shape[1]] == proposals).all(0)
        return choices[:, : min(int(agree.cumprod(0).sum()) + 1, h.shape[1])]

    def propose(self, last: torch.Tensor, first: int) -> torch.Tensor:
        """The extra heads' guesses ``(B, M)`` for tokens ``first, first + 1, ...`` from the hidden states
        ``(rows, dim)`` of the last accepted slot: the argmax of their logits, guided like the main head's;
        M = ``num_predict - 1``, fewer near the grid's end."""
        heads = self.model.extra_heads[: min(self.num_predict - 1, self.model.num_tokens - first)]
        if not len(heads):
            return torch.empty(self.prefix.batch_size, 0, dtype=torch.long, device=last.device)
        return torch.stack([self.sampler.logits(head(last), first + m).argmax(-1) for m, head in enumerate(heads)], 1)
