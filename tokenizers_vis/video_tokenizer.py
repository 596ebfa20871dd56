"""Causal 3D video tokenizer: clips of 1 + 4k frames -> (1 + k) grids of indices, the first frame coded alone.

Causality is in every layer: temporal convolutions pad only the past (the first frame repeated), normalisation is
per frame, and temporal down-sampling groups frames as (f0, f0), (f1, f2), (f3, f4), ... after repeating the first
frame once. Latent frame j therefore depends on input frames <= t(j) only (t(0) = 0, t(j) = 4j for compression 4),
a one-frame clip is an image, and an autoregressive video generator can decode a prefix of latent frames without
knowing the future.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from .convnets import num_levels
from .image_tokenizer import RECON_LOSSES, reconstruction_losses
from .quantizers import QuantizerOutput, build_quantizer
from .registry import TokenizerFamily, register_family, register_preset


class FrameNorm(nn.GroupNorm):
    """GroupNorm over each frame separately: statistics over time would leak later frames into earlier ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class CausalConv3d(nn.Module):
    """Conv3d (C, T, H, W) whose output frame t sees input frames <= t: the past is padded with the first frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (3, 3, 3)) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class CausalResBlock(nn.Module):
    """(FrameNorm, SiLU, causal conv) x 2 with a zero-initialised last conv (each block starts as the identity).
    ``time_kernel`` 1 makes the convolutions per frame (for stacks whose time mixing happens elsewhere)."""

    def __init__(self, channels: int, groups: int = 32, time_kernel: int = 3) -> None:
        super().__init__()
        groups = min(groups, channels)
        kernel = (time_kernel, 3, 3)
        self.body = nn.Sequential(
            FrameNorm(groups, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels, kernel),
            FrameNorm(groups, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels, kernel),
        )
        nn.init.zeros_(self.body[-1].conv.weight)
        nn.init.zeros_(self.body[-1].conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SpatialDown(nn.Module):
    """Stride-2 4x4 convolution on every frame."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialUp(nn.Module):
    """Nearest 2x up-sampling of every frame, then a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class TimeDown(nn.Module):
    """1 + 2m frames -> 1 + m: the first frame is repeated once and consecutive pairs are merged by a linear map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(2 * in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1], x], dim=2)
        return self.proj(rearrange(x, "b c (t two) h w -> b (two c) t h w", two=2))


