"""Text-to-video: prompt encoder -> next-token generator over ``(t, h, w)`` token grids -> causal video tokenizer,
and grading generated moving-shape clips against their prompts.

The pipeline is a :class:`~generators.pipeline.TextToImagePipeline` whose generator samples a grid of latent frames
and whose tokenizer decodes it to a clip, so folders, sampling defaults and ``from_pretrained`` are shared::

    pipe = TextToVideoPipeline.from_pretrained("runs/video_gen/pipeline")
    out = pipe(["a large red circle moving to the left"], num_videos_per_prompt=4, seed=0)
    out.save_gif("clips.gif")                                  # out.frames: (B, T, 3, H, W) in [0, 1]
    report = grade_videos(load_grader(), out.frames * 2 - 1, prompts)

Grading reuses the still-scene :class:`~generators.grading.AttributeGrader`: it was trained on objects sitting in
the cells of a 3x3 grid, while a moving object crosses cell borders (read in place it gets ~75 % of shapes right),
so each graded frame is first shifted to put the object at the centre of the middle cell (100 % on real clips).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tokenizers_vis.data import COLORS, DIRECTIONS, SHAPES, SIZES
from tokenizers_vis.visuals import save_gif, save_video_strip

from .grading import GRID, AttributeGrader
from .pipeline import TextToImagePipeline

VIDEO_GRAMMAR = "a <size> <colour> <shape> moving <direction>"
# Object pixels are this far (RGB distance, [0, 1] units) from the frame's median colour. A textured background
# strays at most 0.15 per channel (0.26) from its base colour, the median; every object colour is >= 0.49 from
# every background colour.
OBJECT_DISTANCE = 0.35
# A clip whose object moves less than this (fraction of the image side) has no direction; real clips move 0.4.
MIN_TRAVEL = 0.1
_UNIT_DIRECTIONS = torch.nn.functional.normalize(torch.tensor(list(DIRECTIONS.values())), dim=1)


@dataclass
class VideoPipelineOutput:
    videos: list[list[Image.Image]]  # per clip, its frames
    frames: torch.Tensor  # (B, T, 3, H, W) in [0, 1]
    tokens: torch.Tensor  # (B, t, h, w)

    def save_gif(self, path: str | Path, per_row: int = 4, fps: int = 8) -> None:
        """All clips tiled ``per_row`` to a row, playing together as one looping GIF."""
        save_gif(self.frames * 2 - 1, Path(path), fps=fps, per_row=per_row)

    def save_strip(self, path: str | Path) -> None:
        """A PNG with one clip per row, frames left to right."""
        save_video_strip(self.frames * 2 - 1, Path(path))


class TextToVideoPipeline(TextToImagePipeline):
    """``pipe(["a small blue star moving up"], num_videos_per_prompt=4)`` -> clips of ``1 + 4 (t - 1)`` frames.

    Needs a prompt-conditioned generator over ``(t, h, w)`` grids and a
    :class:`~tokenizers_vis.VideoTokenizer`. Saved and loaded like the image pipeline (``model_index.json`` names
    this class). CLIP re-ranking (``num_candidates`` > 1) is for still images only.
    """

    def __init__(self, tokenizer, generator, prompt_encoder, defaults: dict | None = None):
        config = generator.config
        if config.condition != "prompt" or len(config.grid_size) != 3:
            raise ValueError(
                "a text-to-video pipeline needs a prompt-conditioned generator over (t, h, w) grids, got "
                f"condition={config.condition!r}, grid_size={tuple(config.grid_size)}"
            )
        super().__init__(tokenizer, generator, prompt_encoder, defaults)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_videos_per_prompt: int = 1,
        seed: int | None = None,
        use_cache: bool = True,
        progress: bool = False,
        **sampling,
    ) -> VideoPipelineOutput:
        """Sampling keywords override the pipeline's defaults, as for images. Clips come in prompt order,
        ``num_videos_per_prompt`` per prompt."""
        sampling = self._sampling(sampling)
        if int(sampling.pop("num_candidates")) != 1:
            raise ValueError("CLIP re-ranking (num_candidates > 1) is for still images; use num_candidates=1")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        wanted = [p for p in prompts for _ in range(num_videos_per_prompt)]
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        tokens = self.generator.generate(
            self.prompt_encoder(wanted), generator=generator, use_cache=use_cache, progress=progress, **sampling
        )
        frames = ((self.tokenizer.decode(tokens).float().clamp(-1, 1) + 1) / 2).cpu()
        arrays = (frames.permute(0, 1, 3, 4, 2) * 255).round().byte().numpy()
        videos = [[Image.fromarray(frame) for frame in clip] for clip in arrays]
        return VideoPipelineOutput(videos, frames, tokens.cpu())


def is_video_pipeline(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved :class:`TextToVideoPipeline` (rather than a text-to-image one)."""
    index = Path(folder) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == TextToVideoPipeline.__name__


def write_video_samples(pipe: TextToVideoPipeline, prompts: list[str], path: Path, seed: int, **sampling) -> None:
    """Four clips per prompt: a GIF (one row per prompt) at ``path`` with suffix .gif and a PNG strip (one clip per
    row) with suffix .png."""
    out = pipe(prompts, num_videos_per_prompt=4, seed=seed, **sampling)
    out.save_gif(path.with_suffix(".gif"), per_row=4)
    out.save_strip(path.with_suffix(".png"))


# ---- grading ---------------------------------------------------------------------------------------------------


def parse_video_prompt(prompt: str) -> dict[str, str]:
    """``"a large red circle moving to the left"`` -> ``{"size", "color", "shape", "direction"}``. One object only;
    raises ValueError, showing the grammar, otherwise (case, extra spaces and a final period do not matter)."""
    text = " ".join(prompt.lower().split()).removesuffix(".").strip()
    words = [SIZES, COLORS, SHAPES, [re.escape(d) for d in DIRECTIONS]]
    match = re.fullmatch("a ({}) ({}) ({}) moving ({})".format(*("|".join(w) for w in words)), text)
    if match is None:
        reason = (
            "it names more than one object; video grading handles one object per clip"
            if " and " in text or "," in text
            else "it does not follow the grammar"
        )
        raise ValueError(
            f"cannot parse video prompt {prompt!r}: {reason}.\nAccepted grammar: '{VIDEO_GRAMMAR}', with\n"
            f"  <size>: {', '.join(SIZES)}\n  <colour>: {', '.join(COLORS)}\n  <shape>: {', '.join(SHAPES)}\n"
            f"  <direction>: {', '.join(DIRECTIONS)}"
        )
    return dict(zip(("size", "color", "shape", "direction"), match.groups(), strict=True))


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
