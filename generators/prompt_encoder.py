"""Prompt encoder for text-to-image generators: a frozen CLIP text tower."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
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

    Why ``word_embeddings=True`` appends the tower's input word embeddings (layer-normalised, D doubles): a
    contrastive text tower only keeps apart what its image tower can see. The project's small CLIP barely sees
    shape at 64 px, so its states for "a red triangle" and "a red diamond" have cosine 0.98, and a generator
    conditioned on them cannot learn which shape to draw. The word embedding table is a lookup, one vector per
    word, so the words stay distinct, while the states still say which words belong together.

    ``dtype`` (e.g. ``torch.bfloat16``) is the dtype the CLIP holds its weights and computes in; states are float32
    all the same. It is saved with the folder.
    """

    config_name = "prompt_encoder.json"

    def __init__(self, clip: CLIPEncoder, word_embeddings: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.clip = clip.freeze() if dtype is None else clip.freeze().to(dtype)
        self.word_embeddings = word_embeddings
        self.train(False)

    @classmethod
    def from_clip(
        cls,
        name_or_path: str | os.PathLike,
        pretrained: str | None = None,
        word_embeddings: bool = False,
        dtype: torch.dtype | None = None,
    ) -> PromptEncoder:
        """From a CLIP folder (e.g. ``assets/pipeline/prompt_encoder``) or an open_clip name + pretrained tag (see
        ``load_clip``)."""
        return cls(load_clip(name_or_path, pretrained), word_embeddings, dtype)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, word_embeddings: bool | None = None, dtype: torch.dtype | None = None
    ) -> PromptEncoder:
        """From a saved prompt-encoder or CLIP folder; ``word_embeddings`` and ``dtype`` None take the folder's
        saved choice (False and float32 for a bare CLIP folder)."""
        config = Path(folder) / cls.config_name
        saved = json.loads(config.read_text()) if config.is_file() else {}
        if word_embeddings is None:
            word_embeddings = saved.get("word_embeddings", False)
        if dtype is None:
            dtype = getattr(torch, saved.get("dtype", "float32"))
        return cls(CLIPEncoder.from_pretrained(folder), word_embeddings, dtype)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Saves the CLIP it wraps and this encoder's choice of features (a pipeline keeps it as a subfolder,
        e.g. ``pipeline/prompt_encoder``)."""
        self.clip.save_pretrained(folder)
        config = {"word_embeddings": self.word_embeddings, "dtype": str(self.dtype).removeprefix("torch.")}
        (Path(folder) / self.config_name).write_text(json.dumps(config, indent=2) + "\n")

    def train(self, mode: bool = True) -> PromptEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def dim(self) -> int:
        """D, the width of each token state (twice the text width with word embeddings)."""
        return self.clip.text_width * (2 if self.word_embeddings else 1)

    @property
    def max_length(self) -> int:
        """L, the number of token positions (the text tower's context length; longer prompts are truncated)."""
        return self.clip.context_length

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the CLIP computes in (states are returned as float32 all the same)."""
        return next(self.clip.parameters()).dtype

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (states (B, L, D) float32, mask (B, L) bool)."""
        # no_grad rather than inference_mode: the states are inputs to a generator that is being trained, and
        # inference tensors cannot be saved for its backward pass.
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.clip.tokenize(list(prompts))  # once, for the states and the word embeddings
        states, mask = self.clip.text_states(ids)
        states = states.float()
        if self.word_embeddings:
            words = self.clip.word_embeddings(ids).float()
            states = torch.cat([states, F.layer_norm(words, words.shape[-1:])], dim=-1)
        return states, mask

    @torch.no_grad()
    def embed(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """The pooled, projected, L2-normalised CLIP text embedding (B, E), e.g. for CLIP scores."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.clip.encode_text(list(prompts))
