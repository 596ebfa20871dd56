"""Distribution and alignment metrics for generated images in a CLIP image space (torchmetrics' Fréchet distance
with the CLIP image tower as its feature extractor)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..clip import CLIPEncoder


class CLIPImageFeatures(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] -> L2-normalised CLIP image embeddings ``(B, E)``."""

    def __init__(self, clip: CLIPEncoder) -> None:
        super().__init__()
        self.clip = clip
        self.num_features = clip.embed_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images.float().to(self.clip.device) * 2 - 1).float().cpu()


@torch.no_grad()
def frechet_distance(clip: CLIPEncoder, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 256) -> float:
    """Fréchet distance between Gaussians fitted to CLIP embeddings of ``real`` and ``fake`` images
    ``(N, 3, H, W)`` in [0, 1]. Comparable only between runs that use the same CLIP and similar N."""
    # imported here, not at the top: torchmetrics is slow to import and the sampling scripts never need it
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(
        feature=CLIPImageFeatures(clip), normalize=True, input_img_size=tuple(real.shape[1:]), sync_on_compute=False
    )
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            metric.update(images[i : i + batch_size], real=is_real)
    return float(metric.compute())


@torch.no_grad()
def clip_score(clip: CLIPEncoder, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> float:
    """Mean cosine similarity × 100 between each image ``(N, 3, H, W)`` in [0, 1] and its prompt."""
    scores = []
    for i in range(0, len(images), batch_size):
        img = clip.encode_image(images[i : i + batch_size].to(clip.device) * 2 - 1)
        txt = clip.encode_text(list(prompts[i : i + batch_size]))
        scores.append((img * txt).sum(-1).float().cpu())
    return 100 * torch.cat(scores).mean().item()
