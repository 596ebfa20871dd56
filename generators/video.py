"""Text-to-video: prompt encoder -> next-token generator over a clip's tokens (``(t, h, w)`` grids of the causal
video tokenizer, or the K deep tokens of the 1D video tokenizer) -> that tokenizer's decoder.

The pipeline is a :class:`~generators.pipeline.TextToImagePipeline` whose generator samples a grid of latent frames
and whose tokenizer decodes it to a clip, so folders, sampling defaults and ``from_pretrained`` are shared::

    pipe = TextToVideoPipeline.from_pretrained("runs/video_gen/pipeline")
    out = pipe(["a large red circle moving to the left"], num_videos_per_prompt=4, seed=0)
    out.save_gif("clips.gif")                                  # out.frames: (B, T, 3, H, W) in [0, 1]
    report = grade_videos(load_grader(), out.frames * 2 - 1, prompts)  # from tokenizers_vis.evaluation
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tokenizers_vis.data.language import video_frame_captions
from tokenizers_vis.registry import family_of
from tokenizers_vis.visuals import save_gif, save_video_strip

from .pipeline import TextToImagePipeline, split_request

# How a video prompt becomes (first frame's caption, last frame's caption), by the name a pipeline stores: "same"
# keeps the prompt (a text-to-image model trained on the clips' frames and captions); "moving-shapes" writes the
# built-in clips' start and end as still-scene captions.
FRAME_CAPTIONS: dict[str, Callable[[str], tuple[str, str]]] = {
    "same": lambda prompt: (prompt, prompt),
    "moving-shapes": video_frame_captions,
}
ROUND_TRIP_BATCH = 64  # clips re-encoded at once: a request's candidates can number hundreds of clips


@dataclass
class VideoPipelineOutput:
    videos: list[list[Image.Image]]  # per clip, its frames
    frames: torch.Tensor  # (B, T, 3, H, W) in [0, 1]
    tokens: torch.Tensor  # (B, t, h, w) grids or (B, K) deep tokens

    @classmethod
    def concat(cls, parts: list[VideoPipelineOutput]) -> VideoPipelineOutput:
        """The outputs of consecutive sampling runs as one."""
        frames, tokens = torch.cat([p.frames for p in parts]), torch.cat([p.tokens for p in parts])
        return cls([clip for p in parts for clip in p.videos], frames, tokens)

    def save_gif(self, path: str | Path, per_row: int = 4, fps: int = 8) -> None:
        """All clips tiled ``per_row`` to a row, playing together as one looping GIF."""
        save_gif(self.frames * 2 - 1, Path(path), fps=fps, per_row=per_row)

    def save_strip(self, path: str | Path) -> None:
        """A PNG with one clip per row, frames left to right."""
        save_video_strip(self.frames * 2 - 1, Path(path))


class TextToVideoPipeline(TextToImagePipeline):
    """``pipe(["a small blue star moving up"], num_videos_per_prompt=4)`` -> clips (9 frames for the built-in
    tokenizers' runs).

    Needs a prompt-conditioned generator and a video tokenizer: a :class:`~tokenizers_vis.VideoTokenizer` with
    ``(t, h, w)`` grids, a :class:`~tokenizers_vis.Video1DTokenizer` with K deep tokens per clip, or an
    :class:`~tokenizers_vis.AnchoredVideoTokenizer` (a first frame's tokens, then K motion tokens; given a
    ``first_frame``, the pipeline does image-to-video). Saved and loaded like the image pipeline
    (``model_index.json`` names this class).

    Factorized text-to-video (as in Emu Video): with a ``first_frame_pipeline`` (a text-to-image pipeline, saved in
    the ``first_frame/`` sub-folder) and an anchored tokenizer, each clip starts from a frame that pipeline draws for
    the prompt's first-frame caption, and the generator samples the motion tokens after it. ``frame_captions`` names
    how a video prompt becomes its first and last frames' captions (:data:`FRAME_CAPTIONS`). ``num_candidates`` > 1
    samples that many clips per requested clip and keeps the one whose last frame CLIP finds closest to the last
    frame's caption, or with ``rerank="round-trip"`` the one whose frames encode back closest to its motion tokens
    (:meth:`~tokenizers_vis.AnchoredVideoTokenizer.round_trip_distance`).
    """

    produces_video = True

    def __init__(
        self,
        tokenizer,
        generator,
        prompt_encoder,
        defaults: dict | None = None,
        class_names: None = None,
        first_frame_pipeline: TextToImagePipeline | None = None,
        frame_captions: str = "same",
    ):
        config = generator.config
        if config.condition != "prompt" or not family_of(type(tokenizer)).takes_videos:
            raise ValueError(
                "a text-to-video pipeline needs a prompt-conditioned generator and a video tokenizer, got "
                f"condition={config.condition!r} and a {type(tokenizer).__name__}"
            )
        if getattr(tokenizer.config, "anchor_frame", False):
            raise ValueError(
                "this tokenizer decodes given each clip's first frame (anchor_frame=True); join it with an image "
                "tokenizer that writes that frame (AnchoredVideoTokenizer, scripts/assemble_video_tokenizer.py)"
            )
        if frame_captions not in FRAME_CAPTIONS:
            raise ValueError(f"unknown frame_captions {frame_captions!r}; accepted: {', '.join(FRAME_CAPTIONS)}")
        if first_frame_pipeline is not None and (
            first_frame_pipeline.produces_video or first_frame_pipeline.generator.config.condition != "prompt"
        ):
            raise ValueError("first_frame_pipeline must be a prompt-conditioned text-to-image pipeline")
        if first_frame_pipeline is not None and not hasattr(tokenizer, "encode_first_frame"):
            raise ValueError(
                "a first_frame_pipeline needs a tokenizer whose clips begin with a first frame's tokens "
                f"(AnchoredVideoTokenizer), got a {type(tokenizer).__name__}"
            )
        super().__init__(tokenizer, generator, prompt_encoder, defaults)
        self.first_frame_pipeline, self.frame_captions = first_frame_pipeline, frame_captions

    def to(self, device: str | torch.device) -> TextToVideoPipeline:
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.to(device)
        return super().to(device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_videos_per_prompt: int = 1,
        seed: int | None = None,
        use_cache: bool = True,
        progress: bool = False,
        batch_size: int | None = None,
        first_frame: torch.Tensor | None = None,
        **sampling,
    ) -> VideoPipelineOutput:
        """Sampling keywords override the pipeline's defaults, as for images. Clips come in prompt order,
        ``num_videos_per_prompt`` per prompt; ``batch_size`` caps the prompts of one sampling run, as for images.

        ``first_frame`` (image-to-video): one image per prompt, (P, 3, S, S) in [0, 1]; the clips start from its
        tokens, for a tokenizer whose clips begin with a first frame's tokens (an ``AnchoredVideoTokenizer``).
        Without it, a pipeline with a ``first_frame_pipeline`` draws one first frame per clip."""
        runs = split_request(prompt, batch_size, seed)
        if runs is not None:
            options = dict(num_videos_per_prompt=num_videos_per_prompt, use_cache=use_cache, progress=progress)
            parts = []
            for i, (part, s) in enumerate(runs):
                frames = None if first_frame is None else first_frame[i * batch_size : (i + 1) * batch_size]
                parts.append(self(part, seed=s, first_frame=frames, **options, **sampling))
            return VideoPipelineOutput.concat(parts)
        sampling = self._sampling(sampling)
        candidates, rerank = self._pop_candidates(sampling)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        per_clip = [p for p in prompts for _ in range(num_videos_per_prompt)]
        drawing = first_frame is None and self.first_frame_pipeline is not None
        # parsed before any sampling, so a prompt the rule cannot read fails first
        clip_ranked = candidates > 1 and rerank == "clip"
        captions = [FRAME_CAPTIONS[self.frame_captions](p) for p in per_clip] if drawing or clip_ranked else []
        first_tokens = None
        if first_frame is not None:
            first_tokens = self._first_frame_tokens(first_frame, len(prompts))
            first_tokens = first_tokens.repeat_interleave(num_videos_per_prompt, dim=0)
        elif drawing:
            drawn = self.first_frame_pipeline([start for start, _ in captions], seed=seed, progress=progress)
            first_tokens = self._first_frame_tokens(drawn.pixels, len(per_clip))
        if first_tokens is not None:
            sampling["first_tokens"] = first_tokens.repeat_interleave(candidates, dim=0)
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        condition = self.prompt_encoder([p for p in per_clip for _ in range(candidates)])
        tokens = self.generator.generate(
            condition, generator=generator, use_cache=use_cache, progress=progress, **sampling
        )
        frames = (self.tokenizer.decode(tokens).float().clamp(-1, 1) + 1) / 2
        if candidates > 1:
            if clip_ranked:
                rows = self._best_candidates([end for _, end in captions], frames[:, -1], candidates)
            else:
                rows = self._closest_round_trips(tokens, frames, candidates)
            tokens, frames = tokens[rows], frames[rows]
        frames = frames.cpu()
        arrays = (frames.permute(0, 1, 3, 4, 2) * 255).round().byte().numpy()
        videos = [[Image.fromarray(frame) for frame in clip] for clip in arrays]
        return VideoPipelineOutput(videos, frames, tokens.cpu())

    def _closest_round_trips(self, tokens: torch.Tensor, samples: torch.Tensor, candidates: int) -> torch.Tensor:
        """Row of each request's best candidate among ``samples`` (decoded from ``tokens``, ``candidates``
        consecutive rows per request, in [0, 1]): the one whose pixels encode back closest to its tokens."""
        step = ROUND_TRIP_BATCH
        distances = torch.cat(
            [
                self.tokenizer.round_trip_distance(tokens[i : i + step], samples[i : i + step] * 2 - 1)
                for i in range(0, len(samples), step)
            ]
        )
        best = distances.view(-1, candidates).argmin(dim=1)
        return torch.arange(len(best), device=best.device) * candidates + best

    def _first_frame_tokens(self, images: torch.Tensor, count: int) -> torch.Tensor:
        """First frames (count, 3, S, S) in [0, 1] -> their tokens (count, G)."""
        if not hasattr(self.tokenizer, "encode_first_frame"):
            raise ValueError(
                "image-to-video needs a tokenizer whose clips begin with a first frame's tokens "
                f"(AnchoredVideoTokenizer), got a {type(self.tokenizer).__name__}"
            )
        if images.ndim != 4 or len(images) != count:
            raise ValueError(f"first_frame: one image (3, S, S) per prompt ({count}), got {tuple(images.shape)}")
        return self.tokenizer.encode_first_frame(images.to(self.device).float() * 2 - 1)

    def _save_extras(
        self, folder: Path, index: dict, generator_dtype: torch.dtype | None, tokenizer_dtype: torch.dtype | None
    ) -> None:
        index["frame_captions"] = self.frame_captions
        index["first_frame_pipeline"] = [None, None]
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.save_pretrained(folder / "first_frame", generator_dtype, tokenizer_dtype)
            index["first_frame_pipeline"] = ["generators", TextToImagePipeline.__name__]

    @classmethod
    def _extras_from_index(cls, folder: Path, index: dict) -> dict:
        extras = {"frame_captions": index.get("frame_captions", "same")}
        if index.get("first_frame_pipeline", [None])[0] is not None:
            extras["first_frame_pipeline"] = TextToImagePipeline.from_pretrained(folder / "first_frame")
        return extras


def is_video_pipeline(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved :class:`TextToVideoPipeline` (rather than a text-to-image one)."""
    index = Path(folder) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == TextToVideoPipeline.__name__


def write_video_samples(
    pipe: TextToVideoPipeline,
    prompts: list[str],
    path: Path,
    seed: int,
    first_frame: torch.Tensor | None = None,
    **sampling,
) -> None:
    """Four clips per prompt (from its ``first_frame`` when given, one image per prompt in [0, 1]): a GIF (one row
    per prompt) at ``path`` with suffix .gif and a PNG strip (one clip per row) with suffix .png."""
    out = pipe(prompts, num_videos_per_prompt=4, seed=seed, first_frame=first_frame, **sampling)
    out.save_gif(path.with_suffix(".gif"), per_row=4)
    out.save_strip(path.with_suffix(".png"))
