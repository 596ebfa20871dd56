"""The vision encoder's [CLS] attention over its patches, for ToDRE's pivot, recomputed from one layer's Q/K.

Models whose vision tower is a CLIP encoder with a [CLS] token and whose projector output is copied verbatim into the
decoder's input (LLaVA, LLaVA-NeXT, LLaVA-OneVision) qualify. Hooks on that one model instance record, per image the
vision tower encodes, the [CLS] query's head-averaged attention at the last encoder layer the projector reads
(``vision_feature_layer``: LLaVA-1.5's -2 makes it the penultimate layer, the layer VisionZip and FasterVLM read too),
and the projector's output. With AnyRes (several crops per image), only each image's global thumbnail is used. The
crops are found in the decoder's visual embeddings by their projected features, so no family's token layout (tiles,
unpadding, newline tokens) has to be rebuilt here. The model keeps its attention implementation: only the [CLS]
query row is computed.

Models without a [CLS] token (Qwen-VL, SigLIP towers, …) get no scores; ``PruningMethod.pivot_scores`` then falls back
to the token most similar to the mean feature.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()  # a pruning decision, never trained through
def cls_attention_row(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the [CLS] token (position 0) over all tokens at the input of a CLIP encoder
    ``layer`` (``layer_norm1``, ``self_attn.{q,k}_proj``, no mask). hidden_states ``(R, T, D)`` -> ``(R, T)``."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_states)
    q = attn.q_proj(x[:, 0]).unflatten(-1, (-1, attn.head_dim))  # (R, H, hd)
    k = attn.k_proj(x).unflatten(-1, (-1, attn.head_dim))  # (R, T, H, hd)
    return (torch.einsum("rhd,rthd->rht", q.float(), k.float()) * attn.scale).softmax(-1).mean(1)


def _encoder_layers(tower: nn.Module) -> nn.ModuleList:
    # CLIPVisionModel holds its encoder directly in recent releases, inside ``vision_model`` in older ones
    return getattr(tower, "vision_model", tower).encoder.layers


class ClsAttention:
    """Hooks recording [CLS] attention and projected patches of the images the vision tower encodes (inside the
    model's forward, or before it: ``generate()`` encodes images up front, once, even when it re-runs the whole prompt
    at every step without a cache); ``scores`` maps them onto visual embeddings. The records of one prompt's images
    are kept until the vision tower runs again after they were read. Build with ``attach``; ``hooks`` are the handles
    to remove."""

    def __init__(self, outer: nn.Module, layer_index: int) -> None:
        self.full = getattr(outer.config, "vision_feature_select_strategy", "default") == "full"
        self._pending: torch.Tensor | None = None  # (R, T) of the running vision forward, T = [CLS] + patches
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []  # (attention (R, T), projector output (R, P, D))
        self._read = False  # the records were read: the next vision forward starts new ones
        layer = _encoder_layers(outer.vision_tower)[layer_index]
        self.hooks = [
            layer.register_forward_pre_hook(self._layer_hook, with_kwargs=True),
            outer.multi_modal_projector.register_forward_hook(self._projector_hook),
        ]

    @classmethod
    def attach(cls, outer: nn.Module) -> ClsAttention | None:
        """Hooks on ``outer`` if its vision tower is a CLIP encoder with a [CLS] token, else None."""
        tower = getattr(outer, "vision_tower", None)
        if getattr(getattr(tower, "config", None), "model_type", None) != "clip_vision_model":
            return None
        if not hasattr(outer, "multi_modal_projector"):
            return None
        depth = len(_encoder_layers(tower))
        feature_layers = getattr(outer.config, "vision_feature_layer", -1)
        if isinstance(feature_layers, int):
            feature_layers = [feature_layers]
        # hidden_states[i] is the output of layer i - 1 (hidden_states[0]: the embeddings, no attention yet)
        deepest = max(i % (depth + 1) for i in feature_layers)
        return cls(outer, deepest - 1) if deepest > 0 else None

    def _layer_hook(self, module, args, kwargs):
        if self._read:
            self._records, self._read = [], False
        self._pending = cls_attention_row(module, args[0] if args else kwargs["hidden_states"])

    def _projector_hook(self, module, args, output):
        if self._pending is not None and output.dim() == 3:
            self._records.append((self._pending, output))
        self._pending = None

    def scores(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """``(B, N)``: the [CLS] attention of each whole image's most attended patch on that patch's visual embedding
        in ``features`` ``(B, N, D)`` (comparable across images: each row is a softmax), -inf elsewhere. None if no
        image was recorded. Only embeddings equal to a recorded crop's are marked, so records of other images never
        match.

        A crop is a whole image when its projected patches appear as one run in a sample's visual embeddings: every
        crop of LLaVA, and with AnyRes each image's thumbnail, which precedes its re-arranged tiles (these have
        image-newline tokens between rows)."""
        records, self._read = self._records, True
        if not records:
            return None
        b, n = valid.shape
        out = torch.full((b * n,), float("-inf"), device=features.device)
        for attention, projected in records:
            if not self.full:
                attention = attention[:, 1:]  # the projector got the patches only
            if attention.shape[:2] != projected.shape[:2]:
                continue
            patches = projected.shape[1]
            best, patch = attention.to(features.device).max(1)
            crops = projected.to(features)
            # where each crop's first patch sits: candidates by the first coordinate, confirmed on the whole vector
            sb, start, r = ((features[..., :1] == crops[:, 0, 0]) & valid.unsqueeze(-1)).nonzero(as_tuple=True)
            ok = (features[sb, start] == crops[r, 0]).all(-1) & (start + patches <= n)
            sb, start, r = sb[ok], start[ok], r[ok]
            at = start + patch[r]
            end = start + patches - 1
            whole = (features[sb, at] == crops[r, patch[r]]).all(-1) & (features[sb, end] == crops[r, -1]).all(-1)
            out.scatter_reduce_(0, (sb * n + at)[whole], best[r[whole]], "amax")
        return out.view(b, n)
