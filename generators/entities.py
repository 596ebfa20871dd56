"""Entities for next-X generation (xAR): reversible mappings between a latent grid ``(B, C, h, w)`` and an ordered
sequence of entities flattened to ``(B, L, C)``, entity e occupying slots ``[offsets[e], offsets[e + 1])``.

- ``token``: every grid position alone, raster order (E = h * w).
- ``cell``: k x k neighbouring positions, cells in raster order (E = h * w / k^2).
- ``subsample``: k x k positions spread over the image, h / k rows and w / k columns apart (E = h * w / k^2).
- ``scale``: a residual pyramid, coarse to fine (VAR style); entity s is the residual at resolution s.
- ``image``: the whole grid at once (E = 1).

``context_inputs`` gives every slot its teacher-forcing input computed only from earlier entities, which together
with :func:`block_causal_mask` makes the model autoregressive over entities and parallel within one.

Entities are modules holding only non-persistent buffers, so they follow the generator's device and never enter its
saved weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENTITIES = ("token", "cell", "subsample", "scale", "image")


class Entities(nn.Module):
    """Common bookkeeping: ``sizes`` (elements per entity), ``offsets``, ``positions`` ``(L, 2)`` integer grid
    coordinates (for RoPE) and ``entity_ids`` ``(L,)`` (the entity of every slot)."""

    def __init__(self, grid: tuple[int, int], sizes: list[int], positions: torch.Tensor) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.sizes = tuple(sizes)
        self.offsets = (0, *torch.tensor(sizes).cumsum(0).tolist())
        self.register_buffer("positions", positions.long(), persistent=False)
        ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("entity_ids", ids, persistent=False)

    @property
    def num_entities(self) -> int:
        return len(self.sizes)

    @property
    def length(self) -> int:
        """L, the number of slots (elements) over all entities."""
        return self.offsets[-1]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Latent grid ``(B, C, h, w)`` -> entity sequence ``(B, L, C)``."""
        raise NotImplementedError

    def merge(self, seq: torch.Tensor) -> torch.Tensor:
        """Entity sequence ``(B, L, C)`` -> latent grid ``(B, C, h, w)``; inverts :meth:`split`."""
        raise NotImplementedError

    def context_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing input ``(B, L, C)`` of every slot, from entities before the slot's own only."""
        raise NotImplementedError

    def context_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """Per-entity noise levels ``(B, E)`` -> the level of each slot's context input ``(B, L)``. The first
        entity's context (zeros) carries no information, like pure noise, so it gets level 1: level 0 then always
        means a clean context, never "first entity"."""
        raise NotImplementedError


