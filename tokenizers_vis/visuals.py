"""Pictures of what a tokenizer does: reconstruction grids for images, PNG strips and GIFs for videos."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from .evaluation import reconstruct


@torch.no_grad()
def _reconstructions(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return reconstruct(model, x.to(device)).clamp(-1, 1).cpu()


def save_reconstruction_grid(
    model, images: torch.Tensor | list[torch.Tensor], path: Path, rows: int = 8, per_row: int = 8
) -> None:
    """Rows of up to ``per_row`` originals (N, 3, H, W), each followed by a row of their reconstructions; a list of
    image sets gives each its share of the ``rows``, in order (at least one row each)."""
    sets = images if isinstance(images, list) else [images]
    counts = [max(1, rows // len(sets))] * len(sets)
    counts[0] += max(0, rows - sum(counts))
    x = torch.cat([s[: n * per_row] for s, n in zip(sets, counts, strict=True)])
    recon = _reconstructions(model, x).reshape(x.shape)  # video tokenizers return one-frame clips
    chunks = [t for i in range(0, len(x), per_row) for t in (x[i : i + per_row], recon[i : i + per_row])]
    grid = torch.cat([torch.cat([c, c.new_full((per_row - len(c), *c.shape[1:]), -1.0)]) for c in chunks])
    save_image(grid * 0.5 + 0.5, path, nrow=per_row, padding=1)


def save_video_strip(videos: torch.Tensor, path: Path) -> None:
    """Clips (N, T, 3, H, W) in [-1, 1] as a PNG with one clip per row, frames left to right."""
    save_image(videos.flatten(0, 1) * 0.5 + 0.5, path, nrow=videos.shape[1], padding=1)


def save_gif(videos: torch.Tensor, path: Path, fps: int = 8, per_row: int = 4) -> None:
    """Clips (N, T, 3, H, W) in [-1, 1] tiled ``per_row`` to a row, played together as one looping GIF."""
    frames = []
    for t in range(videos.shape[1]):
        tile = make_grid(videos[:, t] * 0.5 + 0.5, nrow=per_row, padding=1).clamp(0, 1)
        frames.append(Image.fromarray((tile.permute(1, 2, 0) * 255).round().byte().numpy()))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def save_video_reconstructions(model, videos: torch.Tensor, out_dir: Path, count: int = 8) -> None:
    """``reconstructions.png``: each held-out clip's row of frames followed by its reconstruction's row;
    ``reconstructions.gif``: originals (top) and reconstructions (bottom) playing side by side."""
    x = videos[:count]
    recon = _reconstructions(model, x)
    save_video_strip(torch.stack([x, recon], dim=1).flatten(0, 1), out_dir / "reconstructions.png")
    save_gif(torch.cat([x[:4], recon[:4]]), out_dir / "reconstructions.gif")


def save_reconstructions(
    model, heldout: torch.Tensor, out_dir: Path, ood: dict[str, torch.Tensor] | None = None
) -> None:
    """The pictures for a finished run, images or videos by the shape of ``heldout``. Image runs:
    ``reconstructions.png`` shows held-out images, then each out-of-distribution set of ``ood`` (by rows, in order);
    video runs show the ``ood`` images (one-frame clips) in ``reconstructions_ood.png``."""
    ood_sets = list((ood or {}).values())
    if heldout.ndim == 5:
        save_video_reconstructions(model, heldout, out_dir)
        if ood_sets:
            save_reconstruction_grid(model, ood_sets, out_dir / "reconstructions_ood.png", rows=2 * len(ood_sets))
    else:
        save_reconstruction_grid(model, [heldout, *ood_sets], out_dir / "reconstructions.png")
