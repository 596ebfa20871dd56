"""The one LLaMA-style decoder every generator uses: RMSNorm, SwiGLU, rotary embeddings over N-D positions, SDPA
attention, and a preallocated KV cache.

Positions are integer coordinates ``(T, P)``: P = 1 for a flat sequence, 2 for a (row, col) token grid, 3 for
(frame, row, col). The rotary pairs of each head are split evenly between the P axes, so attention sees relative
offsets along every axis. Condition-prefix tokens sit at the origin (no rotation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions ``(T, P)`` -> ``(cos, sin)``, each ``(T, head_dim // 2)``; ``head_dim // (2P)`` pairs per axis."""
    num_axes = positions.shape[-1]
    pairs = head_dim // (2 * num_axes)
    if pairs == 0:
        raise ValueError(f"head_dim {head_dim} is too small for {num_axes}-D rotary positions")
    freqs = base ** (-torch.arange(pairs, dtype=torch.float32, device=positions.device) / pairs)
    angles = torch.cat([positions[:, a, None].float() * freqs for a in range(num_axes)], dim=-1)
    # leftover pairs (head_dim not divisible by 2P) stay unrotated
    angles = F.pad(angles, (0, head_dim // 2 - angles.shape[-1]))
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``(B, H, T, Dh)`` rotated pairwise (interleaved pairs) by angles ``(T, Dh / 2)``."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


@contextmanager
def thin_input_layout(module: nn.Module, parts: int | None = None) -> Iterator[None]:
    """Within the block, every bias-free ``nn.Linear`` of ``module`` multiplies by a copy of its weight stored
    input-major and cut into ``parts`` column blocks ``(parts, in, out / parts)`` (default: one per intra-op
    thread), in one batched matmul. On a few rows (a decode step's) MKL streams a contiguous (in, out) matrix faster
    than the usual (out, in) layout, and splits a thin matmul across threads poorly by itself; the batched matmul
    gives each thread a contiguous block of its own (benchmarks/sampler.md). Every output is the same dot product
    over the same weights. Costs one copy of those weights while the block runs; the parameters are not touched."""
    parts = parts or torch.get_num_threads()
    patched = [m for m in module.modules() if isinstance(m, nn.Linear) and m.bias is None]
    with torch.no_grad():
        for m in patched:
            p = parts if m.out_features % parts == 0 else 1
            blocks = m.weight.reshape(p, m.out_features // p, m.in_features).transpose(1, 2).contiguous()
            m.forward = partial(_blocked_linear, blocks)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _blocked_linear(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for ``x`` ``(..., in)``, ``W`` given as input-major column blocks ``(parts, in, out / parts)``."""
    rows = x.reshape(-1, x.shape[-1])
    if len(blocks) == 1:
        y = rows @ blocks[0]
    else:
        y = torch.bmm(rows.expand(len(blocks), -1, -1), blocks).transpose(0, 1).reshape(len(rows), -1)
    return y.view(*x.shape[:-1], -1)


class KVCache:
    """Keys and values of every layer, ``(B, H, max_len, Dh)`` each, filled left to right.

    ``length`` counts the tokens already cached; the transformer advances it once per forward pass.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, device, dtype) -> None:
        shape = (num_layers, batch, heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores ``(B, H, T, Dh)`` keys/values after the cached ones and returns all of them so far."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[3]:
            raise ValueError(f"KV cache holds {self.keys.shape[3]} tokens; asked for {end}")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, attn_mask: torch.Tensor | None):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        new = q.shape[2]
        if attn_mask is None and new > 1 and past > 0:  # a chunk after cached tokens: causal within the chunk
            attn_mask = torch.ones(new, past + new, dtype=torch.bool, device=x.device).tril(past)
        causal = attn_mask is None and new > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return self.out(y.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def mlp_hidden_size(dim: int, mlp_ratio: float = 8 / 3, multiple_of: int | None = None) -> int:
    """SwiGLU hidden width: ``mlp_ratio * dim`` rounded to the nearest multiple of 32 (``multiple_of`` None), or
    LLaMA's rule, truncated to an integer then rounded up to a multiple of ``multiple_of`` (LlamaGen's GPTs: 256)."""
    if multiple_of is None:
        return 32 * round(mlp_ratio * dim / 32)
    return multiple_of * math.ceil(int(mlp_ratio * dim) / multiple_of)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps), nn.RMSNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x, cos, sin, cache, layer, attn_mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, attn_mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Pre-norm decoder over embeddings ``(B, T, dim)`` -> normalised hidden states ``(B, T, dim)``.

    Causal by default; ``attn_mask`` (bool ``(T, T_total)``, True = attend) overrides that, e.g. for block-causal
    entity sequences. With ``cache`` the new tokens attend to the cached ones and are appended to the cache.
    ``mlp_multiple_of``: the SwiGLU width's rounding (:func:`mlp_hidden_size`); ``norm_eps``: the RMSNorms' epsilon.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 8 / 3,
        rope_base: float = 10000.0,
        mlp_multiple_of: int | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.heads, self.rope_base = dim, depth, heads, rope_base
        hidden = mlp_hidden_size(dim, mlp_ratio, mlp_multiple_of)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, norm_eps) for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.apply(self._init)
        for block in self.blocks:  # residual outputs scaled down with depth (GPT-2 style)
            nn.init.normal_(block.attn.out.weight, std=0.02 / (2 * depth) ** 0.5)
            nn.init.normal_(block.mlp.down.weight, std=0.02 / (2 * depth) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def new_cache(self, batch: int, max_len: int, device, dtype=torch.float32) -> KVCache:
        return KVCache(self.depth, batch, self.heads, max_len, self.head_dim, device, dtype)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer coordinates ``(T, P)`` -> the rotary angles ``(cos, sin)`` that :meth:`forward` takes."""
        return rope_angles(positions, self.head_dim, self.rope_base)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``(B, T, dim)``; positions: ``(T, P)`` integer coordinates of these T tokens, or their rotary angles
        ``(cos, sin)`` (:meth:`rotary`, possibly edited or computed once for many calls)."""
        cos, sin = positions if isinstance(positions, tuple) else self.rotary(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, attn_mask)
        if cache is not None:
            cache.length += x.shape[1]
        return self.norm(x)
