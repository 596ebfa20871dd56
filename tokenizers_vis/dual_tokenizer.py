"""Dual-codebook tokenizer (DualToken style): a semantic codebook fed by deep encoder features and aligned to a
frozen teacher, and a pixel codebook fed by shallow features for reconstruction. Both index grids have the same
size; the decoder reads the two quantized latents side by side.

Why two codebooks: reconstruction wants low-level detail (edges, exact colours) that shallow features keep, while
semantic alignment pulls deep features towards what a recognition model sees. One codebook asked to do both trades
one against the other; two let each objective shape its own codes.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from .convnets import Decoder, ResBlock, _norm, num_levels
from .image_tokenizer import RECON_LOSSES, check_image_batch, reconstruction_loss
from .losses import add_semantic_loss
from .quantizers import QuantizerOutput, build_quantizer
from .registry import TokenizerFamily, register_family, register_preset


class LevelEncoder(nn.Module):
    """The 2D encoder trunk, returning every level's features (fine to coarse); level l is at stride 2 ** (l + 1)."""

    def __init__(self, channels: tuple[int, ...], num_res_blocks: int, groups: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, channels[0], 3, padding=1))
        self.levels = nn.ModuleList()
        for level, ch in enumerate(channels):
            layers: list[nn.Module] = []
            if level > 0:
                layers.append(nn.Conv2d(channels[level - 1], ch, 4, stride=2, padding=1))
            layers += [ResBlock(ch, groups) for _ in range(num_res_blocks)]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, feats = self.stem(x), []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


def _head(in_channels: int, out_channels: int, downsample: int, groups: int) -> nn.Sequential:
    """Features at ``downsample`` x the latent grid -> (B, out_channels, h, w) via stride-2 convs."""
    layers: list[nn.Module] = []
    for _ in range(downsample.bit_length() - 1):
        layers += [nn.Conv2d(in_channels, in_channels, 4, stride=2, padding=1), nn.SiLU()]
    layers += [
        ResBlock(in_channels, groups),
        _norm(in_channels, groups),
        nn.SiLU(),
        nn.Conv2d(in_channels, out_channels, 1),
    ]
    return nn.Sequential(*layers)


