"""1D tokenizer (TiTok / GigaTok style): K learnable latent tokens read an image through a ViT and are quantized;
a ViT decoder rebuilds the patch grid from the K codes alone. K does not depend on the image resolution.

Encoder: patch embeddings + K latent tokens -> transformer -> the K latent outputs -> quantizer.
Decoder: K code embeddings + one learned mask token per patch -> transformer -> the patch outputs -> pixels, with a
small convolutional head that smooths patch seams (a linear patch decoder alone leaves visible 8x8 blocks).
Blocks are timm's ViT blocks.

Hybrid (GigaTok's design, ``cnn_channels`` set): a convolutional encoder replaces the linear patch embedding and a
convolutional decoder replaces the patch head, so the transformers only move information between the patch grid
and the K tokens. A plain ViT autoencoder learns slowly at this scale (after 150 steps its MSE is 3x the
convolutional tokenizer's, even without a quantizer); the CNN stem and decoder give it the image prior of the 2D
tokenizers.

Raster prior (``raster_prior=True``): the latent tokens start from the patch sequence average-pooled to K in
raster order (added to the learned latents), and each decoder mask token starts from the code of the latent its
patch was pooled into. Free latents must first discover where to read and write: after 1000 steps they still
code little more than the mean image (``benchmarks/tokenizer.md``: the vq1d rows with and without it). The prior
hands them a default layout that attention can then reshape; the tokens remain one sequence of K, for any resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from .convnets import Decoder, Encoder
from .image_tokenizer import RECON_LOSSES, reconstruction_losses
from .quantizers import QuantizerOutput, build_quantizer
from .registry import TokenizerFamily, register_family, register_preset


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(*[Block(width, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])


@register_family
class OneDTokenizer(ModelMixin, ConfigMixin):
    """Images (B, 3, S, S) in [-1, 1], S = ``image_size``, to ``num_tokens`` indices (B, K) and back."""

    family = TokenizerFamily(kind="vq1d", default_preset="vq1d-32-prior")

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        num_tokens: int = 32,
        width: int = 192,
        encoder_depth: int = 4,
        decoder_depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        head_channels: int = 32,
        embed_dim: int = 16,
        quantizer_type: str = "vq",
        codebook_size: int = 1024,
        quantizer_kwargs: dict | None = None,
        recon_loss: str = "l2",
        quantizer_weight: float = 1.0,
        cnn_channels: tuple[int, ...] | None = None,
        norm_groups: int = 32,
        raster_prior: bool = False,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {recon_loss!r}; accepted: {', '.join(RECON_LOSSES)}")
        grid = image_size // patch_size
        self.grid = grid
        scale = width**-0.5
        if cnn_channels:  # hybrid: convolutional stem down to the patch grid
            self.patch_embed = Encoder(width, patch_size, tuple(cnn_channels), norm_groups=norm_groups)
        else:
            self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.patch_pos = nn.Parameter(torch.randn(grid * grid, width) * scale)
        self.latents = nn.Parameter(torch.randn(num_tokens, width) * scale)
        self.encoder = _blocks(width, encoder_depth, heads, mlp_ratio)
        self.encoder_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.quantizer = build_quantizer(quantizer_type, embed_dim, codebook_size, **(quantizer_kwargs or {}))
        self.decoder_in = nn.Linear(embed_dim, width)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, width) * scale)
        self.mask_tokens = nn.Parameter(torch.randn(grid * grid, width) * scale)
        self.decoder = _blocks(width, decoder_depth, heads, mlp_ratio)
        if cnn_channels:  # hybrid: convolutional decoder from the patch grid
            self.decoder_out = nn.LayerNorm(width)
            self.head = Decoder(width, patch_size, tuple(cnn_channels), norm_groups=norm_groups)
        else:
            self.decoder_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, head_channels * patch_size**2))
            self.head = nn.Sequential(
                nn.SiLU(),
                nn.Conv2d(head_channels, head_channels, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(head_channels, 3, 3, padding=1),
            )

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"expected images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """(B, 3, S, S) -> quantized latent tokens (B, K, D) and the quantizer's output (indices (B, K))."""
        self._check_images(images)
        patches = self.patch_embed(images).flatten(2).transpose(1, 2) + self.patch_pos
        latents = self.latents.expand(len(images), -1, -1)
        if self.config.raster_prior:
            latents = latents + F.adaptive_avg_pool1d(patches.transpose(1, 2), len(self.latents)).transpose(1, 2)
        x = torch.cat([patches, latents], dim=1)
        z = self.encoder_out(self.encoder(x)[:, patches.shape[1] :])
        out = self.quantizer(z)
        return out.quantized, out

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> indices (B, K)."""
        return self.quantize(images)[1].indices.long()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Quantized tokens (B, K, D) -> images (B, 3, S, S)."""
        tokens = self.decoder_in(z) + self.token_pos
        mask = self.mask_tokens.expand(len(z), -1, -1)
        if self.config.raster_prior:  # nearest upsampling inverts the encoder's pooling
            mask = mask + F.interpolate(tokens.transpose(1, 2), size=mask.shape[1], mode="nearest").transpose(1, 2)
        x = torch.cat([tokens, mask], dim=1)
        patches = self.decoder_out(self.decoder(x)[:, tokens.shape[1] :])
        if self.config.cnn_channels:
            maps = rearrange(patches, "b (gh gw) c -> b c gh gw", gh=self.grid)
        else:
            p = self.config.patch_size
            maps = rearrange(patches, "b (gh gw) (c p q) -> b c (gh p) (gw q)", gh=self.grid, p=p, q=p)
        return self.head(maps).float()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) -> images (B, 3, S, S) in roughly [-1, 1]."""
        if indices.ndim != 2 or indices.shape[1] != self.config.num_tokens:
            raise ValueError(f"expected indices (B, {self.config.num_tokens}), got {tuple(indices.shape)}")
        return self.decode_latents(self.quantizer.codes(indices))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, out = self.quantize(images)
        recon = self.decode_latents(z)
        losses = reconstruction_losses(recon, images, self.config.recon_loss, out, self.config.quantizer_weight)
        return recon, losses


# TiTok-style 1D tokens for 64x64 images; K is independent of the resolution. -hybrid: convolutional stem and
# decoder around the latent-token transformers (GigaTok's hybrid design)
_HYBRID_1D = dict(num_tokens=32, codebook_size=1024, cnn_channels=(64, 128, 256), encoder_depth=3, decoder_depth=3)
register_preset("vq1d-32", OneDTokenizer, num_tokens=32, codebook_size=1024)
register_preset("vq1d-64", OneDTokenizer, num_tokens=64, codebook_size=1024)
register_preset("vq1d-32-hybrid", OneDTokenizer, **_HYBRID_1D)
register_preset("vq1d-32-prior", OneDTokenizer, **_HYBRID_1D, raster_prior=True)
# for tests and smoke runs
register_preset(
    "vq1d-tiny",
    OneDTokenizer,
    num_tokens=8,
    width=32,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    head_channels=8,
    codebook_size=64,
)
