"""Deep compressed video tokens (DiCoDe style): a clip becomes K quantized tokens, K fixed by the model, not by the
clip's length or frame size, so an autoregressive generator models a few dozen tokens per clip instead of a grid of
hundreds.

The stack is the two tokenizers the suite already has, joined at their latent grids:

- encoder: the causal 3D convolutional encoder of :class:`~.video_tokenizer.VideoTokenizer` down to a (t, h, w)
  feature grid, then the latent-token transformer of :class:`~.titok.OneDTokenizer`: K learned latents read that
  grid (with its space and time position embeddings) and are quantized;
- decoder: the K codes and one mask token per (t, h, w) cell through a transformer, then the causal 3D decoder.

Convolutions carry the image prior (a plain ViT autoencoder learns slowly at this scale, see ``titok``); the
transformers only move information between the grid and the K tokens. With ``raster_prior`` the latents start from
the grid average-pooled to K in (t, h, w) order, so early tokens describe early frames, which is also the order an
autoregressive generator writes them in.

A still image is a one-frame clip: it too becomes K tokens (joint image-video training feeds both).

Semantic regularization (GigaTok, per frame): with ``semantic_dim`` > 0 an MLP projects the decoder transformer's
(t, h, w) cells, and ``forward(videos, semantic_target)`` aligns each latent time step's cells with a frozen teacher's
patch features of the frame that step ends on (:meth:`Video1DTokenizer.semantic_frames`). Everything the decoder
knows came through the K tokens, so what the teacher sees has to be in the codes.

Anchor frame (image-to-video): with ``anchor_frame`` the decoder is also given the clip's first frame, as pixels
and as the causal encoder's first time step (which depends on that frame alone). Its cells are added to every time
step's mask tokens, and the decoder's pixels become a residual over the first frame warped by a scale-space flow
(Agustsson et al., CVPR 2020), so the K tokens only have to code what the first frame does not show: the motion.
``decode(indices, anchor=first_frame)``; training and ``forward`` take the clip's own frame 0. With ``flow_weight``
the warp of each latent step's last frame is also pulled towards a block-matching flow where that frame changed
(:mod:`.motion`): the pixel loss alone moves the warp only within its blur radius.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from .image_tokenizer import reconstruction_losses
from .losses import add_semantic_loss, check_semantic_target
from .motion import block_match_flow, warp_scale_space
from .quantizers import QuantizerOutput, build_quantizer
from .registry import TokenizerFamily, register_family, register_preset
from .titok import _blocks
from .video_tokenizer import VideoDecoder, VideoEncoder, VideoTokenizer, check_video_stack


@register_family
class Video1DTokenizer(ModelMixin, ConfigMixin):
    """Videos (B, T, 3, S, S) in [-1, 1], T = 1 + temporal_factor * k <= ``max_frames``, S = ``image_size``, to
    ``num_tokens`` indices (B, K) and back; images (B, 3, S, S) are one-frame clips. ``decode`` rebuilds
    ``frames`` frames unless told otherwise (the clip length it was trained on).

    ``forward`` returns ``(reconstruction, losses)`` like every tokenizer.
    """

    # Run defaults as the grid video tokenizer's (clip batches plus still scenes), with held-out clips as long as
    # the training clips: the time embeddings of longer clips would be untrained.
    family = TokenizerFamily(
        kind="video1d",
        default_preset="video1d-32",
        takes_videos=True,
        accepts_teacher=True,
        decodes_any_length=True,
        run_defaults={**VideoTokenizer.family.run_defaults, "eval_frames": 9},
    )

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        frames: int = 9,
        max_frames: int = 17,
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        channels: tuple[int, ...] = (32, 64, 128),
        res_blocks: int = 1,
        time_kernel: int = 1,
        norm_groups: int = 32,
        num_tokens: int = 32,
        width: int = 128,
        encoder_depth: int = 2,
        decoder_depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        embed_dim: int = 4,
        quantizer_type: str = "fsq",
        codebook_size: int = 1000,
        quantizer_kwargs: dict | None = None,
        recon_loss: str = "l2",
        quantizer_weight: float = 1.0,
        raster_prior: bool = True,
        semantic_dim: int = 0,
        semantic_weight: float = 0.5,
        anchor_frame: bool = False,
        flow_weight: float = 0.0,
    ) -> None:
        super().__init__()
        check_video_stack(recon_loss, spatial_factor, temporal_factor, channels)
        if image_size % spatial_factor:
            raise ValueError(f"image_size {image_size} must be a multiple of spatial_factor {spatial_factor}")
        for name, n in (("frames", frames), ("max_frames", max_frames)):
            if n < 1 or (n - 1) % temporal_factor:
                raise ValueError(f"{name} must be 1 + {temporal_factor} * k, got {n}")
        if frames > max_frames:
            raise ValueError(f"frames {frames} exceeds max_frames {max_frames}")
        if flow_weight < 0 or (flow_weight and not anchor_frame):
            raise ValueError(f"flow_weight must be >= 0 and needs anchor_frame=True, got {flow_weight}")
        if quantizer_type == "fsq" and not quantizer_kwargs:
            quantizer_kwargs = {"levels": [8, 5, 5, 5]}  # 1000 codes over 4 dimensions
        args = (spatial_factor, temporal_factor, tuple(channels))
        self.encoder_cnn = VideoEncoder(width, *args, res_blocks, norm_groups, time_kernel)
        # with an anchor frame the decoder's pixels are a residual over the warped anchor, plus the warp (flow, scale)
        self.decoder_cnn = VideoDecoder(width, *args, res_blocks, norm_groups, time_kernel, 6 if anchor_frame else 3)
        if anchor_frame:  # start as a copy of the first frame
            for param in self.decoder_cnn.layers[-1].parameters():
                nn.init.zeros_(param)
        cells = (image_size // spatial_factor) ** 2
        steps = 1 + (max_frames - 1) // temporal_factor
        scale = width**-0.5
        # space and time position tables, one pair for the encoder's grid and one for the decoder's mask tokens
        self.grid_space = nn.Parameter(torch.randn(cells, width) * scale)
        self.grid_time = nn.Parameter(torch.randn(steps, width) * scale)
        self.mask_space = nn.Parameter(torch.randn(cells, width) * scale)
        self.mask_time = nn.Parameter(torch.randn(steps, width) * scale)
        self.latents = nn.Parameter(torch.randn(num_tokens, width) * scale)
        self.encoder = _blocks(width, encoder_depth, heads, mlp_ratio)
        self.encoder_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.quantizer = build_quantizer(quantizer_type, embed_dim, codebook_size, **(quantizer_kwargs or {}))
        self.decoder_in = nn.Linear(embed_dim, width)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, width) * scale)
        self.decoder = _blocks(width, decoder_depth, heads, mlp_ratio)
        self.decoder_out = nn.LayerNorm(width)
        if anchor_frame:
            self.anchor_in = nn.Linear(width, width)
        if semantic_dim > 0:
            hidden = max(width, 128)
            self.semantic_proj = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, semantic_dim))

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    latent_frames = VideoTokenizer.latent_frames  # the same causal time grid as the convolutional stack's

    def _as_video(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) or images (B, 3, S, S) -> (B, 3, T, S, S), checked."""
        if videos.ndim == 4:
            videos = videos[:, None]
        s, tf, most = self.config.image_size, self.config.temporal_factor, self.config.max_frames
        if videos.ndim != 5 or tuple(videos.shape[2:]) != (3, s, s):
            raise ValueError(
                f"expected videos (B, T, 3, {s}, {s}) or images (B, 3, {s}, {s}), got {tuple(videos.shape)}"
            )
        t = videos.shape[1]
        if (t - 1) % tf or t > most:
            raise ValueError(f"the number of frames must be 1 + {tf} * k and at most {most}, got {t}")
        return rearrange(videos, "b t c h w -> b c t h w")

    def _positions(self, space: torch.Tensor, time: torch.Tensor, steps: int) -> torch.Tensor:
        """Position embeddings of a (steps, h, w) grid in (t, h, w) order: (steps * h * w, width)."""
        return (time[:steps, None] + space[None]).flatten(0, 1)

    def quantize(self, videos: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """-> quantized tokens (B, K, D) and the quantizer's output (indices (B, K))."""
        return self._quantize(self.encoder_cnn(self._as_video(videos)))

    def _quantize(self, feats: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        grid = rearrange(feats, "b c t h w -> b (t h w) c") + self._positions(
            self.grid_space, self.grid_time, feats.shape[2]
        )
        latents = self.latents.expand(len(grid), -1, -1)
        if self.config.raster_prior:
            latents = latents + F.adaptive_avg_pool1d(grid.transpose(1, 2), len(self.latents)).transpose(1, 2)
        x = torch.cat([grid, latents], dim=1)
        out = self.quantizer(self.encoder_out(self.encoder(x)[:, grid.shape[1] :]))
        return out.quantized, out

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) (or (B, 3, S, S)) in [-1, 1] -> indices (B, K)."""
        return self.quantize(videos)[1].indices.long()

    def semantic_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """The frames a teacher sees for ``forward``'s ``semantic_target``: the last frame of each latent time step,
        (B, T, 3, S, S) -> (B * t, 3, S, S); images (B, 3, S, S) are one-frame clips and stay as they are."""
        return videos if videos.ndim == 4 else videos[:, :: self.config.temporal_factor].flatten(0, 1)

    def anchor_features(self, anchor: torch.Tensor) -> torch.Tensor:
        """The first frame (B, 3, S, S) -> its encoder grid (B, width, 1, h, w): the causal encoder's first time
        step, which sees that frame alone."""
        return self.encoder_cnn(self._as_video(anchor))

    def decode_latents(
        self, z: torch.Tensor, frames: int | None = None, anchor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Quantized tokens (B, K, D) -> videos (B, frames, 3, S, S); ``anchor``: the first frame (B, 3, S, S) in
        [-1, 1], required by (and only by) an ``anchor_frame`` tokenizer."""
        feats = None
        if self.config.anchor_frame:
            if anchor is None or anchor.ndim != 4:
                raise ValueError("this tokenizer decodes given the clip's first frame: pass anchor=(B, 3, S, S)")
            if len(anchor) != len(z):
                raise ValueError(f"expected one anchor frame per clip ({len(z)}), got {len(anchor)}")
            feats = self.anchor_features(anchor)
        elif anchor is not None:
            raise ValueError("this tokenizer was built without anchor_frame: decode without an anchor")
        return self._decode(z, frames, feats, anchor)[0]

    def _decode(
        self,
        z: torch.Tensor,
        frames: int | None,
        anchor_feats: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> videos, the decoder transformer's cells (B, t * h * w, width) and, given an anchor, the warp
        (B, T, 3, S, S)."""
        frames = frames or self.config.frames
        steps, side = self.latent_frames(frames), self.config.image_size // self.config.spatial_factor
        tokens = self.decoder_in(z) + self.token_pos
        mask = self._positions(self.mask_space, self.mask_time, steps).expand(len(z), -1, -1)
        if self.config.raster_prior:  # nearest up-sampling inverts the encoder's pooling
            mask = mask + F.interpolate(tokens.transpose(1, 2), size=mask.shape[1], mode="nearest").transpose(1, 2)
        if anchor_feats is not None:  # every time step starts from the first frame's cells
            first = self.anchor_in(rearrange(anchor_feats[:, :, 0], "b c h w -> b (h w) c"))
            mask = mask + first.repeat(1, steps, 1)
        x = torch.cat([tokens, mask], dim=1)
        cells = self.decoder_out(self.decoder(x)[:, tokens.shape[1] :])
        feats = rearrange(cells, "b (t h w) c -> b c t h w", t=steps, h=side)
        out = rearrange(self.decoder_cnn(feats).float(), "b c t h w -> b t c h w")
        warp = None
        if anchor is not None:
            warp = out[:, :, 3:]
            out = out[:, :, :3] + warp_scale_space(anchor.float(), warp)
        return out, cells, warp

    def decode(
        self, indices: torch.Tensor, frames: int | None = None, anchor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Indices (B, K) -> videos (B, frames, 3, S, S) in roughly [-1, 1] (``frames`` default: config ``frames``)."""
        if indices.ndim != 2 or indices.shape[1] != self.config.num_tokens:
            raise ValueError(f"expected indices (B, {self.config.num_tokens}), got {tuple(indices.shape)}")
        return self.decode_latents(self.quantizer.codes(indices), frames, anchor)

    def round_trip_distance(self, indices: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
        """How far the clips ``videos`` (B, T, 3, S, S) in [-1, 1], decoded from ``indices`` (B, K), are from
        coding back to them: the mean squared distance (B,) between the codes of ``indices`` and the quantized
        encoding of ``videos``. Sampled tokens that the decoder renders faithfully come back close; a combination
        it can only blur (e.g. motion tokens that disagree on the object) does not."""
        if indices.ndim != 2 or indices.shape[1] != self.config.num_tokens or len(indices) != len(videos):
            raise ValueError(
                f"expected indices ({len(videos)}, {self.config.num_tokens}) for {len(videos)} clips, got "
                f"{tuple(indices.shape)}"
            )
        return (self.quantize(videos)[0] - self.quantizer.codes(indices)).pow(2).mean(dim=(1, 2))

    def forward(
        self, videos: torch.Tensor, semantic_target: torch.Tensor | None = None, anchor: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``semantic_target``: a teacher's patch features (B * t, N, semantic_dim) of :meth:`semantic_frames`, or
        None. ``anchor`` (anchored models): the first frame (B, 3, S, S) the decoder is given instead of the clip's
        own, e.g. an image tokenizer's reconstruction of it; the target stays the clip."""
        check_semantic_target(semantic_target, self.config.semantic_dim)
        target = videos if videos.ndim == 5 else videos[:, None]
        feats = self.encoder_cnn(self._as_video(videos))
        z, out = self._quantize(feats)
        if anchor is not None and (not self.config.anchor_frame or anchor.shape != target[:, 0].shape):
            raise ValueError(
                f"anchor: first frames {tuple(target[:, 0].shape)} for an anchor_frame model, got "
                f"{tuple(anchor.shape)} (anchor_frame={self.config.anchor_frame})"
            )
        first = (None, None)
        if self.config.anchor_frame:  # the decoder starts from the given first frame, else from the clip's own
            first = (self.anchor_features(anchor), anchor) if anchor is not None else (feats[:, :, :1], target[:, 0])
        recon, cells, warp = self._decode(z, target.shape[1], *first)
        flat = (recon.flatten(0, 1), target.flatten(0, 1))
        losses = reconstruction_losses(*flat, self.config.recon_loss, out, self.config.quantizer_weight)
        step = self.config.temporal_factor
        if self.config.flow_weight and target.shape[1] > step:  # the frames each latent step ends on
            flow, mask = block_match_flow(target[:, 0].float(), target[:, step::step].float())  # no gradient
            err = (warp[:, step::step, :2] - flow).abs().sum(2, keepdim=True) * mask
            flow_loss = err.sum() / mask.sum().clamp(min=1)
            losses["loss"] = losses["loss"] + self.config.flow_weight * flow_loss
            losses["flow"] = flow_loss.detach()
        if semantic_target is not None:
            side = self.config.image_size // self.config.spatial_factor
            student = rearrange(self.semantic_proj(cells), "b (t h w) d -> (b t) d h w", h=side, w=side)
            add_semantic_loss(losses, student, semantic_target, self.config.semantic_weight)
        return recon, losses


# 9-frame 64x64 clips -> 32 or 64 tokens of 1000 FSQ codes (the grid tokenizer video-f4t4 uses 768 of 1024)
register_preset("video1d-32", Video1DTokenizer, num_tokens=32)
register_preset("video1d-64", Video1DTokenizer, num_tokens=64)
# image-to-video: 32 tokens of what the first frame does not show (decode(indices, anchor=first_frame))
register_preset(
    "video1d-32-anchor",
    Video1DTokenizer,
    num_tokens=32,
    anchor_frame=True,
    flow_weight=0.1,
    quantizer_kwargs={"levels": [8, 8, 4, 4]},  # 1024 codes: the same index range as the frame tokenizer's VQ
)
# for tests and smoke runs
register_preset(
    "video1d-tiny",
    Video1DTokenizer,
    image_size=32,
    frames=5,
    max_frames=9,
    channels=(16, 32, 32),
    norm_groups=8,
    num_tokens=8,
    width=32,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    quantizer_kwargs={"levels": [4, 4]},
    embed_dim=2,
)