@register_family
class DualTokenizer(ModelMixin, ConfigMixin):
    """Images (B, 3, H, W) in [-1, 1] -> (semantic indices (B, h, w), pixel indices (B, h, w)) and back.

    ``pixel_level`` / ``semantic_level`` pick the encoder level (0 = shallowest) feeding each codebook; the semantic
    codes are projected to ``semantic_dim`` (the teacher's feature size) for the alignment loss. ``forward(images,
    semantic_target)`` adds ``semantic_weight * (1 - cos)`` when teacher features (B, N, semantic_dim) are given.
    """

    # runs default to the project's CLIP as teacher: the semantic codebook is defined by its teacher
    family = TokenizerFamily(
        kind="dual", default_preset="dual-f8", accepts_teacher=True, run_defaults={"semantic_teacher": "clip"}
    )

    @register_to_config
    def __init__(
        self,
        downsample_factor: int = 8,
        channels: tuple[int, ...] = (64, 128, 256),
        encoder_res_blocks: int = 1,
        decoder_res_blocks: int = 2,
        norm_groups: int = 32,
        embed_dim: int = 16,
        pixel_level: int = 0,
        semantic_level: int = -1,
        pixel_codebook_size: int = 512,
        semantic_codebook_size: int = 512,
        quantizer_type: str = "vq",
        quantizer_kwargs: dict | None = None,
        semantic_dim: int = 128,
        semantic_weight: float = 0.5,
        recon_loss: str = "l2",
        quantizer_weight: float = 1.0,
    ) -> None:
        super().__init__()
        levels = num_levels(downsample_factor)
        if len(channels) != levels:
            raise ValueError(f"downsample_factor {downsample_factor} needs {levels} channel levels, got {channels}")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {recon_loss!r}; accepted: {', '.join(RECON_LOSSES)}")
        self.pixel_level, self.semantic_level = range(levels)[pixel_level], range(levels)[semantic_level]
        self.encoder = LevelEncoder(tuple(channels), encoder_res_blocks, norm_groups)
        self.pixel_head = _head(
            channels[self.pixel_level], embed_dim, 2 ** (levels - 1 - self.pixel_level), norm_groups
        )
        self.semantic_head = _head(
            channels[self.semantic_level], embed_dim, 2 ** (levels - 1 - self.semantic_level), norm_groups
        )
        kwargs = quantizer_kwargs or {}
        self.pixel_quantizer = build_quantizer(quantizer_type, embed_dim, pixel_codebook_size, **kwargs)
        self.semantic_quantizer = build_quantizer(quantizer_type, embed_dim, semantic_codebook_size, **kwargs)
        self.semantic_proj = nn.Sequential(
            nn.Conv2d(embed_dim, 4 * embed_dim, 1), nn.SiLU(), nn.Conv2d(4 * embed_dim, semantic_dim, 1)
        )
        self.decoder = Decoder(2 * embed_dim, downsample_factor, tuple(channels), decoder_res_blocks, norm_groups)

    @property
    def codebook_sizes(self) -> tuple[int, int]:
        """(semantic, pixel) codebook sizes."""
        return self.semantic_quantizer.codebook_size, self.pixel_quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        check_image_batch(images, self.config.downsample_factor)

    @staticmethod
    def _quantize(quantizer, z: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        h, w = z.shape[-2:]
        out = quantizer(rearrange(z, "b d h w -> b (h w) d"))
        return rearrange(out.quantized, "b (h w) d -> b d h w", h=h, w=w), out

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerOutput, QuantizerOutput]:
        """-> (semantic latents (B, D, h, w), pixel latents (B, D, h, w), semantic output, pixel output)."""
        self._check_images(images)
        feats = self.encoder(images)
        zs, out_s = self._quantize(self.semantic_quantizer, self.semantic_head(feats[self.semantic_level]))
        zp, out_p = self._quantize(self.pixel_quantizer, self.pixel_head(feats[self.pixel_level]))
        return zs, zp, out_s, out_p

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> (semantic indices (B, h, w), pixel indices (B, h, w))."""
        zs, _, out_s, out_p = self.quantize(images)
        h, w = zs.shape[-2:]
        return out_s.indices.reshape(-1, h, w).long(), out_p.indices.reshape(-1, h, w).long()

    def decode_latents(self, zs: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([zs, zp], dim=1)).float()

    def decode(self, semantic: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """(semantic indices (B, h, w), pixel indices (B, h, w)) -> images (B, 3, h*f, w*f)."""
        if semantic.shape != pixel.shape or semantic.ndim != 3:
            raise ValueError(f"expected two (B, h, w) index grids, got {tuple(semantic.shape)}, {tuple(pixel.shape)}")
        b, h, w = semantic.shape
        grids = []
        for quantizer, idx in ((self.semantic_quantizer, semantic), (self.pixel_quantizer, pixel)):
            grids.append(rearrange(quantizer.codes(idx.reshape(b, h * w)), "b (h w) d -> b d h w", h=h, w=w))
        return self.decode_latents(*grids)

    def semantic_features(self, zs: torch.Tensor) -> torch.Tensor:
        """Semantic latents (B, D, h, w) -> projected features (B, semantic_dim, h, w), compared with the teacher."""
        return self.semantic_proj(zs)

    def forward(
        self, images: torch.Tensor, semantic_target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zs, zp, out_s, out_p = self.quantize(images)
        recon = self.decode_latents(zs, zp)
        rec = reconstruction_loss(recon, images, self.config.recon_loss)
        aux = out_s.aux_loss + out_p.aux_loss
        losses = {
            "loss": rec + self.config.quantizer_weight * aux,
            "recon": rec.detach(),
            "quantizer": aux.detach(),
            "usage": (out_s.usage + out_p.usage) / 2,
            "perplexity": (out_s.perplexity + out_p.perplexity) / 2,
            "semantic_usage": out_s.usage,
            "pixel_usage": out_p.usage,
        }
        if semantic_target is not None:
            add_semantic_loss(losses, self.semantic_features(zs), semantic_target, self.config.semantic_weight)
        return recon, losses


# DualToken: 512 semantic (deepest level, aligned to the teacher) + 512 pixel (shallowest level) codes, f=8
register_preset(
    "dual-f8",
    DualTokenizer,
    downsample_factor=8,
    channels=(64, 128, 256),
    pixel_codebook_size=512,
    semantic_codebook_size=512,
)
# for tests and smoke runs
register_preset(
    "dual-f8-tiny",
    DualTokenizer,
    channels=(16, 32, 32),
    norm_groups=8,
    embed_dim=8,
    pixel_codebook_size=32,
    semantic_codebook_size=32,
)
