"""Convolutional encoder / decoder for 2D image tokenizers, in two layouts.

``layout="compact"`` (the default): both ends work at half resolution through pixel-(un)shuffle: the
full-resolution convolutions are the most expensive part of a small autoencoder and a 2x space-to-depth loses
nothing, which makes the networks about 3x cheaper per step on CPU at equal quality.

``layout="taming"``: the VQGAN layout of taming-transformers that LlamaGen's VQ-8 / VQ-16 tokenizers use, layer for
layer, so their checkpoints map onto these modules: a 3x3 convolution in and out at full resolution, channel
changes inside residual blocks (1x1 shortcut), strided-conv downsampling and nearest + conv upsampling at the end
of a level, self-attention after every residual block of the lowest-resolution level, a middle block
(residual, attention, residual) at the latent resolution, and GroupNorm with eps 1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = ("compact", "taming")
_NORM_EPS = {"compact": 1e-5, "taming": 1e-6}


def _norm(channels: int, groups: int, eps: float = 1e-5) -> nn.Module:
    return nn.GroupNorm(min(groups, channels), channels, eps=eps) if groups > 0 else nn.Identity()


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, conv3x3) x 2, with a 1x1 shortcut when the width changes; the
    last conv starts at zero so every block begins as the identity (or its shortcut) and deep stacks train from the
    first step."""

    def __init__(self, channels: int, groups: int = 32, out_channels: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.body = nn.Sequential(
            _norm(channels, groups, eps),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
            _norm(out_channels, groups, eps),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.shortcut = nn.Conv2d(channels, out_channels, 1) if out_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of (B, C, H, W), residual; the output projection starts at zero
    so the block begins as the identity."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = _norm(channels, groups, eps)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))  # (B, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(x.shape)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """x2 down with a 3x3 stride-2 conv after padding right and bottom by one (the taming layout's alignment)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """x2 nearest-neighbour up, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _run(layers: nn.Sequential, x: torch.Tensor, feature_index: int | None):
    """``layers(x)``, plus the output of layer ``feature_index`` when it is given."""
    if feature_index is None:
        return layers(x)
    feature = None
    for i, layer in enumerate(layers):
        x = layer(x)
        if i == feature_index:
            feature = x
    return x, feature


def num_levels(downsample_factor: int, layout: str = "compact") -> int:
    """Feature levels for a downsampling factor: each level after the first halves the resolution, and the compact
    layout's pixel-unshuffle gives one more x2."""
    if downsample_factor not in (4, 8, 16, 32):
        raise ValueError(f"downsample_factor must be one of 4, 8, 16, 32; got {downsample_factor}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    return downsample_factor.bit_length() - (1 if layout == "compact" else 0)


def _check_levels(downsample_factor: int, channels: tuple[int, ...], layout: str) -> None:
    levels = num_levels(downsample_factor, layout)
    if len(channels) != levels:
        raise ValueError(
            f"downsample_factor {downsample_factor} needs {levels} channel levels in the {layout} layout, "
            f"got channels={tuple(channels)}"
        )


def _mid_block(channels: int, groups: int, eps: float) -> list[nn.Module]:
    return [ResBlock(channels, groups, eps=eps), AttnBlock(channels, groups, eps), ResBlock(channels, groups, eps=eps)]


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, out_channels, H/f, W/f). ``layout``: see the module docstring."""

    def __init__(
        self,
        out_channels: int,
        downsample_factor: int = 8,
        channels: tuple[int, ...] = (64, 128, 256),
        num_res_blocks: int = 1,
        norm_groups: int = 32,
        in_channels: int = 3,
        layout: str = "compact",
    ) -> None:
        super().__init__()
        _check_levels(downsample_factor, channels, layout)
        eps = _NORM_EPS[layout]
        if layout == "compact":
            layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(in_channels * 4, channels[0], 3, padding=1)]
            for level, ch in enumerate(channels):
                if level > 0:
                    layers.append(nn.Conv2d(channels[level - 1], ch, 4, stride=2, padding=1))
                layers += [ResBlock(ch, norm_groups) for _ in range(num_res_blocks)]
        else:
            layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
            width, last = channels[0], len(channels) - 1
            for level, ch in enumerate(channels):
                for _ in range(num_res_blocks):
                    layers.append(ResBlock(width, norm_groups, ch, eps))
                    width = ch
                    if level == last:
                        layers.append(AttnBlock(ch, norm_groups, eps))
                if level != last:
                    layers.append(Downsample(ch))
            layers += _mid_block(channels[-1], norm_groups, eps)
        self.feature_index, self.feature_channels = len(layers) - 1, channels[-1]  # the deepest feature map
        kernel = 1 if layout == "compact" else 3
        layers += [
            _norm(channels[-1], norm_groups, eps),
            nn.SiLU(),
            nn.Conv2d(channels[-1], out_channels, kernel, padding=kernel // 2),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        """``return_feature=True`` also returns the deepest feature map (B, channels[-1], H/f, W/f)."""
        return _run(self.layers, x, self.feature_index if return_feature else None)


class Decoder(nn.Module):
    """(B, in_channels, h, w) -> (B, 3, h*f, w*f). ``channels`` are given fine-to-coarse like the encoder's;
    ``layout``: see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        downsample_factor: int = 8,
        channels: tuple[int, ...] = (64, 128, 256),
        num_res_blocks: int = 2,
        norm_groups: int = 32,
        out_channels: int = 3,
        layout: str = "compact",
    ) -> None:
        super().__init__()
        _check_levels(downsample_factor, channels, layout)
        eps = _NORM_EPS[layout]
        rev = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, rev[0], 3, padding=1)]
        if layout == "taming":
            layers += _mid_block(rev[0], norm_groups, eps)
        for level, ch in enumerate(rev):
            if layout == "compact":
                if level > 0:
                    layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(rev[level - 1], ch, 3, padding=1)]
                layers += [ResBlock(ch, norm_groups) for _ in range(num_res_blocks)]
            else:
                for i in range(num_res_blocks):
                    layers.append(ResBlock(rev[level - 1] if level and not i else ch, norm_groups, ch, eps))
                    if level == 0:
                        layers.append(AttnBlock(ch, norm_groups, eps))
            if level == 0:  # the first stage, at the latent resolution: the feature used for semantic alignment
                self.feature_index, self.feature_channels = len(layers) - 1, ch
            if layout == "taming" and level != len(rev) - 1:
                layers.append(Upsample(ch))
        layers += [_norm(rev[-1], norm_groups, eps), nn.SiLU()]
        if layout == "compact":
            layers += [nn.Conv2d(rev[-1], out_channels * 4, 3, padding=1), nn.PixelShuffle(2)]
        else:
            layers.append(nn.Conv2d(rev[-1], out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        self._last_index = len(layers) - (2 if layout == "compact" else 1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv, used for the GAN loss's adaptive weight."""
        return self.layers[self._last_index].weight

    def forward(self, z: torch.Tensor, return_feature: bool = False):
        """``return_feature=True`` also returns the first-stage feature map (B, channels[-1], h, w)."""
        return _run(self.layers, z, self.feature_index if return_feature else None)
