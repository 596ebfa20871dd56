"""2D image tokenizer: CNN encoder -> quantizer -> CNN decoder, at a downsampling factor of 8 or 16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from .convnets import Decoder, Encoder
from .losses import add_semantic_loss, check_semantic_target
from .quantizers import QuantizerOutput, build_quantizer
from .registry import DEFAULT_PRESET, TokenizerFamily, register_family, register_preset

RECON_LOSSES = ("l1", "l2", "l1+l2")
SEMANTIC_LAYERS = ("decoder", "encoder", "quantized")


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


def check_image_batch(images: torch.Tensor, factor: int) -> None:
    """Refuses anything but (B, 3, H, W) with H and W divisible by the tokenizer's downsampling ``factor``."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(
            f"expected images of shape (B, 3, H, W) with H and W divisible by {factor}, got {tuple(images.shape)}"
        )


def reconstruction_losses(
    recon: torch.Tensor, target: torch.Tensor, kind: str, out: QuantizerOutput, quantizer_weight: float
) -> dict[str, torch.Tensor]:
    """The losses dict every tokenizer's ``forward`` returns: ``loss`` (pixel loss + weighted quantizer loss, to
    back-propagate), its detached parts and the batch's codebook statistics."""
    rec = reconstruction_loss(recon, target, kind)
    return {
        "loss": rec + quantizer_weight * out.aux_loss,
        "recon": rec.detach(),
        "quantizer": out.aux_loss.detach(),
        "usage": out.usage,
        "perplexity": out.perplexity,
    }


@register_family
class ImageTokenizer(ModelMixin, ConfigMixin):
    """Images in [-1, 1], (B, 3, H, W) with H and W divisible by ``downsample_factor``, to a grid of
    discrete indices (B, H/f, W/f) (residual VQ: (B, H/f, W/f, Q)) and back.

    ``forward`` returns ``(reconstruction, losses)``: ``losses["loss"]`` is the weighted total to
    back-propagate; the other entries are its parts and detached codebook statistics.

    Semantic regularization (GigaTok): with ``semantic_dim`` > 0, a small 1x1-conv MLP projects an intermediate
    feature map (``semantic_layer``: the decoder's first stage by default, the encoder's deepest level, or the
    quantized latents themselves, which puts the teacher's information into the codes) to ``semantic_dim``
    channels, and ``forward(images, semantic_target)`` adds ``semantic_weight * (1 - cos)`` against a frozen
    teacher's patch features (:mod:`tokenizers_vis.teacher`). The projection is only used in training.

    ``layout``: the encoder / decoder layout, "compact" or "taming" (LlamaGen's VQGAN layers; see
    :mod:`tokenizers_vis.convnets`). ``latent_channels`` > 0 makes the encoder output that many channels and adds
    1x1 convolutions from them to the ``embed_dim``-wide codes (``quant_conv``) and back (``post_quant_conv``), as
    LlamaGen's 256 latent channels around 8-dimensional codes; 0 (the default) has the encoder emit the codes'
    width directly.
    """

    family = TokenizerFamily(kind="vq2d", default_preset=DEFAULT_PRESET, accepts_teacher=True, supports_gan=True)

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
        semantic_dim: int = 0,
        semantic_layer: str = "decoder",
        semantic_weight: float = 0.5,
        layout: str = "compact",
        latent_channels: int = 0,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {recon_loss!r}; accepted: {', '.join(RECON_LOSSES)}")
        if semantic_layer not in SEMANTIC_LAYERS:
            raise ValueError(f"unknown semantic_layer {semantic_layer!r}; accepted: {', '.join(SEMANTIC_LAYERS)}")
        latent = latent_channels or embed_dim
        self.encoder = Encoder(
            latent, downsample_factor, tuple(channels), encoder_res_blocks, norm_groups, layout=layout
        )
        self.decoder = Decoder(
            latent, downsample_factor, tuple(channels), decoder_res_blocks, norm_groups, layout=layout
        )
        # identities (no weights) unless the latents are wider than the codes
        self.quant_conv = nn.Conv2d(latent, embed_dim, 1) if latent_channels else nn.Identity()
        self.post_quant_conv = nn.Conv2d(embed_dim, latent, 1) if latent_channels else nn.Identity()
        self.quantizer = build_quantizer(quantizer_type, embed_dim, codebook_size, **(quantizer_kwargs or {}))
        if semantic_dim > 0:
            width = embed_dim if semantic_layer == "quantized" else getattr(self, semantic_layer).feature_channels
            hidden = max(width, 128)
            self.semantic_proj = nn.Sequential(
                nn.Conv2d(width, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, semantic_dim, 1)
            )

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        check_image_batch(images, self.config.downsample_factor)

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """(B, 3, H, W) -> quantized latents (B, D, h, w) and the quantizer's output (indices (B, h*w[, Q]))."""
        self._check_images(images)
        return self._quantize(self.encoder(images))

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Encoder output (B, latent, h, w) -> quantized latents (B, D, h, w) and the quantizer's output."""
        z = self.quant_conv(z)
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
        return self.decoder(self.post_quant_conv(z)).float()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w[, Q]) -> images (B, 3, h*f, w*f) in roughly [-1, 1]."""
        b, h, w = indices.shape[:3]
        codes = self.quantizer.codes(indices.reshape(b, h * w, *indices.shape[3:]))
        return self.decode_latents(rearrange(codes, "b (h w) d -> b d h w", h=h, w=w))

    def forward(
        self, images: torch.Tensor, semantic_target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``semantic_target``: teacher patch features (B, N, semantic_dim) for the semantic loss, or None."""
        self._check_images(images)
        check_semantic_target(semantic_target, self.config.semantic_dim)
        semantic = semantic_target is not None
        encoded = self.encoder(images, return_feature=semantic and self.config.semantic_layer == "encoder")
        z, out = self._quantize(encoded[0] if isinstance(encoded, tuple) else encoded)
        decoded = self.decoder(
            self.post_quant_conv(z), return_feature=semantic and self.config.semantic_layer == "decoder"
        )
        recon = (decoded[0] if isinstance(decoded, tuple) else decoded).float()
        losses = reconstruction_losses(recon, images, self.config.recon_loss, out, self.config.quantizer_weight)
        if semantic:
            layer = self.config.semantic_layer
            feature = z if layer == "quantized" else (encoded if layer == "encoder" else decoded)[1]
            add_semantic_loss(losses, self.semantic_proj(feature), semantic_target, self.config.semantic_weight)
        return recon, losses