class PermutedEntities(Entities):
    """Equal-size entities that reorder the grid positions (token, cell, subsample, image). ``order`` ``(h * w,)``
    lists flat grid indices in sequence order. Entity e's slots see entity e - 1 element by element (zeros for
    e = 0), so slot j of a cell sees the same in-cell position of the previous cell."""

    def __init__(self, grid: tuple[int, int], order: torch.Tensor, size: int) -> None:
        h, w = grid
        positions = torch.stack([order // w, order % w], dim=-1)
        super().__init__(grid, [size] * (h * w // size), positions)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", order.argsort(), persistent=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)[:, :, self.order].transpose(1, 2)

    def merge(self, seq: torch.Tensor) -> torch.Tensor:
        return seq[:, self.inverse].transpose(1, 2).unflatten(2, self.grid)

    def context_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        size = self.sizes[0]
        return torch.cat([torch.zeros_like(seq[:, :size]), seq[:, : seq.shape[1] - size]], dim=1)

    def context_levels(self, levels: torch.Tensor) -> torch.Tensor:
        shifted = torch.cat([torch.ones_like(levels[:, :1]), levels[:, :-1]], dim=1)
        return shifted[:, self.entity_ids]


class ScaleEntities(Entities):
    """Coarse-to-fine residual pyramid. With U = bilinear upsampling to the full grid and D_s = area downsampling
    to scale s: r_s = D_s(x - sum of U(r) over coarser scales), the last (full-resolution) scale taking the whole
    remaining residual, so ``merge`` (the sum of U(r_s)) restores x up to float error.

    Scale s holds ``(s, s * w / h)`` elements in raster order. Its RoPE positions are the full-grid cells holding
    the centres of its elements, so one image location keeps about the same coordinates at every scale.
    Entity s's context is the sum of the coarser scales, downsampled to resolution s (VAR's teacher forcing).
    """

    def __init__(self, grid: tuple[int, int], scales: tuple[int, ...]) -> None:
        h, w = grid
        resolutions = [(s, s * w // h) for s in scales]
        positions = []
        for sh, sw in resolutions:
            rows = (2 * torch.arange(sh) + 1) * h // (2 * sh)
            cols = (2 * torch.arange(sw) + 1) * w // (2 * sw)
            positions.append(torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).flatten(0, 1))
        super().__init__(grid, [sh * sw for sh, sw in resolutions], torch.cat(positions))
        self.resolutions = resolutions

    def _up(self, r: torch.Tensor) -> torch.Tensor:
        if tuple(r.shape[-2:]) == self.grid:
            return r
        return F.interpolate(r, size=self.grid, mode="bilinear", align_corners=False)

    @staticmethod
    def _down(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="area")

    def _parts(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """``(B, L, C)`` -> one ``(B, C, s_h, s_w)`` residual per scale."""
        parts = seq.split(self.sizes, dim=1)
        return [p.transpose(1, 2).unflatten(2, res) for p, res in zip(parts, self.resolutions, strict=True)]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        acc, parts = torch.zeros_like(x), []
        for res in self.resolutions[:-1]:
            r = self._down(x - acc, res)
            parts.append(r)
            acc = acc + self._up(r)
        parts.append(x - acc)
        return torch.cat([p.flatten(2).transpose(1, 2) for p in parts], dim=1)

    def merge(self, seq: torch.Tensor) -> torch.Tensor:
        return sum(self._up(r) for r in self._parts(seq))

    def context_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        parts = self._parts(seq)
        acc, out = torch.zeros_like(parts[-1]), []
        for r, res in zip(parts, self.resolutions, strict=True):
            out.append(self._down(acc, res).flatten(2).transpose(1, 2))
            acc = acc + self._up(r)
        return torch.cat(out, dim=1)

    def context_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """The mean level of the coarser scales summed into the context."""
        count = torch.arange(1, levels.shape[1] + 1, device=levels.device)
        mean = levels.cumsum(1) / count
        return torch.cat([torch.ones_like(levels[:, :1]), mean[:, :-1]], dim=1)[:, self.entity_ids]


def default_scales(h: int) -> tuple[int, ...]:
    """Powers of two below h, then h: 1, 2, 4, 8, 16 for a 16-row grid."""
    scales, s = [], 1
    while s < h:
        scales.append(s)
        s *= 2
    return (*scales, h)


def make_entity(kind: str, grid: tuple[int, int], k: int = 2, scales: tuple[int, ...] | None = None) -> Entities:
    """Entities of ``kind`` over an ``(h, w)`` grid; ``k`` is the cell / subsample side, ``scales`` the side
    lengths (rows) of the scale entities, increasing and ending at h (default :func:`default_scales`)."""
    if kind not in ENTITIES:
        raise ValueError(f"unknown entity {kind!r}; accepted: {', '.join(ENTITIES)}")
    h, w = grid
    flat = torch.arange(h * w)
    if kind == "token":
        return PermutedEntities(grid, flat, 1)
    if kind == "image":
        return PermutedEntities(grid, flat, h * w)
    if kind in ("cell", "subsample"):
        if k < 1 or h % k or w % k:
            divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
            raise ValueError(f"k={k} must divide the grid {h}x{w}; accepted k: {', '.join(map(str, divisors))}")
        if kind == "cell":  # (cell row, row in cell, cell col, col in cell) -> cells in raster order
            order = flat.view(h // k, k, w // k, k).permute(0, 2, 1, 3)
        else:  # (row block, row in block, col block, col in block): one entity = one offset inside the blocks
            order = flat.view(k, h // k, k, w // k).permute(1, 3, 0, 2)
        return PermutedEntities(grid, order.flatten(), k * k)
    scales = default_scales(h) if scales is None else tuple(int(s) for s in scales)
    valid = [s for s in range(1, h + 1) if s * w % h == 0]
    if (
        not scales
        or any(b <= a for a, b in zip(scales, scales[1:], strict=False))
        or scales[-1] != h
        or any(s not in valid for s in scales)
    ):
        raise ValueError(
            f"scales {scales} must increase and end at the grid height {h}, each from {', '.join(map(str, valid))} "
            f"(scale s has s x s*{w}/{h} elements)"
        )
    return ScaleEntities(grid, scales)


def block_causal_mask(entities: Entities, prefix_length: int) -> torch.Tensor:
    """Bool ``(T, T)`` attention mask (True = attend), T = prefix_length + L: the condition prefix attends to
    itself fully, the slots of entity e to the prefix and to every slot of entities <= e."""
    prefix = torch.full((prefix_length,), -1, device=entities.entity_ids.device)
    ids = torch.cat([prefix, entities.entity_ids])
    return ids[None, :] <= ids[:, None]
