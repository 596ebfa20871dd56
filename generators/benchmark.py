"""The generation benchmark's measurements (``scripts/bench_generation.py`` writes them as tables): a text-to-image
pipeline's prompt accuracy, guidance sweep, Fréchet distance and sampling speed; a text-to-video pipeline's clip
grading per guidance scale; and generator rows trained on one tokenizer and budget, compared side by side.

Prompt sets are "seen" (captions of held-out scenes: only shape-colour pairs seen in training) and "held-out"
(each caption holds one pair never seen in training). Built from :mod:`generators.evaluate`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tokenizers_vis import TrainConfig, train_tokenizer
from tokenizers_vis.evaluation import AttributeGrader, clip_score, frechet_distance

from .evaluate import (
    Evaluation,
    evaluate_pipeline,
    heldout_clips,
    heldout_scenes,
    reference,
    sampling_cost,
    sampling_speed,
    scene_prompts,
)
from .pipeline import TextToImagePipeline
from .training import GeneratorTrainConfig, train_generator
from .video import TextToVideoPipeline, VideoPipelineOutput

BATCH_SIZE = 64  # prompts per sampling run of a prompt set
GRADED_REAL = 500  # real scenes (and their reconstructions) the grader reads for the reference rows

# name -> (preset, model overrides, sampling overrides); every row is trained with the same loop and budget
COMPARE_ROWS: dict[str, tuple[str, dict, dict]] = {
    "next-token": ("nt-small", {}, {}),
    "next-token, TokenUnify mixture": ("nt-small", {"objectives": {"next": 0.6, "random": 0.2, "next_all": 0.2}}, {}),
    "next-token, 4-token prediction": ("nt-small", {"num_predict": 4}, {}),
    "next-X token": ("nx-small", {"entity": "token"}, {}),
    "next-X cell 2x2": ("nx-small", {"entity": "cell", "k": 2}, {}),
    "next-X cell 2x2, clean context": ("nx-small", {"entity": "cell", "k": 2, "noisy_context": False}, {}),
    "next-X subsample 2x2": ("nx-small", {"entity": "subsample", "k": 2}, {}),
    "next-X scale": ("nx-small", {"entity": "scale"}, {}),
    "next-X image": ("nx-small", {"entity": "image"}, {}),
}
# fixed sampling settings per generator family: guidance 2 for both; next-token at temperature 0.7, next-X's flow
# head from full-scale noise
COMPARE_SAMPLING = {
    "nt-small": {"guidance_scale": 2.0, "temperature": 0.7, "num_candidates": 1},
    "nx-small": {"guidance_scale": 2.0, "temperature": 1.0, "num_candidates": 1},
}


@dataclass
class BenchConfig:
    """What every benchmark mode samples (the flags of ``scripts/bench_generation.py``)."""

    prompts: int = 100  # prompts per set (seen / held-out; video: distinct captions)
    images_per_prompt: int = 2
    real: int = 1000  # held-out real scenes for the Fréchet distance
    sweep_prompts: int = 64
    speed_images: int = 4
    seed: int = 0


def prompt_sets(cfg: BenchConfig) -> dict[str, list[str]]:
    return {
        "seen": scene_prompts("heldout", cfg.prompts, cfg.seed),
        "held-out": scene_prompts("novel", cfg.prompts, cfg.seed),
    }


def _timed(evaluation: Evaluation) -> dict:
    return {**evaluation.scores, "seconds": round(evaluation.seconds, 1)}


def benchmark_images(
    pipe: TextToImagePipeline, grader: AttributeGrader, cfg: BenchConfig, scales: Sequence[float]
) -> dict:
    """The report of a text-to-image pipeline: the grader's reference rows, prompt accuracy per set at the
    pipeline's defaults (and without CLIP re-ranking when it re-ranks), a guidance sweep with CLIP scores, Fréchet
    distances to real held-out scenes and greedy sampling speed."""
    clip = pipe.prompt_encoder.clip
    report: dict = {"defaults": dict(pipe.defaults)}
    real, real_prompts = heldout_scenes(cfg.real, cfg.seed)
    ref = reference(pipe, grader, real, real_prompts, graded=GRADED_REAL)
    report["grader_real"], report["grader_reconstructed"] = ref.scores["real"], ref.scores["reconstructed"]

    sets = prompt_sets(cfg)
    generated = {}
    for name, prompts in sets.items():
        evaluation = evaluate_pipeline(pipe, grader, prompts, cfg.images_per_prompt, cfg.seed, BATCH_SIZE)
        generated[name], report[name] = evaluation.samples, _timed(evaluation)
        print(name, report[name])
    if pipe.defaults["num_candidates"] > 1:  # the same prompts without CLIP re-ranking
        single = evaluate_pipeline(
            pipe, grader, sets["seen"], cfg.images_per_prompt, cfg.seed, BATCH_SIZE, num_candidates=1
        )
        report["seen-single"] = _timed(single)
        print("seen, no re-ranking", report["seen-single"])

    sweep_prompts = sets["seen"][: cfg.sweep_prompts]
    report["sweep"] = {}
    for scale in scales:
        evaluation = evaluate_pipeline(pipe, grader, sweep_prompts, 1, cfg.seed, BATCH_SIZE, guidance_scale=scale)
        score = clip_score(clip, evaluation.samples, sweep_prompts)
        report["sweep"][scale] = {**evaluation.scores, "clip_score": score}
        print("guidance", scale, report["sweep"][scale])

    fake = generated["seen"]
    fake_prompts = [p for p in sets["seen"] for _ in range(cfg.images_per_prompt)]
    report["fd_generated"] = frechet_distance(clip, real, fake)
    report["fd_reconstructed"] = frechet_distance(clip, real[len(fake) :], ref.reconstructed[: len(fake)])
    report["clip_score_generated"] = clip_score(clip, fake, fake_prompts)
    report["clip_score_real"] = clip_score(clip, real[: len(fake)], real_prompts[: len(fake)])
    report["speed"] = sampling_speed(pipe, sets["seen"][: cfg.speed_images])
    print(report["speed"])
    return report


@dataclass
class VideoBenchmark:
    captions: list[str]  # held-out moving-shape captions, each sampled images_per_prompt times
    rows: list[dict]  # per guidance scale: guidance, seconds, the grader's scores and the Fréchet distance ("fd")
    outputs: list[VideoPipelineOutput]  # the clips of each row
    references: dict[str, dict]  # {"real": ..., "reconstructed": ...}: the grader on real clips and reconstructions
    facts: dict  # tokens per clip, sampling seconds per clip, the reconstructions' FD


def frames_of(clips: torch.Tensor) -> torch.Tensor:
    """(N, T, 3, H, W) -> every frame (N * T, 3, H, W)."""
    return clips.flatten(0, 1)


def benchmark_video(
    pipe: TextToVideoPipeline, grader: AttributeGrader, cfg: BenchConfig, scales: Sequence[float]
) -> VideoBenchmark:
    """Grades clips of a text-to-video pipeline per guidance scale (other settings at the pipeline's defaults):
    colour and shape on the first and last frames, motion direction, and the Fréchet distance of all their frames
    to the real held-out clips' frames in the prompt encoder's CLIP space. Also times sampling (one batch of 8 clips,
    after a warm-up)."""
    real, captions = heldout_clips(cfg.prompts, cfg.seed)
    ref = reference(pipe, grader, real, captions)
    clip = pipe.prompt_encoder.clip
    rows, outputs = [], []
    for scale in scales:
        evaluation = evaluate_pipeline(pipe, grader, captions, cfg.images_per_prompt, cfg.seed, guidance_scale=scale)
        fd = frechet_distance(clip, frames_of(real), frames_of(evaluation.samples))
        rows.append({"guidance": scale, "seconds": evaluation.seconds, **evaluation.scores, "fd": fd})
        outputs.append(evaluation.output)
        print(scale, rows[-1])
    pipe(captions[:1], seed=cfg.seed)  # warm-up
    start = time.perf_counter()
    timed = pipe(captions[:4], num_videos_per_prompt=2, seed=cfg.seed)
    facts = {
        "tokens_per_clip": math.prod(timed.tokens.shape[1:]),
        "seconds_per_clip": (time.perf_counter() - start) / len(timed.frames),
        "fd_reconstructed": frechet_distance(clip, frames_of(real), frames_of(ref.reconstructed)),
    }
    return VideoBenchmark(captions, rows, outputs, ref.scores, facts)


def compare_generators(
    grader: AttributeGrader,
    cfg: BenchConfig,
    names: Sequence[str],
    tokenizer: Path,
    steps: int,
    train_samples: int,
    run_dir: Path,
    tuned: bool = False,
    threads: int = 0,
) -> list[dict]:
    """Trains each named :data:`COMPARE_ROWS` generator on ``tokenizer`` (the vq-f8 preset is trained there first, on
    the classic scenes the grader knows, when the folder is missing) with the same seed, steps and cached training
    scenes, then measures prompt accuracy, Fréchet distance and sampling cost with fixed settings per family or
    (``tuned``) each pipeline's defaults. A row's run folder under ``run_dir`` keeps its model and measurements
    (``bench_row.json``): a finished row is read back, not retrained."""
    if not (tokenizer / "config.json").is_file():
        cfg = TrainConfig(preset="vq-f8", steps=1000, palette="classic", photo_fraction=0.0, save_every=10**9)
        train_tokenizer(replace(cfg, output_dir=str(tokenizer.parent)))
    prompts = prompt_sets(cfg)
    real, _ = heldout_scenes(cfg.real, cfg.seed)
    rows = []
    for name in names:
        preset, overrides, sampling = COMPARE_ROWS[name]
        out = run_dir / name.replace(" ", "_").replace(",", "")
        if (out / "bench_row.json").is_file():
            rows.append(json.loads((out / "bench_row.json").read_text()))
            continue
        if not (out / "metrics.json").is_file():
            train_generator(
                GeneratorTrainConfig(
                    tokenizer=str(tokenizer),
                    preset=preset,
                    model_overrides=overrides,
                    steps=steps,
                    train_samples=train_samples,
                    output_dir=str(out),
                    save_every=10**9,
                    sample_every=0,
                    seed=cfg.seed,
                    cpu_threads=threads,
                )
            )
        metrics = json.loads((out / "metrics.json").read_text())
        pipe = TextToImagePipeline.from_pretrained(out / "pipeline")
        settings = {**(pipe.defaults if tuned else COMPARE_SAMPLING[preset]), **sampling}
        row = {"name": name, "train_seconds": metrics["wall_seconds"], "settings": settings}
        for split, texts in prompts.items():
            evaluation = evaluate_pipeline(pipe, grader, texts, cfg.images_per_prompt, cfg.seed, BATCH_SIZE, **settings)
            row[split] = evaluation.scores
            if split == "seen":
                row["fd"] = frechet_distance(pipe.prompt_encoder.clip, real, evaluation.samples)
        row |= sampling_cost(pipe, prompts["seen"][: cfg.speed_images], **settings)
        rows.append(row)
        (out / "bench_row.json").write_text(json.dumps(row, indent=2, default=str))
        print(json.dumps(row, default=str))
    return rows
