"""Accelerate training loop for tokenizers: one process, several CPU processes, or many GPUs.

Small, finite datasets (the synthetic scenes, photo patches, small folders) are rendered once into
an in-memory pool and batches are drawn from it with a generator seeded by (seed, step, rank): data
loading then costs nothing per step, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from .data import build_dataset, collate_images
from .evaluation import evaluate_ood, evaluate_tokenizer, ood_images
from .losses import PatchDiscriminator, adaptive_gan_weight, build_lpips, hinge_d_loss, hinge_g_loss
from .registry import DEFAULT_PRESET, create_tokenizer, family_of, load_tokenizer, preset_class, tokenizer_families
from .teacher import load_teacher
from .train_core import (
    AccelerateRunConfig,
    NonFiniteGuard,
    lr_schedule,
    param_checksum,
    resolve_mixed_precision,
    resume_from_latest,
    save_checkpoint,
    save_model_atomically,
    set_cpu_threads,
)
from .visuals import save_reconstructions


@dataclass
class TrainConfig(AccelerateRunConfig):
    """Everything a tokenizer run needs; serialised to ``train_config.json`` in the output dir."""

    steps: int = 1100  # the default vq-f4 run: about 11 min on 2 cores with AVX512-BF16, about 30 AVX2-only (fp32)
    output_dir: str = "runs/tokenizer"
    min_lr_ratio: float = 0.02
    preset: str = DEFAULT_PRESET
    model_overrides: dict = field(default_factory=dict)
    data: str = "scenes"  # scenes | photos | videos | a folder of images | .tar shards
    # built-in scenes and clips: "wide" (backgrounds and shades over the whole colour range) or "classic" (the world
    # of the shipped pipeline, grader and CLIP). A tokenizer trained on "classic" alone fails on light and saturated
    # images it has never seen
    palette: str = "wide"
    # data "scenes" (and the stills of data "videos"): this share of the pool is patches of the training-split photos
    # (colour-permuted), for natural-image statistics; 0 = scenes only
    photo_fraction: float = 0.2
    ood_samples: int = 256  # images in each out-of-distribution test set (flat-shape scenes, held-out photos); 0 = none
    resolution: int = 64
    frames: int = 9  # training clip length for data "videos" (1 + 4k for the video tokenizer)
    eval_frames: int = 17  # held-out clip length for data "videos"
    # data "videos": also this many still scenes per step (one-frame videos, from a pool of train_samples scenes).
    # The frames of a clip are near-duplicates, so a clip batch shows few distinct scenes; stills teach the
    # spatial code much faster for a fifth of the compute (joint image-video training)
    image_batch_size: int = 0
    train_samples: int = 20000  # size of the in-memory pool for finite sources
    eval_samples: int = 512
    gan_weight: float = 0.0  # PatchGAN hinge loss, 0 disables it
    gan_start: int = 2000
    lpips_weight: float = 0.0  # needs pretrained LPIPS weights, refused clearly offline
    semantic_teacher: str = ""  # "" = off; see tokenizers_vis.teacher.load_teacher for the accepted forms
    semantic_weight: float = 0.5  # weight of 1 - cos(projected tokenizer feature, teacher feature)
    # anchored video1d: a saved image tokenizer whose reconstruction of frame 0 the decoder is given in training, the
    # frame it is given when a text-to-video pipeline's image tokens draw it ("" = the real frame)
    anchor_tokenizer: str = ""
    num_workers: int = 2


def materialize(dataset: Dataset, num_workers: int, desc: str, limit: int | None = None) -> torch.Tensor:
    """Renders the first ``limit`` samples (all if None) of a dataset into one (N, 3, H, W) float tensor
    ((N, T, 3, H, W) for videos)."""
    if limit is not None and not isinstance(dataset, IterableDataset) and len(dataset) > limit:
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=collate_images)
    chunks, count = [], 0
    for batch in tqdm(loader, desc=desc, leave=False):
        chunks.append(batch["video" if "video" in batch else "image"])
        count += len(chunks[-1])
        if limit is not None and count >= limit:
            break
    return torch.cat(chunks)[:limit]


def training_sets(cfg: TrainConfig, source: str | None = None, **kwargs) -> list[Dataset]:
    """The training split of ``source`` (default ``cfg.data``; ``kwargs`` go to its dataset); for built-in scenes,
    ``cfg.photo_fraction`` of the ``cfg.train_samples`` are training-split photo patches instead."""
    source = source or cfg.data
    if source not in ("scenes", "videos"):
        return [build_dataset(source, "train", cfg.resolution, cfg.train_samples, cfg.seed, **kwargs)]
    photos = round(cfg.photo_fraction * cfg.train_samples) if source == "scenes" else 0
    scenes = cfg.train_samples - photos
    sets = [build_dataset(source, "train", cfg.resolution, scenes, cfg.seed, palette=cfg.palette, **kwargs)]
    return sets + [build_dataset("photos", "train", cfg.resolution, photos, cfg.seed)] if photos else sets


class BatchSource:
    """Batches for step ``s``: random draws from an in-memory pool of every dataset (stateless, exact on resume), or
    a streaming DataLoader for one large folder or set of shards (re-shuffled on resume)."""

    def __init__(self, datasets: list[Dataset], cfg: TrainConfig, accelerator: Accelerator) -> None:
        self.cfg, self.rank = cfg, accelerator.process_index
        self.pool, self.skipped = None, 0
        if not any(isinstance(d, IterableDataset) for d in datasets) and sum(map(len, datasets)) <= cfg.train_samples:
            for dataset in datasets:
                if hasattr(dataset, "scan"):  # user folders: drop and count unreadable files up front
                    self.skipped += len(dataset.scan()[1])
            self.pool = torch.cat([materialize(d, cfg.num_workers, "rendering training pool") for d in datasets])
        else:
            (dataset,) = datasets
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                shuffle=not isinstance(dataset, IterableDataset),
                num_workers=cfg.num_workers,
                collate_fn=collate_images,
                drop_last=True,
            )
            self.loader = accelerator.prepare_data_loader(loader)
            self.iterator = iter(self.loader)

    def batch(self, step: int) -> torch.Tensor:
        if self.pool is not None:
            gen = torch.Generator().manual_seed(self.cfg.seed * 10**9 + step * 1000 + self.rank)
            return self.pool[torch.randint(len(self.pool), (self.cfg.batch_size,), generator=gen)]
        try:
            return next(self.iterator)["image"]
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)["image"]


def _kinds(capability: str, sep: str) -> str:
    """The ``--tokenizer`` kinds whose family has ``capability``, for error messages."""
    return sep.join(kind for kind, family in tokenizer_families().items() if getattr(family, capability))


def check_model_and_data(cls: type, cfg: TrainConfig) -> None:
    """Refuses combinations the loop cannot train, saying what is accepted."""
    family = family_of(cls)
    if cfg.data == "videos" and not family.takes_videos:
        kinds = _kinds("takes_videos", " | ")
        raise ValueError(f"data 'videos' needs a video tokenizer (--tokenizer {kinds}); got a {cls.__name__}")
    if cfg.semantic_teacher and not family.accepts_teacher:
        kinds = _kinds("accepts_teacher", ", ")
        raise ValueError(f"semantic regularization works with {kinds} tokenizers, not {cls.__name__}")
    if cfg.gan_weight > 0 and not family.supports_gan:
        kinds = _kinds("supports_gan", " and ")
        raise ValueError(f"the GAN loss is implemented for {kinds} tokenizers only; use --gan-weight 0")


def teacher_inputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The images a semantic teacher sees for batch ``x``: the batch itself, or the frames a video model names."""
    return model.semantic_frames(x) if hasattr(model, "semantic_frames") else x