class TimeUp(nn.Module):
    """1 + m frames -> 1 + 2m: each frame is expanded to a pair and the first frame's duplicate is dropped."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, 2 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.proj(x), "b (two c) t h w -> b c (t two) h w", two=2)
        return x[:, :, 1:]


def _stem_down(x: torch.Tensor) -> torch.Tensor:
    """2x space-to-depth on every frame (the full-resolution convolutions are the costly ones on CPU)."""
    b = x.shape[0]
    y = F.pixel_unshuffle(rearrange(x, "b c t h w -> (b t) c h w"), 2)
    return rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _stem_up(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    y = F.pixel_shuffle(rearrange(x, "b c t h w -> (b t) c h w"), 2)
    return rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _time_levels(temporal_factor: int) -> int:
    if temporal_factor not in (1, 2, 4, 8):
        raise ValueError(f"temporal_factor must be one of 1, 2, 4, 8; got {temporal_factor}")
    return temporal_factor.bit_length() - 1


class VideoEncoder(nn.Module):
    """(B, 3, T, H, W) -> (B, out_channels, 1 + (T - 1) / tf, H / f, W / f). Temporal down-sampling happens at the
    coarsest spatial levels, where it is cheapest."""

    def __init__(
        self,
        out_channels: int,
        spatial_factor: int,
        temporal_factor: int,
        channels: tuple[int, ...],
        num_res_blocks: int,
        groups: int,
        time_kernel: int = 3,
    ) -> None:
        super().__init__()
        levels, time_levels = num_levels(spatial_factor), _time_levels(temporal_factor)
        layers: list[nn.Module] = [CausalConv3d(12, channels[0])]
        for level, ch in enumerate(channels):
            if level > 0:
                layers.append(SpatialDown(channels[level - 1], ch))
            layers += [CausalResBlock(ch, groups, time_kernel) for _ in range(num_res_blocks)]
            if level >= levels - time_levels:
                layers.append(TimeDown(ch, ch))
        layers += [
            FrameNorm(min(groups, channels[-1]), channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(_stem_down(x))


class VideoDecoder(nn.Module):
    """Mirror of :class:`VideoEncoder`: latents (B, D, 1 + k, h, w) -> (B, 3, 1 + k * tf, h * f, w * f)."""

    def __init__(
        self,
        in_channels: int,
        spatial_factor: int,
        temporal_factor: int,
        channels: tuple[int, ...],
        num_res_blocks: int,
        groups: int,
        time_kernel: int = 3,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        time_levels = _time_levels(temporal_factor)
        rev = list(reversed(channels))
        layers: list[nn.Module] = [CausalConv3d(in_channels, rev[0])]
        for level, ch in enumerate(rev):
            if level > 0:
                layers.append(SpatialUp(rev[level - 1], ch))
            if level < time_levels:
                layers.append(TimeUp(ch, ch))
            layers += [CausalResBlock(ch, groups, time_kernel) for _ in range(num_res_blocks)]
        layers += [FrameNorm(min(groups, rev[-1]), rev[-1]), nn.SiLU(), CausalConv3d(rev[-1], 4 * out_channels)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _stem_up(self.layers(z))


def check_video_stack(recon_loss: str, spatial_factor: int, temporal_factor: int, channels: tuple[int, ...]) -> None:
    """Refuses a causal 3D convolutional stack the encoder and decoder cannot build, saying what fits."""
    if recon_loss not in RECON_LOSSES:
        raise ValueError(f"unknown reconstruction loss {recon_loss!r}; accepted: {', '.join(RECON_LOSSES)}")
    if len(channels) != num_levels(spatial_factor):
        raise ValueError(f"spatial_factor {spatial_factor} needs {num_levels(spatial_factor)} channel levels")
    if _time_levels(temporal_factor) > len(channels):
        raise ValueError("temporal_factor needs at most one halving per channel level")


@register_family
class VideoTokenizer(ModelMixin, ConfigMixin):
    """Videos (B, T, 3, H, W) in [-1, 1] with T = 1 + temporal_factor * k -> indices (B, 1 + k, H/f, W/f) and
    back. Images (B, 3, H, W) are one-frame videos: ``encode`` gives (B, 1, h, w).

    ``forward`` returns ``(reconstruction, losses)`` like :class:`~tokenizers_vis.ImageTokenizer`.
    """

    # Runs: a smaller pool, and clip batches of 8 plus 16 still scenes per step. The frames of a clip are
    # near-duplicates, so clip batches alone (17 frames x 4 or 9 x 8) learn slowly, even on the first frame, which is
    # coded like an image.
    family = TokenizerFamily(
        kind="video",
        default_preset="video-f8t4",
        takes_videos=True,
        run_defaults={
            "data": "videos",
            "train_samples": 4000,
            "batch_size": 8,
            "image_batch_size": 16,
            "eval_samples": 128,
        },
    )

    @register_to_config
    def __init__(
        self,
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        channels: tuple[int, ...] = (64, 128, 192),
        encoder_res_blocks: int = 1,
        decoder_res_blocks: int = 1,
        norm_groups: int = 32,
        embed_dim: int = 32,
        quantizer_type: str = "vq",
        codebook_size: int = 1024,
        quantizer_kwargs: dict | None = None,
        recon_loss: str = "l2",
        quantizer_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_video_stack(recon_loss, spatial_factor, temporal_factor, channels)
        args = (spatial_factor, temporal_factor, tuple(channels))
        self.encoder = VideoEncoder(embed_dim, *args, encoder_res_blocks, norm_groups)
        self.decoder = VideoDecoder(embed_dim, *args, decoder_res_blocks, norm_groups)
        self.quantizer = build_quantizer(quantizer_type, embed_dim, codebook_size, **(quantizer_kwargs or {}))

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.config.temporal_factor

    def _as_video(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or an image batch (B, 3, H, W) -> (B, 3, T, H, W), checked."""
        if videos.ndim == 4:
            videos = videos[:, None]
        f, tf = self.config.spatial_factor, self.config.temporal_factor
        if videos.ndim != 5 or videos.shape[2] != 3 or videos.shape[-1] % f or videos.shape[-2] % f:
            raise ValueError(
                f"expected videos (B, T, 3, H, W) or images (B, 3, H, W) with H and W divisible by {f}, "
                f"got {tuple(videos.shape)}"
            )
        if (videos.shape[1] - 1) % tf:
            raise ValueError(
                f"the number of frames must be 1 + {tf} * k (1, {1 + tf}, {1 + 2 * tf}, ...), got {videos.shape[1]}"
            )
        return rearrange(videos, "b t c h w -> b c t h w")

    def quantize(self, videos: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """-> quantized latents (B, D, t, h, w) and the quantizer's output (indices (B, t*h*w))."""
        z = self.encoder(self._as_video(videos))
        t, h, w = z.shape[-3:]
        out = self.quantizer(rearrange(z, "b d t h w -> b (t h w) d"))
        return rearrange(out.quantized, "b (t h w) d -> b d t h w", t=t, h=h, w=w), out

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) (or (B, 3, H, W)) in [-1, 1] -> indices (B, 1 + (T - 1) / tf, H / f, W / f)."""
        z, out = self.quantize(videos)
        return out.indices.reshape(z.shape[0], *z.shape[2:]).long()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, t, h, w) -> videos (B, 1 + (t - 1) * tf, 3, h * f, w * f)."""
        return rearrange(self.decoder(z).float(), "b c t h w -> b t c h w")

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, t, h, w) -> videos (B, 1 + (t - 1) * tf, 3, H, W) in roughly [-1, 1]."""
        b, t, h, w = indices.shape
        codes = self.quantizer.codes(indices.reshape(b, t * h * w))
        return self.decode_latents(rearrange(codes, "b (t h w) d -> b d t h w", t=t, h=h, w=w))

    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = videos if videos.ndim == 5 else videos[:, None]
        z, out = self.quantize(videos)
        recon = self.decode_latents(z)
        flat = (recon.flatten(0, 1), target.flatten(0, 1))
        losses = reconstruction_losses(*flat, self.config.recon_loss, out, self.config.quantizer_weight)
        return recon, losses


# causal 3D video tokenizer: 17 frames of 64x64 -> 5 x 8 x 8 indices
register_preset("video-f8t4", VideoTokenizer, spatial_factor=8, temporal_factor=4)
# 4x finer grids (16 x 16 per latent frame): small shapes keep their corners, as with the image vq-f4
register_preset(
    "video-f4t4", VideoTokenizer, spatial_factor=4, temporal_factor=4, channels=(64, 128), decoder_res_blocks=2
)
# for tests and smoke runs
register_preset("video-tiny", VideoTokenizer, channels=(16, 32, 32), norm_groups=8, embed_dim=8, codebook_size=64)
