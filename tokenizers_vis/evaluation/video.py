"""Grading generated clips of one moving shape against their prompts ``"a <size> <colour> <shape> moving
<direction>"``.

Grading reuses the still-scene :class:`~tokenizers_vis.evaluation.grader.AttributeGrader`: it was trained on objects
sitting in the cells of a 3x3 grid, while a moving object crosses cell borders (read in place, many of its shapes are
misread), so each graded frame is first shifted to put the object at the centre of the middle cell.

    report = grade_videos(load_grader(), out.frames * 2 - 1, prompts)  # out: a TextToVideoPipeline's output
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.language import DIRECTIONS, parse_video_prompt
from .grader import GRID, AttributeGrader

# Object pixels are this far (RGB distance, [0, 1] units) from the frame's median colour. A textured background
# strays at most 0.15 per channel (0.26) from its base colour, the median; every object colour is >= 0.49 from
# every background colour.
OBJECT_DISTANCE = 0.35
# A clip whose object moves less than this (fraction of the image side) has no direction; real clips move 0.4.
MIN_TRAVEL = 0.1
_UNIT_DIRECTIONS = torch.nn.functional.normalize(torch.tensor(list(DIRECTIONS.values())), dim=1)


def object_centroids(frames: torch.Tensor) -> torch.Tensor:
    """Frames (N, 3, H, W) in [-1, 1] -> (N, 2) centroids (x, y) in pixels of the pixels that differ from the
    frame's median colour (the background); NaN where no pixel does."""
    x = (frames.float() + 1) / 2
    background = x.flatten(2).median(dim=-1).values[..., None, None]
    mask = ((x - background).norm(dim=1) > OBJECT_DISTANCE).float()  # (N, H, W)
    h, w = mask.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    count = mask.sum((1, 2))
    centroids = torch.stack([(mask * xs).sum((1, 2)), (mask * ys).sum((1, 2))], dim=1) / count[:, None]
    return torch.where(count[:, None] > 0, centroids, float("nan"))


def _centred(frame: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """The frame (3, H, W) shifted cyclically (the object stays whole) to put ``centroid`` (x, y) at its centre."""
    h, w = frame.shape[-2:]
    shift = (round((h - 1) / 2 - centroid[1].item()), round((w - 1) / 2 - centroid[0].item()))
    return frame.roll(shift, dims=(1, 2))


@torch.no_grad()
def _read_objects(grader: AttributeGrader, frames: torch.Tensor, centroids: torch.Tensor) -> list[dict | None]:
    """The grader's shape / colour / size of the object at each centroid (None where there is none), read in the
    middle cell of the frame centred on it."""
    found = ~torch.isnan(centroids).any(dim=1)
    centred = torch.stack([_centred(f, c) if ok else f for f, c, ok in zip(frames, centroids, found, strict=True)])
    logits = grader(centred.to(grader.device, grader.dtype))
    middle = GRID * GRID // 2
    vocab = {"shape": grader.config.shapes, "color": grader.config.colors, "size": grader.config.sizes}
    ids = {name: logits[name][:, middle].argmax(-1).tolist() for name in vocab}
    return [{name: vocab[name][ids[name][i]] for name in vocab} if ok else None for i, ok in enumerate(found)]


def _direction(displacement: torch.Tensor) -> str | None:
    """Displacement (dx, dy) in image sides -> the nearest :data:`DIRECTIONS` name, None if it is too short."""
    if torch.isnan(displacement).any() or displacement.norm() < MIN_TRAVEL:
        return None
    return list(DIRECTIONS)[int((_UNIT_DIRECTIONS @ displacement).argmax())]


def grade_videos(
    grader: AttributeGrader, videos: torch.Tensor, prompts: Sequence[str], batch_size: int = 256
) -> dict[str, Any]:
    """Scores one-object clips (N, T, 3, H, W) in [-1, 1] against prompts ``"a <size> <colour> <shape> moving
    <direction>"``.

    The object is located in the first and last frames as the centroid of the pixels that differ from the frame's
    median colour; the grader reads its shape, colour and size there, and the motion is the direction nearest to
    the centroid's displacement. Returns per-clip bools ``appearance`` (shape and colour right in both frames),
    ``motion`` (direction right) and ``correct`` (both), their means ``appearance_accuracy``,
    ``direction_accuracy`` and ``accuracy``, per-attribute accuracies over the 2N graded frames (``shape``,
    ``color``, ``size``) and ``predictions`` (per clip: ``first`` / ``last`` objects or None, ``direction`` or
    None).
    """
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected videos of shape (N, T, 3, H, W), got {tuple(videos.shape)}")
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
    targets = [parse_video_prompt(p) for p in prompts]  # parse first: a bad prompt fails before any compute
    ends = videos[:, [0, -1]].flatten(0, 1)  # (2N, 3, H, W): first, last, first, last, ...
    centroids, objects = [], []
    for i in range(0, len(ends), batch_size):
        chunk = ends[i : i + batch_size]
        centroids.append(object_centroids(chunk))
        objects += _read_objects(grader, chunk, centroids[-1])
    centroids = torch.cat(centroids)
    side = torch.tensor([videos.shape[-1], videos.shape[-2]], dtype=torch.float32)  # (W, H)
    displacements = (centroids[1::2] - centroids[0::2]) / side

    hits = {name: 0 for name in ("shape", "color", "size")}
    appearance, motion, predictions = [], [], []
    for k, target in enumerate(targets):
        first, last = objects[2 * k], objects[2 * k + 1]
        for seen in (first, last):
            for name in hits:
                hits[name] += seen is not None and seen[name] == target[name]
        right = [seen is not None and all(seen[a] == target[a] for a in ("shape", "color")) for seen in (first, last)]
        direction = _direction(displacements[k])
        appearance.append(all(right))
        motion.append(direction == target["direction"])
        predictions.append({"first": first, "last": last, "direction": direction})
    n = max(len(targets), 1)
    correct = [a and m for a, m in zip(appearance, motion, strict=True)]
    return {
        "correct": correct,
        "appearance": appearance,
        "motion": motion,
        "accuracy": sum(correct) / n,
        "appearance_accuracy": sum(appearance) / n,
        "direction_accuracy": sum(motion) / n,
        **{name: count / (2 * n) for name, count in hits.items()},
        "predictions": predictions,
    }
