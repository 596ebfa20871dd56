"""Condition prefix shared by the generators: a class embedding, projected prompt states, or a learned constant,
plus the learned null prefix that classifier-free guidance swaps in.

The prefix sits before the image tokens in the transformer's sequence, so every generated position can attend to
every prompt word and the KV cache covers the condition for free.
"""

from __future__ import annotations

import torch
from torch import nn

CONDITIONS = ("prompt", "class", "none")
Condition = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


class PrefixConditioning:
    """Mixin for a ``ModelMixin`` whose config has ``condition``, ``num_classes``, ``prompt_dim`` and
    ``prompt_length``. Call :meth:`_init_conditioning` in ``__init__``; the parameter names are part of the saved
    weights."""

    def _init_conditioning(self, condition: str, dim: int, num_classes: int, prompt_dim: int, prompt_length: int):
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; accepted: {', '.join(CONDITIONS)}")
        if condition == "class" and num_classes < 1:
            raise ValueError("condition='class' needs num_classes >= 1")
        if condition == "class":
            self.class_embed = nn.Embedding(num_classes + 1, dim)  # the extra id is the null class
        elif condition == "prompt":
            self.prompt_proj = nn.Linear(prompt_dim, dim)
            self.prompt_pos = nn.Parameter(torch.randn(prompt_length, dim) * 0.02)
            self.null_prompt = nn.Parameter(torch.randn(prompt_length, dim) * 0.02)
        else:
            self.null_prefix = nn.Parameter(torch.randn(1, dim) * 0.02)

    @property
    def prefix_length(self) -> int:
        return self.config.prompt_length if self.config.condition == "prompt" else 1

    def prefix(self, condition: Condition, batch: int, null: torch.Tensor | None = None) -> torch.Tensor:
        """Condition -> prefix embeddings ``(B, P, dim)``; rows where ``null`` (bool ``(B,)``) is True get the null
        prefix (classifier-free guidance)."""
        kind = self.config.condition
        if kind == "none":
            return self.null_prefix.expand(batch, -1, -1)
        if condition is None:
            raise ValueError(f"this generator is {kind}-conditioned: pass a condition (or use guidance's null)")
        if kind == "class":
            labels = condition.long()
            if labels.shape != (batch,) or labels.min() < 0 or labels.max() >= self.config.num_classes:
                raise ValueError(
                    f"class condition must be labels of shape ({batch},) in [0, {self.config.num_classes}), "
                    f"got shape {tuple(labels.shape)}"
                )
            if null is not None:
                labels = labels.masked_fill(null, self.config.num_classes)
            return self.class_embed(labels)[:, None]
        states = condition[0] if isinstance(condition, tuple) else condition
        expected = (batch, self.config.prompt_length, self.config.prompt_dim)
        if tuple(states.shape) != expected:
            raise ValueError(f"prompt states must have shape {expected}, got {tuple(states.shape)}")
        prefix = self.prompt_proj(states.to(self.prompt_proj.weight.dtype)) + self.prompt_pos
        if null is not None:
            prefix = torch.where(null[:, None, None], self.null_prompt.to(prefix.dtype), prefix)
        return prefix

    def _null_prefix(self, batch: int) -> torch.Tensor:
        if self.config.condition == "class":
            labels = torch.full((batch,), self.config.num_classes, device=self.device)
            return self.class_embed(labels)[:, None]
        if self.config.condition == "prompt":
            return self.null_prompt.expand(batch, -1, -1)
        return self.null_prefix.expand(batch, -1, -1)

    def _training_null(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """Which samples see the null condition in this training step (``cond_dropout`` share), or None."""
        if self.training and self.config.condition != "none" and self.config.cond_dropout > 0:
            return torch.rand(batch, device=device) < self.config.cond_dropout
        return None

    @staticmethod
    def _batch_of(condition: Condition, batch_size: int | None) -> int:
        if batch_size is not None:
            return batch_size
        if condition is None:
            raise ValueError("pass a condition or a batch_size")
        return (condition[0] if isinstance(condition, tuple) else condition).shape[0]
