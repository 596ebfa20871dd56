"""diffusers' ``VQModel`` behind the project's tokenizer interface, as the benchmark's peer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import VQModel
from torch import nn


class DiffusersVQTokenizer(nn.Module):
    """``encode`` / ``decode`` / ``forward -> (recon, losses)`` around a diffusers ``VQModel``
    (its own learned-codebook VectorQuantizer with commitment loss, beta = 0.25)."""

    def __init__(
        self,
        downsample_factor: int = 8,
        block_out_channels: tuple[int, ...] = (32, 96, 128, 160),
        layers_per_block: int = 1,
        latent_channels: int = 32,
        num_vq_embeddings: int = 1024,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        if 2 ** (levels - 1) != downsample_factor:
            raise ValueError(
                f"{levels} blocks give a downsampling factor of {2 ** (levels - 1)}, not {downsample_factor}"
            )
        self.vq = VQModel(
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            num_vq_embeddings=num_vq_embeddings,
            vq_embed_dim=latent_channels,
        )

    @property
    def codebook_size(self) -> int:
        return self.vq.config.num_vq_embeddings

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.vq(images)
        rec = F.mse_loss(out.sample.float(), images.float())
        zero = images.new_zeros(())
        return out.sample, {
            "loss": rec + out.commit_loss,
            "recon": rec.detach(),
            "usage": zero,
            "quantizer": zero,
        }

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w) codebook indices."""
        latents = self.vq.encode(images).latents
        _, _, (_, _, indices) = self.vq.quantize(latents)
        return indices.reshape(latents.shape[0], *latents.shape[-2:])

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        codes = self.vq.quantize.get_codebook_entry(indices.reshape(-1), (b, h, w, self.vq.config.latent_channels))
        return self.vq.decode(codes, force_not_quantize=True).sample.float()

    def save_pretrained(self, path, **kwargs) -> None:
        self.vq.save_pretrained(path, **kwargs)