_F8 = dict(downsample_factor=8, channels=(64, 128, 256))
# cosine VQ, 1024 codes of dim 32, f=8 -> 64 tokens for a 64x64 image (the family benchmark's reference row)
register_preset("vq-f8", ImageTokenizer, **_F8, quantizer_type="vq", codebook_size=1024)
# the default: f=4, 256 tokens for a 64x64 image. Small shapes keep their corners (at f=8 they decode as blobs),
# which the text-to-image generator needs, and 64 tokens of 10 bits cannot hold free-colour edges: on images the
# run never trained on, f=8 stays about 2 dB below f=4 at equal steps, and f=4 steps are cheaper on a CPU
register_preset(
    "vq-f4", ImageTokenizer, downsample_factor=4, channels=(64, 128), quantizer_type="vq", codebook_size=1024
)
register_preset("vq-f16", ImageTokenizer, downsample_factor=16, channels=(64, 128, 256, 256), codebook_size=1024)
register_preset("rvq-f8", ImageTokenizer, **_F8, quantizer_type="rvq", codebook_size=1024)
register_preset(
    "fsq-f8", ImageTokenizer, **_F8, quantizer_type="fsq", embed_dim=8, quantizer_kwargs={"levels": [8, 5, 5, 5]}
)
register_preset("lfq-f8", ImageTokenizer, **_F8, quantizer_type="lfq", embed_dim=16, codebook_size=1024)
# a few hundred thousand parameters: for tests and smoke runs
register_preset(
    "vq-f8-tiny",
    ImageTokenizer,
    downsample_factor=8,
    channels=(16, 32, 32),
    norm_groups=8,
    codebook_size=64,
    embed_dim=8,
    encoder_res_blocks=1,
    decoder_res_blocks=1,
)
# LlamaGen's VQ-16 and VQ-8 (FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py) layer for layer: base
# width 128 with multipliers (1, 1, 2, 2, 4) / (1, 2, 2, 4), 2 residual blocks per encoder level and 3 per decoder
# level, 256 latent channels around 16384 l2-normalised (cosine) codes of dimension 8; about 72 M parameters.
# Quantizer training keeps the project's recipe (EMA codebook, k-means init, dead-code replacement).
_LLAMAGEN = dict(
    layout="taming",
    encoder_res_blocks=2,
    decoder_res_blocks=3,
    latent_channels=256,
    embed_dim=8,
    quantizer_type="vq",
    codebook_size=16384,
)
register_preset("llamagen-vq16", ImageTokenizer, **_LLAMAGEN, downsample_factor=16, channels=(128, 128, 256, 256, 512))
register_preset("llamagen-vq8", ImageTokenizer, **_LLAMAGEN, downsample_factor=8, channels=(128, 256, 256, 512))
