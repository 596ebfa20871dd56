"""Per-family glue as data: one ``Family`` row per Hugging Face VLM family says where its visual tokens are and what
its outer model hands to the decoder besides the merged embeddings.

Every supported outer multimodal model (``LlavaModel``, ``Qwen2VLModel``, ``Gemma3Model``, …) merges the projected
visual features into ``inputs_embeds`` at placeholder tokens and calls its decoder with keyword arguments
``inputs_embeds``, ``attention_mask``, ``position_ids`` (Qwen: the M-RoPE ids of the full sequence) and the KV cache.
That call is the interception point: everything the decoder sees is complete and in original coordinates. What
differs between families is data:

- which config attributes hold the placeholder token ids;
- which attribute of the outer model is the decoder;
- what else the decoder receives per visual token (Qwen3-VL's DeepStack features, one row per visual token, with the
  ``(B, L)`` mask saying where they are added), which must lose the rows of pruned tokens;
- whether the outer model builds the decoder's attention mask itself (Gemma 3: a mask per layer type, with image
  tokens attending to each other bidirectionally), which must then be rebuilt for the shortened sequence;
- for video, the placeholder id and how a video's tokens split into frames (``per_frame`` budgets).

A new family is a row of ``FAMILIES`` plus a test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.masking_utils import create_masks_for_generate

from . import compat

# (outer config, video-token mask (B, L), the decoder's position ids) -> frame of each token (B, L), numbered over the
# batch, -1 for tokens of no frame. Read from the prompt, not from the video inputs: generate() may encode the videos
# before the first forward and hand the model only their features.
VideoFrames = Callable[[object, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _runs(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Of each token of a ``(B, L)`` mask: the column where its run of True starts, and whether it ends a run."""
    cols = torch.arange(video.shape[1], device=video.device).expand_as(video)
    start = video & ~F.pad(video, (1, 0))[:, :-1]
    end = video & ~F.pad(video, (0, 1))[:, 1:]
    return torch.where(start, cols, 0).cummax(1).values, end


