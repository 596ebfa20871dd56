"""Next-token generator: a LLaMA-style decoder over a tokenizer's index grid in raster order, class- or
prompt-conditioned.

Conditioning is a **prefix**: the condition becomes the first tokens of the sequence (one class embedding, or the
prompt encoder's per-token states projected to the model width), followed by a start token and the image tokens.
A prefix needs no extra cross-attention layers, the KV cache covers it for free, and every image token can attend
to every prompt word, which is what binding "red" to "circle" and "circle" to "top left" needs. Classifier-free
guidance uses a learned null prefix, swapped in for a random ``cond_dropout`` share of training samples.

Each input slot also gets a learned embedding of the grid position it must predict, so the model always knows
where the next token goes (2D RoPE alone only gives relative offsets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from tqdm.auto import tqdm

from .conditioning import Condition, PrefixConditioning
from .sampling import guidance_at, guide, sample_logits
from .transformer import Transformer


class NextTokenGenerator(PrefixConditioning, ModelMixin, ConfigMixin):
    """Autoregressive model of index grids ``(B, *grid_size)`` in raster order: ``(h, w)`` for images, ``(t, h, w)``
    for videos (frame by frame, each frame in raster order; RoPE then runs over (frame, row, col)).

    ``condition``: "prompt" (condition = prompt states ``(B, prompt_length, prompt_dim)``, or a ``(states, mask)``
    pair from a :class:`~generators.prompt_encoder.PromptEncoder`), "class" (labels ``(B,)`` in
    ``[0, num_classes)``) or "none".
    """

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
    ) -> None:
        super().__init__()
        if len(grid_size) not in (2, 3):
            raise ValueError(f"grid_size must be (h, w) or (t, h, w), got {tuple(grid_size)}")
        self.token_embed = nn.Embedding(codebook_size + 1, dim)  # the extra id is the start token
        self.target_pos = nn.Parameter(torch.randn(math.prod(grid_size), dim) * 0.02)
        self._init_conditioning(condition, dim, num_classes, prompt_dim, prompt_length)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, rope_base)
        self.head = nn.Linear(dim, codebook_size, bias=False)
        axes = [torch.arange(n) for n in grid_size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).flatten(0, -2)
        self.register_buffer("grid_positions", grid, persistent=False)  # (N, len(grid_size))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.config.grid_size)

    # ---- sequence assembly ---------------------------------------------------------------------------------------

    def _positions(self, start: int, count: int) -> torch.Tensor:
        """RoPE coordinates of sequence slots ``[start, start + count)``: the prefix and the start token sit at the
        origin, the slot holding image token k at that token's (row, col)."""
        p = self.prefix_length
        slots = torch.arange(start, start + count, device=self.grid_positions.device)
        token = (slots - p - 1).clamp(min=0)
        return torch.where((slots > p)[:, None], self.grid_positions[token], 0)

    def _token_slots(self, tokens: torch.Tensor, first: int) -> torch.Tensor:
        """Embeddings of the slots that predict tokens ``first, first + 1, ...``: slot j holds token j - 1 (the
        start token for j = 0) plus the embedding of target position j. tokens ``(B, T)`` = the held tokens."""
        x = self.token_embed(tokens)
        return x + self.target_pos[first : first + tokens.shape[1]]

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
        random ``cond_dropout`` share of the samples sees the null condition."""
        self._check_tokens(tokens)
        b = tokens.shape[0]
        flat = tokens.flatten(1)
        null = self._training_null(b, tokens.device)
        start = torch.full((b, 1), self.config.codebook_size, device=tokens.device, dtype=torch.long)
        held = torch.cat([start, flat[:, :-1]], dim=1)
        x = torch.cat([self.prefix(condition, b, null), self._token_slots(held, 0)], dim=1)
        h = self.transformer(x, self._positions(0, x.shape[1]))
        logits = self.head(h[:, self.prefix_length :])
        if return_loss:
            return F.cross_entropy(logits.float().flatten(0, 1), flat.flatten())
        return logits

    def loss(self, tokens: torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """Mean next-token cross-entropy."""
        return self(tokens, condition, return_loss=True)

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
    ) -> torch.Tensor:
        """Samples index grids ``(B, *grid_size)``. ``temperature=0`` is greedy. ``guidance_scale`` != 1 runs the
        conditional and the null prefix side by side (batch 2B) and mixes their logits at every step, with the
        scale constant or ramped over the steps (``guidance_schedule``). ``use_cache=False`` recomputes the whole
        sequence at every step (same tokens, much slower; kept for checking and benchmarking the cache)."""
        batch_size = self._batch_of(condition, batch_size)
        guided = guidance_scale != 1.0 and self.config.condition != "none"
        prefix = self.prefix(condition, batch_size)
        if guided:
            prefix = torch.cat([prefix, self._null_prefix(batch_size).to(prefix.dtype)])
        rows = prefix.shape[0]
        n, p = self.num_tokens, self.prefix_length
        held = torch.full((rows, 1), self.config.codebook_size, device=prefix.device, dtype=torch.long)
        out = torch.empty(batch_size, n, dtype=torch.long, device=prefix.device)
        cache = self.transformer.new_cache(rows, p + n, prefix.device, prefix.dtype) if use_cache else None
        for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
            if use_cache and i > 0:
                x = self._token_slots(held[:, -1:], i)  # only the newest slot; the rest is in the cache
            else:
                x = torch.cat([prefix, self._token_slots(held, 0)], dim=1)
            start = cache.length if use_cache else 0
            h = self.transformer(x, self._positions(start, x.shape[1]), cache=cache)
            logits = self.head(h[:, -1]).float()
            if guided:
                logits = guide(logits, guidance_at(guidance_scale, i, n, guidance_schedule))
            token = sample_logits(logits, temperature, top_k, top_p, generator)
            out[:, i] = token
            held = torch.cat([held, token.repeat(rows // batch_size)[:, None]], dim=1)
        return out.view(batch_size, *self.config.grid_size)
