"""2D image tokenizer: CNN encoder -> quantizer -> CNN decoder, at a downsampling factor of 8 or 16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange

from .convnets import Decoder, Encoder
from .quantizers import QuantizerOutput, build_quantizer

RECON_LOSSES = ("l1", "l2", "l1+l2")


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Pixel loss between (B, C, H, W) images; ``kind`` in l1 | l2 | l1+l2."""
    recon, target = recon.float(), target.float()
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    if kind == "l1+l2":
        return F.l1_loss(recon, target) + F.mse_loss(recon, target)
    raise ValueError(f"unknown reconstruction loss {kind!r}; accepted: {', '.join(RECON_LOSSES)}")


class ImageTokenizer(ModelMixin, ConfigMixin):
    """Images in [-1, 1], (B, 3, H, W) with H and W divisible by ``downsample_factor``, to a grid of
    discrete indices (B, H/f, W/f) (residual VQ: (B, H/f, W/f, Q)) and back.

    ``forward`` returns ``(reconstruction, losses)``: ``losses["loss"]`` is the weighted total to
    back-propagate; the other entries are its parts and detached codebook statistics.
    """

    @register_to_config
    def __init__(
        self,
        downsample_factor: int = 8,
        channels: tuple[int, ...] = (64, 128, 256),
        encoder_res_blocks: int = 1,
        decoder_res_blocks: int = 2,
        norm_groups: int = 32,
        embed_dim: int = 32,
        quantizer_type: str = "vq",
        codebook_size: int = 1024,
        quantizer_kwargs: dict | None = None,
        recon_loss: str = "l2",
        quantizer_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {recon_loss!r}; accepted: {', '.join(RECON_LOSSES)}")
        self.encoder = Encoder(embed_dim, downsample_factor, tuple(channels), encoder_res_blocks, norm_groups)
        self.decoder = Decoder(embed_dim, downsample_factor, tuple(channels), decoder_res_blocks, norm_groups)
        self.quantizer = build_quantizer(quantizer_type, embed_dim, codebook_size, **(quantizer_kwargs or {}))

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.config.downsample_factor
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(
                f"expected images of shape (B, 3, H, W) with H and W divisible by {f}, got {tuple(images.shape)}"
            )

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """(B, 3, H, W) -> quantized latents (B, D, h, w) and the quantizer's output (indices (B, h*w[, Q]))."""
        self._check_images(images)
        z = self.encoder(images)
        h, w = z.shape[-2:]
        out = self.quantizer(rearrange(z, "b d h w -> b (h w) d"))
        return rearrange(out.quantized, "b (h w) d -> b d h w", h=h, w=w), out

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> indices (B, h, w) (or (B, h, w, Q) for residual VQ)."""
        z, out = self.quantize(images)
        h, w = z.shape[-2:]
        return out.indices.reshape(images.shape[0], h, w, *out.indices.shape[2:]).long()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, D, h, w) -> images (B, 3, h*f, w*f)."""
        return self.decoder(z).float()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w[, Q]) -> images (B, 3, h*f, w*f) in roughly [-1, 1]."""
        b, h, w = indices.shape[:3]
        codes = self.quantizer.codes(indices.reshape(b, h * w, *indices.shape[3:]))
        return self.decode_latents(rearrange(codes, "b (h w) d -> b d h w", h=h, w=w))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, out = self.quantize(images)
        recon = self.decode_latents(z)
        rec = reconstruction_loss(recon, images, self.config.recon_loss)
        losses = {
            "loss": rec + self.config.quantizer_weight * out.aux_loss,
            "recon": rec.detach(),
            "quantizer": out.aux_loss.detach(),
            "usage": out.usage,
            "perplexity": out.perplexity,
        }
        return recon, losses
