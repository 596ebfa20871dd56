"""Relevance of each token to the prompt's last token at one decoder layer, recomputed from that layer's Q/K.

Only the last query row is computed (O(L·D) instead of O(L²)), the KV cache is not touched, and the model never has
to output attention maps, so the model itself keeps running with SDPA or FlashAttention.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def last_token_attention(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged attention of each sample's last real token over all tokens, at the input of ``layer``.

    Args:
        layer: a Llama/Qwen2-style decoder layer (``input_layernorm``, ``self_attn.{q,k}_proj``).
        hidden_states: ``(B, L, D)`` input of the layer.
        position_embeddings: RoPE ``(cos, sin)``, each ``(B or 1, L, head_dim)`` (M-RoPE already interleaved).
        mask: ``(B, L)`` bool, False for padding.

    Returns:
        ``(B, L)`` attention probabilities (rows sum to 1 over real tokens).
    """
    attn = layer.self_attn
    head_dim = attn.head_dim
    b, n, _ = hidden_states.shape
    rows = torch.arange(b, device=hidden_states.device)
    # the last real token: padding may sit on either side
    last = n - 1 - mask.flip(1).int().argmax(1)
    normed = layer.input_layernorm(hidden_states)
    q = attn.q_proj(normed[rows, last]).view(b, -1, head_dim)  # (B, H, hd)
    k = attn.k_proj(normed).view(b, n, -1, head_dim)  # (B, L, Hkv, hd)
    cos, sin = (t.expand(b, -1, -1) for t in position_embeddings)
    q = q * cos[rows, last].unsqueeze(1) + _rotate_half(q) * sin[rows, last].unsqueeze(1)
    k = k * cos.unsqueeze(2) + _rotate_half(k) * sin.unsqueeze(2)
    k = k.repeat_interleave(q.shape[1] // k.shape[2], dim=2)  # grouped-query attention
    scores = torch.einsum("bhd,blhd->bhl", q.float(), k.float()) * attn.scaling
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return scores.softmax(-1).mean(1)
