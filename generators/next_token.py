"""Next-token generator: a LLaMA-style decoder over a tokenizer's index grid in raster order, class- or
prompt-conditioned.

Conditioning is a **prefix**: the condition becomes the first tokens of the sequence (one class embedding, or the
prompt encoder's per-token states projected to the model width), followed by a start token and the image tokens.
A prefix needs no extra cross-attention layers, the KV cache covers it for free, and every image token can attend
to every prompt word, which is what binding "red" to "circle" and "circle" to "top left" needs. Classifier-free
guidance uses a learned null prefix, swapped in for a random ``cond_dropout`` share of training samples.

Each input slot also gets a learned embedding of the grid position it must predict, so the model always knows
where the next token goes (2D RoPE alone only gives relative offsets). With ``class_in_slots`` (the ``nt-*``
presets) a class-conditioned model also adds the class embedding (the null class under guidance) to every slot: a
small model then cannot drift into another class's pattern half-way through the grid, as it did when the class was
only the one prefix token its later slots had to keep attending to.

**Layouts** (config ``layout``). ``"start"`` (the default): the sequence above, [prefix, start token, token 0, ...,
token N - 2], with target-position embeddings, the prefix and start token at the RoPE origin (no rotation).
``"llamagen"`` (the ``gpt-*`` presets): LlamaGen's class-conditional GPT exactly, so its checkpoints load
(:mod:`generators.llamagen`): [prefix, token 0, ..., token N - 2], the prefix's last slot predicting token 0, no
start token and no target-position embeddings, and the prefix's rotary angles zero rather than the identity (LlamaGen
pads its rotary table with zeros there), which zeroes the prefix's queries and keys: every slot gives the class token
an attention logit of 0. The ``next_all`` objective needs the target-position embeddings of the ``"start"`` layout.

**Mixture of objectives** (TokenUnify; config ``objectives``, e.g. ``{"next": 0.5, "random": 0.25,
"next_all": 0.25}``, weights normalised; None = next-token only). Every training step (a forward with
``return_loss=True`` in training mode) draws one objective from torch's global CPU RNG, so Accelerate's saved RNG
state makes a resumed run draw the same sequence, and ranks seeded alike (``set_seed``) run the same objective:

- ``next``: next-token cross-entropy; slot i holds token i - 1 (the start token for i = 0) and predicts token i.
- ``random`` (random-token / masked prediction): full bidirectional attention; slot j holds token j, or the mask id
  for a random share r ~ U(0.1, 1) of the slots (drawn per sample, at least one slot), plus target position j; the
  loss covers the masked slots only. The mask id is the start token's id (``codebook_size``): no start token
  appears in this layout, so no new embedding is needed. Shares from 10 % to everything masked span light
  in-filling up to drawing the whole grid from the condition.
- ``next_all`` (next-all-token): the ``next`` layout and causal attention, but each slot's target-position
  embedding is that of a uniformly drawn position k >= i and the slot predicts token k, so the model learns to
  predict any later token from the prefix.

Sampling is always next-token generation; ``random`` and ``next_all`` only shape the representation.

**Given context** (config ``context_tokens`` = C > 0): the first C tokens of every grid are always given at
sampling (``generate(first_tokens=...)``, e.g. a video's first-frame tokens in image-to-video or factorized
text-to-video), so training puts no loss on them: the model still reads them, and all of its capacity goes to the
tokens it will sample. Such a generator refuses to sample without them.

**Multi-token prediction** (config ``num_predict``): ``num_predict - 1`` extra heads on the final hidden states;
head m predicts the token m places after the slot's target (token i + m at slot i in the ``next`` layout; k + m in
``next_all``). Each is a residual SwiGLU block (pre-norm, the decoder's MLP width) followed by its own norm and
projection to the codebook, so the heads share the trunk but not the main head. The loss adds the mean of the
extra heads' cross-entropies (over slots whose token m ahead exists) to the main one; ``random`` steps train no
extra head. ``generate`` uses the heads for **self-verification** (blockwise parallel decoding, run by
:mod:`generators.decoding`): several tokens are proposed and checked per forward, and every emitted token is still
the main head's own choice, so greedy output equals plain decoding and sampled output has the same distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .conditioning import Condition, PrefixConditioning
from .decoding import TokenDecoder, guided_prefix
from .family import GeneratorFamily
from .sampling import TokenSampler
from .transformer import SwiGLU, Transformer

OBJECTIVES = ("next", "random", "next_all")
LAYOUTS = ("start", "llamagen")
MIN_MASK_SHARE = 0.1


class LookaheadHead(nn.Module):
    """Extra multi-token-prediction head: residual SwiGLU block on the final hidden states, then its own
    projection to the codebook."""

    def __init__(self, dim: int, hidden: int, codebook_size: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm, self.out_norm = nn.RMSNorm(dim, eps=norm_eps), nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, hidden)
        self.proj = nn.Linear(dim, codebook_size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.out_norm(h + self.mlp(self.norm(h))))


# LlamaGen's class-conditional GPTs (FoundationVision/LlamaGen, autoregressive/models/gpt.py): 16384 codes, 1000
# ImageNet classes, SwiGLU width int(8 * dim / 3) rounded up to a multiple of 256, RMSNorm eps 1e-5, 2D RoPE base
# 10000; a 16x16 grid is 256 px through a VQ-16 tokenizer (override grid_size=(24, 24) for 384 px, 576 tokens).
_LLAMAGEN_C2I = dict(
    codebook_size=16384,
    grid_size=(16, 16),
    condition="class",
    num_classes=1000,
    mlp_multiple_of=256,
    norm_eps=1e-5,
    rope_base=10000.0,
    layout="llamagen",
)


class NextTokenGenerator(PrefixConditioning, ModelMixin, ConfigMixin):
    """Autoregressive model of index grids ``(B, *grid_size)`` in raster order: ``(h, w)`` for images, ``(t, h, w)``
    for videos (frame by frame, each frame in raster order; RoPE then runs over (frame, row, col)), ``(n,)`` for the
    token sequences of 1D tokenizers (images or clips).

    ``condition``: "prompt" (condition = prompt states ``(B, prompt_length, prompt_dim)``, or a ``(states, mask)``
    pair from a :class:`~generators.prompt_encoder.PromptEncoder`), "class" (labels ``(B,)`` in
    ``[0, num_classes)``) or "none". ``objectives`` and ``num_predict``: see the module docstring.
    ``mlp_multiple_of`` and ``norm_eps``: see :class:`~generators.transformer.Transformer`. ``class_in_slots``:
    add the class embedding to every slot as well (see the module docstring; ignored unless class-conditioned).
    ``layout``: "start" or "llamagen" (see the module docstring).

    Presets ``gpt-b``, ``gpt-l`` and ``gpt-xl`` are LlamaGen's GPT-B (111 M parameters), GPT-L (343 M) and GPT-XL
    (775 M) in its layout; our token table's one extra row (the ``random`` objective's mask id) is all they add.
    """

    family = GeneratorFamily(
        kind="next-token",
        default_preset="nt-small",
        presets={
            "nt-tiny": dict(dim=64, depth=2, heads=4, class_in_slots=True),  # tests and smoke runs
            # the shipped text-to-image model, sized for CPU training
            "nt-small": dict(dim=192, depth=6, heads=6, class_in_slots=True),
            # the shipped text-to-video model over 32 deep tokens per clip, sized so its pipeline stays under 10 MB
            "nt-video": dict(dim=160, depth=6, heads=5, class_in_slots=True),
            "nt-base": dict(dim=768, depth=12, heads=12, class_in_slots=True),  # GPU-sized
            "nt-large": dict(dim=1024, depth=24, heads=16, class_in_slots=True),
            "gpt-b": dict(dim=768, depth=12, heads=12, **_LLAMAGEN_C2I),
            "gpt-l": dict(dim=1024, depth=24, heads=16, **_LLAMAGEN_C2I),
            "gpt-xl": dict(dim=1280, depth=36, heads=20, **_LLAMAGEN_C2I),
        },
        sampling_keys=("num_predict_used",),
        takes_videos=True,
    )

    @register_to_config
    def __init__(
        self,
        codebook_size: int,
        grid_size: tuple[int, int] = (16, 16),
        dim: int = 256,
        depth: int = 6,
        heads: int = 8,
        mlp_ratio: float = 8 / 3,
        condition: str = "prompt",
        num_classes: int = 0,
        prompt_dim: int = 128,
        prompt_length: int = 32,
        cond_dropout: float = 0.1,
        rope_base: float = 100.0,
        objectives: dict[str, float] | None = None,
        num_predict: int = 1,
        mlp_multiple_of: int | None = None,
        norm_eps: float = 1e-6,
        class_in_slots: bool = False,
        layout: str = "start",
        context_tokens: int = 0,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
        if layout != "start" and objectives and "next_all" in objectives:
            raise ValueError("the next_all objective needs the target-position embeddings of layout='start'")
        if len(grid_size) not in (1, 2, 3):
            raise ValueError(f"grid_size must be (n,), (h, w) or (t, h, w), got {tuple(grid_size)}")
        if not 1 <= num_predict <= math.prod(grid_size):
            raise ValueError(f"num_predict must be in [1, {math.prod(grid_size)}] (the grid's size), got {num_predict}")
        self._objective_names, self._objective_weights = self._parse_objectives(objectives)
        if not 0 <= context_tokens < math.prod(grid_size):
            raise ValueError(
                f"context_tokens must be in [0, {math.prod(grid_size)}) (the grid's size): {context_tokens}"
            )
        if context_tokens and "random" in self._objective_names:
            raise ValueError("context_tokens needs the next / next_all objectives (random masks the context too)")
        self.token_embed = nn.Embedding(codebook_size + 1, dim)  # the extra id is the start token (and the mask)
        self.target_pos = nn.Parameter(torch.randn(math.prod(grid_size), dim) * 0.02) if layout == "start" else None
        self._init_conditioning(condition, dim, num_classes, prompt_dim, prompt_length)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, rope_base, mlp_multiple_of, norm_eps)
        self.head = nn.Linear(dim, codebook_size, bias=False)
        hidden = self.transformer.blocks[0].mlp.down.in_features
        self.extra_heads = nn.ModuleList(
            LookaheadHead(dim, hidden, codebook_size, norm_eps) for _ in range(num_predict - 1)
        )
        axes = [torch.arange(n) for n in grid_size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).flatten(0, -2)
        self.register_buffer("grid_positions", grid, persistent=False)  # (N, len(grid_size))

    @staticmethod
    def _parse_objectives(objectives: dict[str, float] | None) -> tuple[list[str], torch.Tensor | None]:
        if objectives is None:
            return ["next"], None
        unknown = sorted(set(objectives) - set(OBJECTIVES))
        if unknown:
            raise ValueError(f"unknown objective(s) {', '.join(unknown)}; accepted: {', '.join(OBJECTIVES)}")
        names = [name for name in OBJECTIVES if name in objectives]  # saved configs sort keys: draws must not care
        weights = torch.tensor([float(objectives[name]) for name in names], dtype=torch.float64)
        if not len(weights) or not weights.isfinite().all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"objective weights must be finite, >= 0 and not all 0, got {objectives}; "
                f"accepted names: {', '.join(OBJECTIVES)}"
            )
        return names, weights / weights.sum()

    @property
    def num_tokens(self) -> int:
        return math.prod(self.config.grid_size)

    def draw_objective(self) -> str:
        """The objective of one training step, drawn from torch's global CPU RNG (what a training forward does)."""
        if self._objective_weights is None:
            return "next"
        return self._objective_names[int(torch.multinomial(self._objective_weights, 1))]

    # ---- sequence assembly ---------------------------------------------------------------------------------------

    @property
    def first_slot(self) -> int:
        """Sequence index of the slot that predicts grid token 0: the start token's, or in the ``llamagen`` layout
        the prefix's last."""
        return self.prefix_length - (self.config.layout == "llamagen")

    def _positions(self, start: int, count: int) -> torch.Tensor:
        """RoPE coordinates of sequence slots ``[start, start + count)``: the prefix and the start token sit at the
        origin, the slot holding image token k at that token's (row, col)."""
        first_token = self.first_slot + 1  # the sequence index of the slot holding token 0
        slots = torch.arange(start, start + count, device=self.grid_positions.device)
        token = (slots - first_token).clamp(min=0)
        return torch.where((slots >= first_token)[:, None], self.grid_positions[token], 0)

    def _rotary(self, positions: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary angles ``(cos, sin)`` of sequence slots ``start, start + 1, ...`` at ``positions`` ``(T, P)``; in the
        ``llamagen`` layout the prefix's are zero (see the module docstring)."""
        cos, sin = self.transformer.rotary(positions)
        if self.config.layout == "llamagen":
            rotated = (torch.arange(start, start + len(positions), device=cos.device) >= self.prefix_length)[:, None]
            cos, sin = cos * rotated, sin * rotated
        return cos, sin

    def slot_condition(self, prefix: torch.Tensor) -> torch.Tensor | None:
        """What every slot adds besides its token and target position: the class embedding ``(B, 1, dim)`` (the
        prefix itself) with ``class_in_slots``, else None. ``prefix`` ``(B, P, dim)``."""
        if self.config.condition == "class" and self.config.class_in_slots:
            return prefix
        return None

    def _token_slots(self, tokens: torch.Tensor, first: int, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of the slots that predict tokens ``first, first + 1, ...``: slot j holds token j - 1 (the
        start token for j = 0) plus the embedding of target position j (plus ``cond``, the slot condition ``(B, 1,
        dim)``, when not None). tokens ``(B, T)`` = the held tokens. In the ``llamagen`` layout slot 0 is the
        prefix's last token: a start token held there (``first == 0``) is dropped, and no target position added."""
        if self.config.layout == "llamagen":
            x = self.token_embed(tokens[:, 1:] if first == 0 else tokens)
        else:
            x = self.token_embed(tokens) + self.target_pos[first : first + tokens.shape[1]]
        return x if cond is None else x + cond

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        grid = tuple(self.config.grid_size)
        if tuple(tokens.shape[1:]) != grid:
            raise ValueError(
                f"expected token grids of shape (B, {', '.join(map(str, grid))}), got {tuple(tokens.shape)}; "
                "residual / multi-code tokenizers are not supported by the next-token generator"
            )

    # ---- training ------------------------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, condition: Condition = None, return_loss: bool = False) -> torch.Tensor:
        """Teacher-forced logits ``(B, N, codebook_size)`` for index grids ``(B, *grid_size)``, or with
        ``return_loss`` the training loss (what training loops call, so DDP sees one forward). In training mode a
        random ``cond_dropout`` share of the samples sees the null condition, and the loss is that of the step's
        drawn objective (next-token outside training), over the tokens after the first ``context_tokens``."""
        self._check_tokens(tokens)
        b, n = tokens.shape[0], self.num_tokens
        flat = tokens.flatten(1)
        null = self._training_null(b, tokens.device)
        objective = self.draw_objective() if return_loss and self.training else "next"
        prefix = self.prefix(condition, b, null)
        if objective == "random":
            return self._random_token_loss(prefix, flat)
        start = torch.full((b, 1), self.config.codebook_size, device=tokens.device, dtype=torch.long)
        held = torch.cat([start, flat[:, :-1]], dim=1)
        cond = self.slot_condition(prefix)
        if objective == "next":
            targets = torch.arange(n, device=tokens.device).expand(b, n)
            slots = self._token_slots(held, 0, cond)
        else:
            targets = self._future_targets(b, tokens.device)
            slots = self.token_embed(held) + self.target_pos[targets]
            slots = slots if cond is None else slots + cond
        x = torch.cat([prefix, slots], dim=1)
        h = self.transformer(x, self._rotary(self._positions(0, x.shape[1])))[:, self.first_slot :]
        if not return_loss:
            return self.head(h)
        h, targets = h[:, self.config.context_tokens :], targets[:, self.config.context_tokens :]
        logits = self.head(h)
        loss = F.cross_entropy(logits.float().flatten(0, 1), flat.gather(1, targets).flatten())
        if len(self.extra_heads):
            loss = loss + self._lookahead_loss(h, flat, targets)
        return loss

    def loss(self, tokens: torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """The training loss: the drawn objective's cross-entropy, plus the extra heads' (see the module docstring)."""
        return self(tokens, condition, return_loss=True)

    def _future_targets(self, batch: int, device: torch.device) -> torch.Tensor:
        """``next_all`` targets ``(B, N)``: slot i predicts a uniformly drawn position k in ``[i, N)``."""
        n = self.num_tokens
        slot = torch.arange(n, device=device)
        ahead = (torch.rand(batch, n, device=device) * (n - slot)).long()
        return (slot + ahead).clamp(max=n - 1)  # float rounding can reach n - slot

    def _lookahead_loss(self, h: torch.Tensor, flat: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over the extra heads of their cross-entropy; head m at a slot predicts the token m places after the
        slot's target, where that token exists."""
        n = flat.shape[1]
        losses = []
        for m, head in enumerate(self.extra_heads, 1):
            ahead = targets + m
            valid = ahead < n
            labels = flat.gather(1, ahead.clamp(max=n - 1))[valid]
            total = F.cross_entropy(head(h[valid]).float(), labels, reduction="sum")
            losses.append(total / valid.sum().clamp(min=1))  # next_all may leave a tiny batch no valid slot
        return torch.stack(losses).mean()

    def _random_token_hidden(self, prefix: torch.Tensor, flat: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Bidirectional hidden states ``(B, N, dim)`` of the ``random`` layout: slot j holds token j, or the mask
        id where ``masked`` (bool ``(B, N)``), plus target position j (``start`` layout)."""
        held = flat.masked_fill(masked, self.config.codebook_size)
        slots = self.token_embed(held)
        slots = slots if self.target_pos is None else slots + self.target_pos
        cond = self.slot_condition(prefix)
        x = torch.cat([prefix, slots if cond is None else slots + cond], dim=1)
        origin = self.grid_positions.new_zeros(self.prefix_length, self.grid_positions.shape[1])
        positions = torch.cat([origin, self.grid_positions])
        full = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device)
        return self.transformer(x, self._rotary(positions), attn_mask=full)[:, self.prefix_length :]

    def _random_token_loss(self, prefix: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        b, n = flat.shape
        share = torch.empty(b, 1, device=flat.device).uniform_(MIN_MASK_SHARE, 1.0)
        rank = torch.rand(b, n, device=flat.device).argsort(1).argsort(1)
        masked = rank < (share * n).ceil()  # exactly ceil(r * N) >= 1 masked slots per sample
        h = self._random_token_hidden(prefix, flat, masked)
        loss = F.cross_entropy(self.head(h[masked]).float(), flat[masked])
        if len(self.extra_heads):  # zero-weight use, so DDP (find_unused_parameters=False) sees every parameter
            loss = loss + 0.0 * sum(p.sum() for p in self.extra_heads.parameters())
        return loss

    # ---- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        condition: Condition = None,
        batch_size: int | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        progress: bool = False,
        num_predict_used: int | None = None,
        return_stats: bool = False,
        first_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """Samples index grids ``(B, *grid_size)``. ``temperature=0`` is greedy. ``guidance_scale`` != 1 runs the
        conditional and the null prefix side by side (batch 2B) and mixes their logits at every step, with the
        scale constant or ramped over the steps (``guidance_schedule``). ``use_cache=False`` recomputes the whole
        sequence at every step (same tokens, much slower; kept for checking and benchmarking the cache).

        ``num_predict_used``: tokens proposed per forward with self-verification (the main head's plus
        ``num_predict_used - 1`` extra heads'; default all of the model's ``num_predict``; 1 = plain next-token
        decoding). ``return_stats`` also returns ``{"forward_passes": transformer forwards run}``.

        ``first_tokens`` ``(B, G)``, G < N: the first G tokens of every grid are given (e.g. a first frame's, for
        image-to-video) and sampling continues after them."""
        block = self.config.num_predict if num_predict_used is None else num_predict_used
        if not 1 <= block <= self.config.num_predict:
            raise ValueError(
                f"num_predict_used must be in [1, {self.config.num_predict}] (this generator's num_predict), "
                f"got {num_predict_used}"
            )
        prefix = guided_prefix(self, condition, batch_size, guidance_scale)
        sampler = TokenSampler(
            self.num_tokens, prefix.guided, guidance_scale, guidance_schedule, temperature, top_k, top_p, generator
        )
        context = self.config.context_tokens
        if context and (first_tokens is None or first_tokens.shape[-1] < context):
            raise ValueError(
                f"this generator learned only the tokens after the first {context} (context_tokens), which must be "
                "given: pass first_tokens (for video: a first_frame, or a pipeline with a first_frame_pipeline)"
            )
        if first_tokens is not None:
            g = first_tokens.shape[-1]
            if first_tokens.shape != (prefix.batch_size, g) or not 0 < g < self.num_tokens:
                raise ValueError(
                    f"first_tokens must be (B={prefix.batch_size}, G) with 0 < G < {self.num_tokens}, "
                    f"got {tuple(first_tokens.shape)}"
                )
            if first_tokens.min() < 0 or first_tokens.max() >= self.config.codebook_size:
                raise ValueError(f"first_tokens must be indices in [0, {self.config.codebook_size})")
        decoder = TokenDecoder(self, prefix, sampler, block, use_cache, first_tokens)
        tokens = decoder.decode(progress).reshape(prefix.batch_size, *self.config.grid_size)
        return (tokens, {"forward_passes": decoder.forward_passes}) if return_stats else tokens
