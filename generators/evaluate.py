"""Evaluating text-to-image and text-to-video pipelines: prompt accuracy read back by the attribute grader, the
grader's ceiling on real samples and on their tokenizer reconstructions, and the cost of sampling.

Prompts are captions of unseen scenes or clips (a seed offset the grader's and CLIP's evaluation sets do not use).
Samples are in [0, 1], as the pipelines return them: images ``(N, 3, H, W)``, clips ``(N, T, 3, H, W)``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tokenizers_vis.data import MovingShapes, SyntheticScenes
from tokenizers_vis.evaluation import AttributeGrader, grade, grade_videos, reconstruct

from .pipeline import PipelineOutput, TextToImagePipeline
from .video import TextToVideoPipeline, VideoPipelineOutput

IMAGE_METRICS = ("accuracy", "shape", "color", "size", "position")
VIDEO_METRICS = ("accuracy", "appearance_accuracy", "direction_accuracy", "shape", "color", "size")
RECONSTRUCT_BATCH = 256


def scene_prompts(split: str, count: int, seed: int) -> list[str]:
    """Captions of ``count`` scenes of ``split`` ("heldout": seen shape-colour pairs, "novel": one held-out pair)."""
    scenes = SyntheticScenes(count, 64, split=split, seed=seed + 1)
    return [scenes.describe(i)["caption"] for i in range(count)]


def heldout_scenes(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` held-out scenes ``(N, 3, 64, 64)`` in [0, 1] and their captions (the stream of
    :func:`scene_prompts`)."""
    scenes = SyntheticScenes(count, 64, split="heldout", seed=seed + 1)
    real = torch.stack([scenes[i]["image"] for i in range(count)])
    return (real + 1) / 2, [scenes.describe(i)["caption"] for i in range(count)]


