"""Prompt encoder for text-to-image generators: a frozen CLIP text tower."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from tokenizers_vis.clip import CLIPEncoder, load_clip


class PromptEncoder(nn.Module):
    """Frozen CLIP text tower that turns prompts into per-token states for a generator.

    ``forward(prompts)`` returns ``(states (B, L, D), mask (B, L) bool)``: the outputs of the text transformer after
    its final LayerNorm (see :meth:`CLIPEncoder.text_states`), float32, on this module's device, with ``mask``
    True on the real tokens (``<sot>`` .. ``<eot>``), L = :attr:`max_length`, D = :attr:`dim`.

    Why frozen: the text tower was trained contrastively against images, so its states already carry the visual
    attributes the captions name; training it again through a generator's loss on little data would only let it
    drift (and the same prompt would stop meaning the same thing to every model that shares it). It is always in
    eval mode: :meth:`train` is a no-op, no parameter requires grad, and outputs are computed without autograd, so
    repeated calls give identical outputs.

    Why per-token states and not just the pooled CLIP embedding: a single vector for "a red circle and a blue
    square" is close to a bag of attributes, and a generator conditioned on it struggles to tell which colour goes
    with which shape. Given every token as a prefix (or as cross-attention memory), the generator can attend to
    "red" next to "circle" and bind attributes to objects. (The CLIP text transformer is causal, so each state sees
    the words before it; the ``<eot>`` state, the one CLIP pools, sees the whole prompt.)
    """

    def __init__(self, clip: CLIPEncoder) -> None:
        super().__init__()
        self.clip = clip.freeze()
        self.train(False)

    @classmethod
    def from_clip(cls, name_or_path: str | os.PathLike, pretrained: str | None = None) -> PromptEncoder:
        """From a CLIP folder (e.g. ``assets/pipeline/prompt_encoder``) or an open_clip name + pretrained tag (see
        ``load_clip``)."""
        return cls(load_clip(name_or_path, pretrained))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> PromptEncoder:
        return cls(CLIPEncoder.from_pretrained(folder))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Saves the CLIP it wraps (a pipeline keeps it as a subfolder, e.g. ``pipeline/prompt_encoder``)."""
        self.clip.save_pretrained(folder)

    def train(self, mode: bool = True) -> PromptEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def dim(self) -> int:
        """D, the width of each token state."""
        return self.clip.text_width

    @property
    def max_length(self) -> int:
        """L, the number of token positions (the text tower's context length; longer prompts are truncated)."""
        return self.clip.context_length

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (states (B, L, D) float32, mask (B, L) bool)."""
        # no_grad rather than inference_mode: the states are inputs to a generator that is being trained, and
        # inference tensors cannot be saved for its backward pass.
        if isinstance(prompts, str):
            prompts = [prompts]
        states, mask = self.clip.text_states(list(prompts))
        return states.float(), mask

    @torch.no_grad()
    def embed(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """The pooled, projected, L2-normalised CLIP text embedding (B, E), e.g. for CLIP scores."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.clip.encode_text(list(prompts))