def _numbered(starts: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Frame ids (numbered over the batch, row-major) from frame starts; -1 outside ``members``."""
    return torch.where(members, starts.flatten().cumsum(0).view_as(starts) - 1, -1)


def _qwen_video_frames(config, video: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Qwen2/2.5/3-VL: a frame (temporal patch) is a ``h x w`` grid of M-RoPE positions; a new one starts where a
    video token's (h, w) position is that of the first token of its run (Qwen3-VL: each frame is a run of its own)."""
    if positions is None or positions.dim() != 3:
        raise compat.TransformersCompatibilityError("the decoder received no M-RoPE position ids (3 or 4, B, L)")
    hw = positions[-2:].to(video.device)  # (2, B, L); generate puts a text row first
    first, _ = _runs(video)
    return _numbered(video & (hw == hw.gather(2, first.expand_as(hw))).all(0), video)


def _onevision_video_frames(config, video: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """LLaVA-OneVision: a run of video tokens is one video, its frames' pooled tokens (``ceil(S / 2)**2`` each for
    ``S x S`` patches) frame after frame, then one image-newline token of no frame."""
    side = -(-(config.vision_config.image_size // config.vision_config.patch_size) // 2)
    first, end = _runs(video)
    offset = torch.arange(video.shape[1], device=video.device) - first
    if (offset[end] % (side * side)).any():
        raise compat.TransformersCompatibilityError(
            f"a LLaVA-OneVision video's tokens are not frames of {side * side} pooled tokens and a newline"
        )
    return _numbered(video & ~end & (offset % (side * side) == 0), video & ~end)


# (text config, inputs_embeds (B, L, D), 2D mask (B, L_past + L), cache, position ids, outer per-token inputs
# gathered with the tokens ({name: (B, L)} or {} while decoding)) -> the mask the decoder takes
MaskBuilder = Callable[[object, torch.Tensor, torch.Tensor, object, torch.Tensor | None, dict], object]


def _gemma3_masks(config, embeds, mask2d, cache, position_ids, inputs: dict):
    """Gemma 3's masks per layer type: causal, or'ed with bidirectional attention inside each image block while the
    prompt's ``token_type_ids`` are known (prefill), exactly as ``Gemma3Model`` builds them."""
    from transformers.models.gemma3 import modeling_gemma3  # imported on use: most models never need it

    kwargs = dict(config=config, inputs_embeds=embeds, attention_mask=mask2d, position_ids=position_ids)
    token_types = inputs.get("token_type_ids")
    if token_types is None:
        return create_masks_for_generate(**kwargs, **{compat.cache_parameter(create_masks_for_generate): cache})
    build = compat.model_function(modeling_gemma3, "create_masks_for_vision_model")
    blocks = compat.model_function(modeling_gemma3, "get_block_sequence_ids_for_mask")(token_types, embeds.device)
    return build(block_sequence_ids=blocks, **kwargs, **{compat.cache_parameter(build): cache})


@dataclass(frozen=True)
class Family:
    """One model family: how its outer model hands visual tokens to its decoder.

    Attributes:
        name: short name (``handle.adapter.family.name``).
        classes: ``transformers`` class names, the ``*ForConditionalGeneration`` and the bare ``*Model``; names the
            installed release lacks are skipped.
        token_ids: config attributes holding the image placeholder token ids.
        video_token: config attribute holding the video placeholder token id (its tokens are visual tokens too).
        video_frames: splits the video tokens of a call into frames (for ``per_frame`` budgets).
        decoder: attribute of the outer model that is the decoder it calls.
        visual_rows: ``(rows, mask)`` pairs of decoder keywords: ``rows`` holds one row per visual token (a tensor
            ``(N_visual, D)`` or a list of them, in the row-major order of ``mask``) and ``mask`` ``(B, L)`` says
            where they belong. Pruning keeps the rows of kept tokens and gathers the mask.
        rows_layers: config attribute path listing the decoder layers whose outputs the ``visual_rows`` are added to
            (entry i after layer i); an in-decoder stage must start after them, since it shortens the sequence that
            the decoder's own ``(B, L)`` mask indexes.
        mask_builder: set when the outer model builds the decoder's mask itself; the hooks then hand the outer model
            no 2D mask while pruning and rebuild the decoder's mask from the shortened 2D one.
        mask_inputs: outer keywords ``(B, L)`` that ``mask_builder`` reads, gathered with the tokens at prefill.
    """

    name: str
    classes: tuple[str, ...]
    token_ids: tuple[str, ...] = ("image_token_id",)
    video_token: str | None = None
    video_frames: VideoFrames | None = None
    decoder: str = "language_model"
    visual_rows: tuple[tuple[str, str], ...] = ()
    rows_layers: str | None = None
    mask_builder: MaskBuilder | None = None
    mask_inputs: tuple[str, ...] = ()


FAMILIES = (
    Family("llava", ("LlavaForConditionalGeneration", "LlavaModel")),
    # AnyRes: the image tokens are a base view and tiles, with image-newline embeddings among them (all prunable)
    Family("llava_next", ("LlavaNextForConditionalGeneration", "LlavaNextModel")),
    Family(
        "llava_onevision",
        ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"),
        video_token="video_token_id",
        video_frames=_onevision_video_frames,
    ),
    Family(
        "qwen2_vl",
        ("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
        video_token="video_token_id",
        video_frames=_qwen_video_frames,
    ),
    Family(
        "qwen2_5_vl",
        ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
        video_token="video_token_id",
        video_frames=_qwen_video_frames,
    ),
    Family(
        "qwen3_vl",
        (
            "Qwen3VLForConditionalGeneration",
            "Qwen3VLModel",
            "Qwen3VLMoeForConditionalGeneration",
            "Qwen3VLMoeModel",
        ),
        video_token="video_token_id",
        video_frames=_qwen_video_frames,
        visual_rows=(("deepstack_visual_embeds", "visual_pos_masks"),),
        rows_layers="vision_config.deepstack_visual_indexes",
    ),
    Family("internvl", ("InternVLForConditionalGeneration", "InternVLModel")),  # tiles, pixel-shuffled
    Family("mistral3", ("Mistral3ForConditionalGeneration", "Mistral3Model")),  # Pixtral: native aspect ratio
    Family("idefics3", ("Idefics3ForConditionalGeneration", "Idefics3Model"), decoder="text_model"),
    Family("smolvlm", ("SmolVLMForConditionalGeneration", "SmolVLMModel"), decoder="text_model"),
    Family(
        "gemma3",
        ("Gemma3ForConditionalGeneration", "Gemma3Model"),
        mask_builder=_gemma3_masks,
        mask_inputs=("token_type_ids",),
    ),
)


@functools.cache
def _classes() -> dict[type, Family]:
    """Installed class -> its family, found by name, so a class missing from a release is simply left out."""
    found = {}
    for family in FAMILIES:
        for name in family.classes:
            cls = getattr(transformers, name, None)
            if cls is not None:
                found[cls] = family
    return found


SUPPORTED_MODELS = tuple(cls.__name__ for cls in _classes())


@dataclass
class Adapter:
    """A family row bound to one model: ``outer`` merges vision into text; ``language_model`` is the decoder it
    calls."""

    family: Family
    outer: nn.Module
    language_model: nn.Module
    visual_token_ids: tuple[int, ...]
    video_token_id: int | None = None

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def text_config(self):
        return self.language_model.config

    def visual_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, tokens: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Positions of visual placeholder tokens (or of ``tokens``) ``(B, L)`` bool, from ``input_ids`` or, failing
        that, by matching the placeholder embeddings (as the models themselves do)."""
        tokens = self.visual_token_ids if tokens is None else tokens
        if input_ids is not None:
            return torch.isin(input_ids, torch.tensor(tokens, device=input_ids.device))
        embed = self.outer.get_input_embeddings()
        mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        for token in tokens:
            ref = embed(torch.tensor(token, device=inputs_embeds.device)).to(inputs_embeds.dtype)
            mask |= (inputs_embeds == ref).all(-1)
        return mask

    def video_frames(self, video: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Frame of each token ``(B, L)`` long (numbered over the batch), -1 for tokens of no frame, from the video
        token mask ``(B, L)`` and the decoder's position ids (``Family.video_frames``)."""
        return self.family.video_frames(self.outer.config, video, positions)

    def rows_depth(self) -> int:
        """How many first decoder layers get ``visual_rows`` added to their outputs (0 for most families)."""
        if self.family.rows_layers is None:
            return 0
        return len(functools.reduce(getattr, self.family.rows_layers.split("."), self.outer.config))

    def decoder_mask(self, embeds: torch.Tensor, mask2d: torch.Tensor, cache, position_ids, inputs: dict):
        """The decoder's mask for a shortened sequence, built as the outer model builds it (``mask_builder``)."""
        config = self.outer.config.get_text_config()
        return self.family.mask_builder(config, embeds, mask2d, cache, position_ids, inputs)


def adapter_for(model: nn.Module) -> Adapter:
    """Build the adapter for a supported model, or refuse with the list of accepted classes."""
    family = _classes().get(type(model))
    if family is None:
        raise ValueError(
            f"pruning does not support {type(model).__name__}; accepted models: {', '.join(SUPPORTED_MODELS)}"
        )
    outer = model.model if hasattr(model, "lm_head") else model
    ids = tuple(getattr(outer.config, attr) for attr in family.token_ids)
    video = getattr(outer.config, family.video_token) if family.video_token else None
    visual = ids if video is None else (*ids, video)
    return Adapter(family, outer, getattr(outer, family.decoder), visual, video)