def heldout_clips(count: int, seed: int, frames: int = 9) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` held-out clips ``(N, frames, 3, 64, 64)`` in [0, 1] with distinct captions (the first clip of
    each caption among 500) and those captions."""
    clips = MovingShapes(500, 64, frames=frames, split="heldout", seed=seed + 1)
    first_clip: dict[str, int] = {}
    for i in range(len(clips)):
        first_clip.setdefault(clips.describe(i)["caption"], i)
    captions = list(first_clip)[:count]
    real = torch.stack([clips[first_clip[c]]["video"] for c in captions])
    return (real + 1) / 2, captions


def score_samples(grader: AttributeGrader, samples: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """The grader's accuracies for images or clips in [0, 1], one prompt per sample (``IMAGE_METRICS`` or
    ``VIDEO_METRICS``)."""
    if samples.ndim == 5:
        result = grade_videos(grader, samples * 2 - 1, prompts)
        return {k: result[k] for k in VIDEO_METRICS}
    result = grade(grader, samples * 2 - 1, prompts)
    return {k: result[k] for k in IMAGE_METRICS}


@dataclass
class Evaluation:
    scores: dict[str, float]  # score_samples of the samples against their prompts
    samples: torch.Tensor  # (N * per_prompt, 3, H, W) or (N * per_prompt, T, 3, H, W) in [0, 1], prompt-major
    output: PipelineOutput | VideoPipelineOutput
    seconds: float  # sampling and grading


def evaluate_pipeline(
    pipe: TextToImagePipeline,
    grader: AttributeGrader,
    prompts: list[str],
    per_prompt: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    **sampling,
) -> Evaluation:
    """Samples ``per_prompt`` images (or clips, for a :class:`TextToVideoPipeline`) per prompt and grades them.
    ``batch_size`` and the sampling keywords go to the pipeline's call."""
    start = time.perf_counter()
    if isinstance(pipe, TextToVideoPipeline):
        output = pipe(prompts, num_videos_per_prompt=per_prompt, seed=seed, batch_size=batch_size, **sampling)
        samples = output.frames
    else:
        output = pipe(prompts, num_images_per_prompt=per_prompt, seed=seed, batch_size=batch_size, **sampling)
        samples = output.pixels
    scores = score_samples(grader, samples, [p for p in prompts for _ in range(per_prompt)])
    return Evaluation(scores, samples, output, time.perf_counter() - start)


@dataclass
class Reference:
    reconstructed: torch.Tensor  # the real samples through the pipeline's tokenizer, in [0, 1]
    scores: dict[str, dict[str, float]]  # {"real": ..., "reconstructed": ...}: score_samples of both


@torch.no_grad()
def reference(
    pipe: TextToImagePipeline,
    grader: AttributeGrader,
    real: torch.Tensor,
    captions: list[str],
    graded: int | None = None,
) -> Reference:
    """The grader on real images or clips in [0, 1] and on their reconstructions by the pipeline's tokenizer (the
    ceiling of a generator over its tokens), on the first ``graded`` of them (default all); every sample is
    reconstructed."""
    tokenizer = pipe.tokenizer
    recon = torch.cat(
        [
            reconstruct(tokenizer, (x * 2 - 1).to(pipe.device, tokenizer.dtype)).float().clamp(-1, 1).cpu()
            for x in real.split(RECONSTRUCT_BATCH)
        ]
    )
    recon = (recon + 1) / 2
    scores = {
        "real": score_samples(grader, real[:graded], captions[:graded]),
        "reconstructed": score_samples(grader, recon[:graded], captions[:graded]),
    }
    return Reference(recon, scores)


def sampling_sweep(
    pipe: TextToImagePipeline, grader: AttributeGrader, prompts: list[str], settings: Sequence[dict], **sampling
) -> list[dict]:
    """One row per sampling setting (with ``sampling`` fixed): the setting, the grader's scores of one sample per
    prompt (seed 0) and the seconds they took."""
    rows = []
    for setting in tqdm(settings, desc="sampling settings"):
        evaluation = evaluate_pipeline(pipe, grader, prompts, **sampling, **setting)
        rows.append({**setting, **evaluation.scores, "seconds": round(evaluation.seconds, 1)})
    return rows


def sampling_speed(pipe: TextToImagePipeline, prompts: list[str]) -> dict:
    """Greedy images per second and tokens per second with and without the KV cache (guidance as in the pipeline's
    defaults, one candidate), and whether both give the same tokens."""

    def timed(batch: list[str], use_cache: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        tokens = pipe(batch, seed=0, use_cache=use_cache, num_candidates=1, temperature=0.0).tokens
        return time.perf_counter() - start, tokens

    tokens_per_image = math.prod(pipe.generator.config.grid_size)
    timed(prompts[:1], True)  # warm-up
    t_cache, tok_cache = timed(prompts, True)
    t_plain, tok_plain = timed(prompts, False)
    n = len(prompts)
    return {
        "images": n,
        "tokens_per_image": tokens_per_image,
        "cache_images_per_s": n / t_cache,
        "cache_tokens_per_s": n * tokens_per_image / t_cache,
        "no_cache_images_per_s": n / t_plain,
        "no_cache_tokens_per_s": n * tokens_per_image / t_plain,
        "speedup": t_plain / t_cache,
        "identical_tokens": bool(torch.equal(tok_cache, tok_plain)),
    }


def sampling_cost(pipe: TextToImagePipeline, prompts: list[str], **sampling) -> dict:
    """Seconds per image and transformer forward passes of one sampling run over ``prompts``. A multi-token
    generator also gets greedy forward passes one token at a time and with self-verification, and whether both
    give the same tokens."""
    # next-X generators report no stats; they run one transformer pass per entity
    reported = "return_stats" in inspect.signature(pipe.generator.generate).parameters
    pipe(prompts[:1], seed=0, **sampling)  # warm-up
    start = time.perf_counter()
    output = pipe(prompts, seed=0, return_stats=reported, **sampling)
    cost = {"seconds_per_image": (time.perf_counter() - start) / len(prompts)}
    cost["forward_passes"] = output.stats["forward_passes"] if reported else pipe.generator.num_entities
    if pipe.generator.config.get("num_predict", 1) > 1:
        greedy = {**sampling, "temperature": 0.0}
        plain = pipe(prompts, seed=0, num_predict_used=1, return_stats=True, **greedy)
        fast = pipe(prompts, seed=0, return_stats=True, **greedy)
        cost["forward_passes_one_token"] = plain.stats["forward_passes"]
        cost["forward_passes_verified"] = fast.stats["forward_passes"]
        cost["identical_greedy"] = bool(torch.equal(plain.tokens, fast.tokens))
    return cost
