"""Next-X generator (xAR): autoregression over entities (tokens, k x k cells, subsamples, scales or the whole image)
of the tokenizer's continuous code vectors, each entity's elements sampled by a flow-matching head.

The transformer sees the condition prefix, then one slot per element. A slot's input is its context (computed only
from earlier entities, see :mod:`generators.entities`) plus a learned embedding of the element it must predict and an
embedding of the context's noise level; a block-causal mask lets all slots of one entity be predicted in one pass.
The transformer output at a slot conditions the :class:`~generators.flow_head.FlowHead` that samples the element.

**Noisy context learning**: in training each entity of the context is corrupted to a random noise level, so the
model learns to rely less on exact context and is robust to its own sampling errors (exposure bias); at sampling
the context is clean (level 0).

The model regresses the tokenizer's code vectors (normalised to unit scale), then snaps each sampled vector to its
nearest code, so it trains on the same cached index grids as the next-token generator and its output decodes with
the tokenizer's ``decode(indices)``.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from tqdm.auto import tqdm

from .conditioning import Condition, PrefixConditioning
from .decoding import guided_prefix
from .entities import block_causal_mask, make_entity
from .family import GeneratorFamily
from .flow_head import FlowHead, TimeEmbedding
from .sampling import guidance_at
from .transformer import Transformer


class NextXGenerator(PrefixConditioning, ModelMixin, ConfigMixin):
    """Next-X model of index grids ``(B, h, w)``, predicting continuous code vectors entity by entity.

    ``entity``: "token", "cell" / "subsample" (``k`` x ``k`` elements), "scale" (``scales``, default powers of two
    up to h) or "image". ``condition`` as in :class:`~generators.next_token.NextTokenGenerator`. ``head_width`` /
    ``head_depth`` size the flow head, ``flow_steps`` its default Euler steps, ``flow_repeats`` the noise draws per
    element in training. Call :meth:`set_codebook` with the tokenizer's code vectors before training.
    """

    family = GeneratorFamily(
        kind="next-x",
        default_preset="nx-small",
        # the next-token sizes plus a flow-matching head; entity / k are overrides
        presets={
            "nx-tiny": dict(dim=64, depth=2, heads=4, head_width=64, head_depth=2),
            "nx-small": dict(dim=192, depth=6, heads=6, head_width=256, head_depth=3),
            "nx-base": dict(dim=768, depth=12, heads=12, head_width=1024, head_depth=3),
        },
        sampling_keys=("flow_steps",),
        regresses_codes=True,
        run_defaults={"entity": "cell", "k": 2},
    )

    @register_to_config
    def __init__(
        self,
        codebook_size: int,
        grid_size: tuple[int, int] = (16, 16),
        latent_dim: int = 32,
        entity: str = "cell",
        k: int = 2,
        scales: tuple[int, ...] | None = None,
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
        head_width: int = 256,
        head_depth: int = 3,
        flow_steps: int = 10,
        noisy_context: bool = True,
        flow_repeats: int = 4,
    ) -> None:
        super().__init__()
        if len(grid_size) != 2:
            raise ValueError(f"grid_size must be (h, w), got {tuple(grid_size)}")
        self.entities = make_entity(entity, tuple(grid_size), k, scales)
        self.in_proj = nn.Linear(latent_dim, dim)
        self.target_pos = nn.Parameter(torch.randn(self.entities.length, dim) * 0.02)
        self.level_embed = TimeEmbedding(dim)
        nn.init.zeros_(self.level_embed.embed.linear_2.weight)  # starts as a no-op
        nn.init.zeros_(self.level_embed.embed.linear_2.bias)
        self._init_conditioning(condition, dim, num_classes, prompt_dim, prompt_length)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, rope_base)
        self.head = FlowHead(dim, latent_dim, head_width, head_depth)
        # the tokenizer's code vectors and their normalisation (per-channel mean, one std for all channels, which
        # keeps distances proportional so the nearest code is the same before and after normalising)
        self.register_buffer("codebook", torch.zeros(codebook_size, latent_dim))
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(()))

    @property
    def num_entities(self) -> int:
        return self.entities.num_entities

    def set_codebook(self, codes: torch.Tensor) -> None:
        """Stores the tokenizer's code vectors ``(codebook_size, latent_dim)``, e.g. its quantizer's codes of
        ``arange(codebook_size)``, and their normalisation statistics."""
        if tuple(codes.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codes must have shape {tuple(self.codebook.shape)}, got {tuple(codes.shape)}")
        codes = codes.detach().to(self.codebook)
        mean = codes.mean(0)
        self.codebook.copy_(codes)
        self.latent_mean.copy_(mean)
        self.latent_std.copy_((codes - mean).pow(2).mean().sqrt().clamp_min(1e-6))

    # ---- sequence assembly ---------------------------------------------------------------------------------------

    def _check(self, tokens: torch.Tensor | None = None) -> None:
        if not self.codebook.any():
            raise ValueError("the codebook is empty: call set_codebook(codes) with the tokenizer's code vectors")
        if tokens is not None and tuple(tokens.shape[1:]) != tuple(self.config.grid_size):
            raise ValueError(
                f"expected token grids of shape (B, {', '.join(map(str, self.config.grid_size))}), "
                f"got {tuple(tokens.shape)}"
            )

    def _normalised_codes(self) -> torch.Tensor:
        return (self.codebook - self.latent_mean) / self.latent_std

    def _positions(self) -> torch.Tensor:
        """RoPE coordinates ``(P + L, 2)``: the prefix at the origin, each slot at its element's grid cell."""
        prefix = self.entities.positions.new_zeros(self.prefix_length, 2)
        return torch.cat([prefix, self.entities.positions])

    def _slots(self, seq: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Slot embeddings ``(B, L, dim)`` from entity contents ``(B, L, C)`` (only earlier entities are read) and
        their per-entity noise levels ``(B, E)``."""
        context = self.entities.context_inputs(seq).to(self.in_proj.weight.dtype)
        return self.in_proj(context) + self.target_pos + self.level_embed(self.entities.context_levels(levels))

    # ---- training ------------------------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, condition: Condition = None, return_loss: bool = True) -> torch.Tensor:
        """Flow-matching loss for index grids ``(B, h, w)`` (what training loops call), or without ``return_loss``
        the flow head's per-slot conditions ``(B, L, dim)``. In training mode the context is noised per sample and
        entity (when ``noisy_context``) and a ``cond_dropout`` share of the samples sees the null condition."""
        self._check(tokens)
        b = tokens.shape[0]
        latents = self._normalised_codes()[tokens.long()].permute(0, 3, 1, 2)
        x0 = self.entities.split(latents)
        levels = x0.new_zeros(b, self.num_entities)
        context = x0
        if self.training and self.config.noisy_context:
            levels = torch.rand_like(levels)
            t = levels[:, self.entities.entity_ids, None]
            context = (1 - t) * x0 + t * torch.randn_like(x0)
        x = torch.cat(
            [self.prefix(condition, b, self._training_null(b, tokens.device)), self._slots(context, levels)], 1
        )
        mask = block_causal_mask(self.entities, self.prefix_length)
        z = self.transformer(x, self._positions(), attn_mask=mask)[:, self.prefix_length :]
        if return_loss:
            return self.head.loss(z, x0, repeats=self.config.flow_repeats)
        return z

    def loss(self, tokens: torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """Mean flow-matching loss over all elements."""
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
        flow_steps: int | None = None,
    ) -> torch.Tensor:
        """Samples index grids ``(B, h, w)``: one transformer pass per entity, whose elements the flow head samples
        in ``flow_steps`` Euler steps (default: the config's) from noise scaled by ``temperature``; the finished
        latents are snapped to their nearest code (L2 between the stored code vectors, which for unit-norm cosine
        codebooks ranks like cosine near the codes). ``guidance_scale`` != 1 runs the conditional and the null
        prefix side by side (batch 2B) and guides the head's velocity, constant or ramped over the entities
        (``guidance_schedule``). ``use_cache=False`` recomputes the whole sequence for every entity (same indices).
        ``top_k`` / ``top_p`` exist for parity with the next-token generator and must stay off."""
        if top_k != 0 or top_p != 1.0:
            raise ValueError(
                "top_k / top_p filter a distribution over token ids; next-X samples continuous latents with a "
                "flow head, so they do not apply: use temperature and guidance_scale instead"
            )
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self._check()
        steps = flow_steps or self.config.flow_steps
        prefix = guided_prefix(self, condition, batch_size, guidance_scale)
        rows, p, ents = prefix.embeds.shape[0], self.prefix_length, self.entities
        seq = prefix.embeds.new_zeros(rows, ents.length, self.config.latent_dim)
        levels = prefix.embeds.new_zeros(rows, ents.num_entities)  # the context is clean at sampling
        positions, mask = self._positions(), block_causal_mask(ents, p)
        cache = prefix.new_cache(self.transformer, ents.length) if use_cache else None
        for e in tqdm(range(ents.num_entities), desc="sampling", disable=not progress, leave=False):
            start, end = ents.offsets[e], ents.offsets[e + 1]
            slots = self._slots(seq, levels)
            if use_cache and e > 0:  # only this entity's slots; the rest is in the cache
                x, first = slots[:, start:end], p + start
                attn = torch.ones(end - start, p + end, dtype=torch.bool, device=seq.device)
            else:
                x, first, attn = torch.cat([prefix.embeds, slots[:, :end]], 1), 0, mask[: p + end, : p + end]
            z = self.transformer(x, positions[first : p + end], cache=cache, attn_mask=attn)[:, start - end :]
            z_cond, z_uncond = z.chunk(2) if prefix.guided else (z, None)
            scale = guidance_at(guidance_scale, e, ents.num_entities, guidance_schedule)
            elements = self.head.sample(z_cond, z_uncond, scale, steps, temperature, generator)
            seq[:, start:end] = elements.to(seq.dtype).repeat(prefix.copies, 1, 1)
        latents = ents.merge(seq[: prefix.batch_size]).permute(0, 2, 3, 1).float()
        return torch.cdist(latents.flatten(1, 2), self._normalised_codes().float()).argmin(-1).view(latents.shape[:3])
