"""Per-family glue: where the visual tokens are and which modules to hook.

The outer multimodal model (``LlavaModel``, ``Qwen2VLModel``, ``Qwen2_5_VLModel``) merges the projected visual features
into ``inputs_embeds`` and calls its decoder (``language_model``) with keyword arguments ``inputs_embeds``,
``attention_mask``, ``position_ids`` (for Qwen: the M-RoPE ids of the full sequence) and ``past_key_values``. That call
is the interception point: everything the decoder sees is complete and in original coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    LlavaForConditionalGeneration,
    LlavaModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
)

_FAMILIES = {
    LlavaForConditionalGeneration: "llava",
    LlavaModel: "llava",
    Qwen2VLForConditionalGeneration: "qwen2_vl",
    Qwen2VLModel: "qwen2_vl",
    Qwen2_5_VLForConditionalGeneration: "qwen2_5_vl",
    Qwen2_5_VLModel: "qwen2_5_vl",
}
SUPPORTED_MODELS = tuple(cls.__name__ for cls in _FAMILIES)


@dataclass
class Adapter:
    """Model-family glue. ``outer`` merges vision into text; ``language_model`` is the decoder it calls."""

    family: str
    outer: nn.Module
    language_model: nn.Module
    visual_token_ids: tuple[int, ...]

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def text_config(self):
        return self.language_model.config

    def visual_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """Positions of visual placeholder tokens ``(B, L)`` bool, from ``input_ids`` or, failing that, by matching
        the placeholder embeddings (as the models themselves do)."""
        if input_ids is not None:
            ids = torch.tensor(self.visual_token_ids, device=input_ids.device)
            return torch.isin(input_ids, ids)
        embed = self.outer.get_input_embeddings()
        mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        for token in self.visual_token_ids:
            ref = embed(torch.tensor(token, device=inputs_embeds.device)).to(inputs_embeds.dtype)
            mask |= (inputs_embeds == ref).all(-1)
        return mask


def adapter_for(model: nn.Module) -> Adapter:
    """Build the adapter for a supported model, or refuse with the list of accepted classes."""
    family = next((name for cls, name in _FAMILIES.items() if type(model) is cls), None)
    if family is None:
        raise ValueError(
            f"pruning does not support {type(model).__name__}; accepted models: {', '.join(SUPPORTED_MODELS)}"
        )
    outer = model.model if hasattr(model, "lm_head") else model
    config = outer.config
    ids = (config.image_token_id,) if family == "llava" else (config.image_token_id, config.video_token_id)
    return Adapter(family, outer, outer.language_model, ids)