def train_tokenizer(cfg: TrainConfig, model=None) -> dict:
    """Trains ``model`` (default: ``create_tokenizer(cfg.preset, **cfg.model_overrides)``; any tokenizer family)
    and writes model/, checkpoints/, metrics.json, reconstruction pictures (PNG grid; PNG strip + GIF for videos)
    and TensorBoard logs under ``cfg.output_dir``. Returns the metrics dict."""
    run_start = time.time()
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        log_with="tensorboard",
        project_dir=str(out),
        # the schedule counts optimizer steps; by default accelerate would advance it once per process
        step_scheduler_with_optimizer=False,
    )
    set_seed(cfg.seed)
    set_cpu_threads(accelerator, cfg.cpu_threads)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    check_model_and_data(type(model) if model is not None else preset_class(cfg.preset), cfg)
    teacher = load_teacher(cfg.semantic_teacher).to(accelerator.device) if cfg.semantic_teacher else None
    if model is None:
        semantic = {"semantic_dim": teacher.dim, "semantic_weight": cfg.semantic_weight} if teacher else {}
        model = create_tokenizer(cfg.preset, **{**semantic, **cfg.model_overrides})
    elif teacher is not None and getattr(model.config, "semantic_dim", 0) != teacher.dim:
        raise ValueError(f"the model's semantic_dim must equal the teacher's feature width {teacher.dim}")
    anchor_tokenizer = None
    if cfg.anchor_tokenizer:
        if not getattr(model.config, "anchor_frame", False) or cfg.data != "videos":
            raise ValueError("anchor_tokenizer trains an anchored video tokenizer (anchor_frame=True) on videos")
        anchor_tokenizer = load_tokenizer(cfg.anchor_tokenizer).to(accelerator.device).eval().requires_grad_(False)
    images_2d = not family_of(type(model)).takes_videos
    if images_2d:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())

    videos = cfg.data == "videos"
    source = BatchSource(training_sets(cfg, **({"frames": cfg.frames} if videos else {})), cfg, accelerator)
    stills = None
    if videos and cfg.image_batch_size:
        stills_cfg = dataclasses.replace(cfg, batch_size=cfg.image_batch_size)
        stills = BatchSource(training_sets(stills_cfg, "scenes"), stills_cfg, accelerator)
    extra = {"frames": cfg.eval_frames} if videos else {}
    if cfg.data in ("scenes", "videos"):
        extra["palette"] = cfg.palette
    heldout_set = build_dataset(cfg.data, "heldout", cfg.resolution, cfg.eval_samples, cfg.seed, **extra)
    heldout = materialize(heldout_set, 0, "rendering held-out set", limit=cfg.eval_samples)
    ood = ood_images(cfg.ood_samples, cfg.resolution, cfg.seed) if cfg.ood_samples else {}

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    use_gan, use_lpips = cfg.gan_weight > 0, cfg.lpips_weight > 0
    lpips = build_lpips().to(accelerator.device) if use_lpips else None
    if use_gan:
        disc = PatchDiscriminator()
        d_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        model, opt, sched, disc, d_opt = accelerator.prepare(model, opt, sched, disc, d_opt)
    else:
        model, opt, sched = accelerator.prepare(model, opt, sched)
    trained = [model, disc] if use_gan else [model]

    start = resume_from_latest(accelerator, out) if cfg.resume else 0
    accelerator.init_trackers("tokenizer", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})

    raw = accelerator.unwrap_model(model)
    guard = NonFiniteGuard(accelerator, out, cfg.max_nonfinite_skips)
    t0 = time.time()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train tokenizer",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    for step in bar:
        x = source.batch(step).to(accelerator.device)
        if images_2d:
            x = x.contiguous(memory_format=torch.channels_last)
        given = {"semantic_target": teacher(teacher_inputs(raw, x))} if teacher is not None else {}
        if anchor_tokenizer is not None:
            with torch.no_grad():
                given["anchor"] = anchor_tokenizer.decode(anchor_tokenizer.encode(x[:, 0])).clamp(-1, 1)
        with accelerator.autocast():
            recon, losses = model(x, **given)
            loss = losses["loss"]
            if stills is not None:
                loss = loss + model(stills.batch(step).to(accelerator.device))[1]["loss"]
            if use_lpips:
                loss = loss + cfg.lpips_weight * lpips(recon.float().clamp(-1, 1), x.float())
            if use_gan and step >= cfg.gan_start:
                g_loss = hinge_g_loss(disc(recon))
                weight = adaptive_gan_weight(loss, g_loss, raw.decoder.last_layer)
                loss = loss + cfg.gan_weight * weight * g_loss
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        # grad_clip 0: max_norm inf only measures the norm (one pass over the gradients) for the guard
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if guard.check(step, opt, loss, grad_norm):
            opt.step()
        sched.step()
        if use_gan and step >= cfg.gan_start:
            with accelerator.autocast():
                d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            d_opt.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            if guard.check(step, d_opt, d_loss):
                d_opt.step()

        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logs = {k: float(v.detach()) for k, v in losses.items()}
            logs["lr"] = sched.get_last_lr()[0]
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", usage=f"{logs['usage']:.2f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(accelerator, out, step + 1, trained)
    wall = time.time() - t0
    save_checkpoint(accelerator, out, cfg.steps, trained)

    checksums = accelerator.gather(torch.tensor([param_checksum(raw)], device=accelerator.device)).tolist()
    metrics: dict = {}
    if accelerator.is_main_process:
        metrics = evaluate_tokenizer(raw, heldout)
        metrics.update(evaluate_ood(raw, ood))
        ood_keys = [f"psnr_{name}" for name in ood]
        metrics.update(
            steps=cfg.steps,
            trained_steps_this_run=cfg.steps - start,
            wall_seconds=round(wall, 1),
            num_processes=accelerator.num_processes,
            mixed_precision=accelerator.mixed_precision,
            params=params,
            rank_param_checksums=checksums,
            data=cfg.data,
            palette=cfg.palette if cfg.data in ("scenes", "videos") else None,
            photo_fraction=cfg.photo_fraction if cfg.data in ("scenes", "videos") else 0.0,
            preset=cfg.preset,
            tokenizer=type(raw).__name__,
            semantic_teacher=teacher.name if teacher is not None else None,
            skipped_files=source.skipped,
            nonfinite_skips=guard.skips,
            cpu_threads=torch.get_num_threads(),
        )
        save_model_atomically(raw, out / "model")
        save_reconstructions(raw, heldout, out, ood)
        metrics["run_seconds"] = round(time.time() - run_start, 1)  # data, training, evaluation and saving
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        accelerator.log(
            {f"eval/{k}": metrics[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity", *ood_keys)},
            step=cfg.steps,
        )
    accelerator.end_training()
    return metrics
