"""Motion between a clip's first frame (the anchor) and its later frames, for the anchored video tokenizer.

- :func:`warp_scale_space`: scale-space flow (Agustsson et al., CVPR 2020), how the decoder moves the anchor;
- :func:`block_match_flow`: motion estimation by exhaustive search, as video codecs do it, which gives that flow a
  target where it changed. A warp learned from the pixel loss alone only gets a gradient within its blur radius, so
  an object that travels further than it is wide is painted by the residual instead of carried by the flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def scale_space(images: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """(B, C, S, S) -> (B, C, levels, S, S): the image blurred at 1, 2, 4, ... pixels (area down, bilinear up)."""
    size = images.shape[-2:]
    stack = [images]
    for level in range(1, levels):
        small = F.avg_pool2d(images, 2**level)
        stack.append(F.interpolate(small, size=size, mode="bilinear", align_corners=False))
    return torch.stack(stack, dim=2)


def warp_scale_space(anchor: torch.Tensor, warp: torch.Tensor) -> torch.Tensor:
    """Every output pixel samples the anchor (B, C, S, S) displaced by a flow and blurred by a scale, ``warp``
    (B, T, 3, S, S) = (dx, dy in grid units: 2 / S per pixel, scale logit) -> (B, T, C, S, S)."""
    h, w = warp.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=warp.device),
        torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=warp.device),
        indexing="ij",
    )
    z = 2 * torch.sigmoid(warp[:, :, 2] - 2) - 1  # a zero output samples nearly the sharp level
    grid = torch.stack([xs + warp[:, :, 0], ys + warp[:, :, 1], z], dim=-1)  # (B, T, S, S, 3)
    # the frames are the output's depth: one pass over the anchor's (level, y, x) volume, no copy per frame
    out = F.grid_sample(scale_space(anchor), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(out, "b c t h w -> b t c h w")


@torch.no_grad()
def block_match_flow(
    anchor: torch.Tensor,
    frames: torch.Tensor,
    radius: int = 28,
    scale: int = 2,
    patch: int = 5,
    margin: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel of ``frames`` (B, T, C, S, S), the displacement (within ``radius`` pixels, in steps of
    ``scale``) at which the anchor (B, C, S, S) matches its ``patch`` x ``patch`` neighbourhood best, both taken at
    1 / ``scale`` resolution; ties (flat regions) go to the smallest motion.

    -> flow (B, T, 2, S, S) in :func:`warp_scale_space`'s units (the frame's pixel p looks like the anchor's at
    p + flow) and a mask (B, T, 1, S, S) of the pixels that changed (by more than ``margin``) and whose best match
    beats no motion: where the flow is worth learning from."""
    b, t, _, size, _ = frames.shape
    if size % scale or anchor.shape != (b, *frames.shape[2:]):
        raise ValueError(f"expected an anchor (B, C, S, S) for frames (B, T, C, S, S), S a multiple of {scale}")
    small_anchor, small = F.avg_pool2d(anchor, scale), F.avg_pool2d(frames.flatten(0, 1), scale)
    r, side = radius // scale, size // scale
    padded = F.pad(small_anchor, (r, r, r, r), mode="replicate")
    shifts = torch.arange(-r, r + 1, device=frames.device, dtype=frames.dtype)
    penalty = 1e-4 * shifts**2 / r**2
    targets = small.unflatten(0, (b, t))[:, :, None]  # (B, T, 1, C, s, s)
    best = torch.full((b * t, 1, side, side), float("inf"), device=frames.device, dtype=frames.dtype)
    arg = torch.zeros(2, *best.shape, device=frames.device, dtype=frames.dtype)
    for dy in range(-r, r + 1):
        rows = padded[..., r + dy : r + dy + side, :].unfold(-1, side, 1)  # every dx at once: (B, C, s, 2r+1, s)
        diff = (targets - rearrange(rows, "b c h k w -> b 1 k c h w")).pow(2).sum(3).flatten(0, 2)[:, None]
        cost = F.avg_pool2d(diff, patch, 1, patch // 2, count_include_pad=False).view(b * t, 2 * r + 1, side, side)
        cost = cost + (penalty + penalty[r + dy])[:, None, None]
        if dy == 0:
            zero = cost[:, r : r + 1]
        low, k = cost.min(1, keepdim=True)
        better = low < best
        best = torch.where(better, low, best)
        arg = torch.where(better, torch.stack([shifts[k], torch.full_like(low, dy)]), arg)
    flow = rearrange(arg, "k n 1 h w -> n k h w") * (2 * scale / size)
    changed = (targets[:, :, 0] - small_anchor[:, None]).abs().amax(2, keepdim=True).flatten(0, 1) > margin
    mask = changed & (best < zero - margin**2)

    def up(v: torch.Tensor) -> torch.Tensor:
        return F.interpolate(v.float(), size=(size, size), mode="nearest").unflatten(0, (b, t))

    return up(flow), up(mask)
