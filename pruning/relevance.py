"""Attention of one decoder layer, recomputed from that layer's Q/K for the in-decoder pruning stages.

The KV cache is not touched and the model never has to output attention maps, so the model itself keeps running with
SDPA or FlashAttention. ``last_token_attention`` computes one query row per sample (O(L·D)); ``attention_shares``
needs every query, so it computes the causal map one head at a time (``B·L²`` memory at once).
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _project(attn: nn.Module, x: torch.Tensor, proj: str) -> torch.Tensor:
    """``q_proj`` / ``k_proj`` of ``x`` ``(..., D)`` split into heads ``(..., H, hd)``, with the per-head RMSNorm of
    decoders that have one (Qwen3: ``q_norm`` / ``k_norm``)."""
    out = getattr(attn, f"{proj}_proj")(x).unflatten(-1, (-1, attn.head_dim))
    norm = getattr(attn, f"{proj}_norm", None)
    return out if norm is None else norm(out)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


@torch.no_grad()  # a pruning decision, never trained through
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
    b, n, _ = hidden_states.shape
    rows = torch.arange(b, device=hidden_states.device)
    # the last real token: padding may sit on either side
    last = n - 1 - mask.flip(1).int().argmax(1)
    normed = layer.input_layernorm(hidden_states)
    q = _project(attn, normed[rows, last], "q")  # (B, H, hd)
    k = _project(attn, normed, "k")  # (B, L, Hkv, hd)
    cos, sin = (t.expand(b, -1, -1) for t in position_embeddings)
    q = _rope(q, cos[rows, last].unsqueeze(1), sin[rows, last].unsqueeze(1))
    k = _rope(k, cos.unsqueeze(2), sin.unsqueeze(2))
    k = k.repeat_interleave(q.shape[1] // k.shape[2], dim=2)  # grouped-query attention
    scores = torch.einsum("bhd,blhd->bhl", q.float(), k.float()) * attn.scaling
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return scores.softmax(-1).mean(1)


@torch.no_grad()  # a pruning decision, never trained through
def attention_shares(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    visual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToDRE's two attention shares at the input of ``layer`` (causal attention, averaged over heads).

    - text→visual: the share of their attention that text queries put on visual tokens, averaged over the text
      tokens that follow the sample's first visual token (earlier ones cannot see any);
    - visual→text: the share of their attention that visual queries put on text tokens, averaged over visual tokens.

    Args as ``last_token_attention``, plus ``visual`` ``(B, L)`` bool. Returns two ``(B,)`` tensors; a sample without
    visual tokens (or without text after them) gets 1.0 for the share it lacks, so it is never judged irrelevant.
    """
    attn = layer.self_attn
    b, n, _ = hidden_states.shape
    normed = layer.input_layernorm(hidden_states)
    cos, sin = (t.expand(b, -1, -1).unsqueeze(2) for t in position_embeddings)
    q = _rope(_project(attn, normed, "q"), cos, sin).float()  # (B, L, H, hd)
    k = _rope(_project(attn, normed, "k"), cos, sin).float()  # (B, L, Hkv, hd)
    groups = q.shape[2] // k.shape[2]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    # causal over real keys; the diagonal keeps padding query rows finite (they are not counted)
    allowed = (torch.ones(n, n, dtype=torch.bool, device=mask.device).tril() & mask.unsqueeze(1)) | eye
    visual = visual & mask
    text = mask & ~visual
    targets = torch.stack([visual, text], -1).float()  # (B, L, 2)
    shares = torch.zeros(b, n, 2, device=hidden_states.device)
    for h in range(q.shape[2]):
        scores = torch.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h // groups]) * attn.scaling
        shares += scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ targets
    shares /= q.shape[2]
    after_image = text & (visual.cumsum(1) > 0)
    ones = torch.ones(b, device=hidden_states.device)
    count_t, count_v = after_image.sum(1), visual.sum(1)
    text_to_visual = (shares[..., 0] * after_image).sum(1) / count_t.clamp(min=1)
    visual_to_text = (shares[..., 1] * visual).sum(1) / count_v.clamp(min=1)
    return torch.where(count_t > 0, text_to_visual, ones), torch.where(count_v > 0, visual_to_text, ones)
