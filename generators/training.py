"""Accelerate training loop for the generators: text-to-image, class-to-image, unconditional and text-to-video.

The data (built-in scenes or videos, or the user's folder, class folders or shards: :mod:`generators.data`) is
streamed once through the frozen tokenizer into token shards on disk (:mod:`generators.token_shards`, keyed by the
tokenizer's weights and the data); each step then draws a batch of sample indices with a generator seeded by
(seed, step, rank), reads those rows (mirrored ones at random with flip augmentation), builds their condition
(prompt states from the frozen text encoder, class labels, or none) and takes one optimizer step. A resumed run
sees exactly the batches, condition dropouts and weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from tokenizers_vis import load_tokenizer
from tokenizers_vis.registry import family_of
from tokenizers_vis.train_core import (
    AccelerateRunConfig,
    NonFiniteGuard,
    cpu_name,
    lr_schedule,
    param_checksum,
    param_groups,
    resolve_mixed_precision,
    resume_from_latest,
    save_checkpoint,
    save_model_atomically,
    set_cpu_threads,
)

from .data import CONDITION_NAMES, detect_condition, generator_data
from .pipeline import TextToImagePipeline, save_grid
from .registry import create_generator, preset_class
from .text_encoders import load_prompt_encoder
from .token_shards import TokenShards, pretokenize
from .video import TextToVideoPipeline, write_video_samples


@dataclass
class GeneratorTrainConfig(AccelerateRunConfig):
    """Everything a generator run needs; serialised to ``train_config.json`` in the output dir."""

    steps: int = 4500  # a long CPU run with bf16 autocast (nt-small, 256 tokens)
    output_dir: str = "runs/generator"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    tokenizer: str = "assets/pipeline/tokenizer"  # a saved tokenizer folder
    # the frozen text encoder: a project CLIP / prompt-encoder folder, a transformers text model (folder or hub
    # name) or an open_clip model; see generators.load_prompt_encoder
    prompt_encoder: str = "assets/pipeline/prompt_encoder"
    prompt_word_embeddings: bool = True  # project CLIP: append the text tower's word embeddings (PromptEncoder)
    preset: str = "nt-small"
    model_overrides: dict = field(default_factory=dict)
    # "scenes" | "videos" (built-in, captioned) | a folder of images or class sub-folders | WebDataset shards
    data: str = "scenes"
    condition: str = "auto"  # text | class | none | auto (by the data: captions -> text, class folders -> class)
    flip: bool | None = None  # mirrored copies of the images; None: on for class / none, off for text
    resolution: int = 64
    frames: int = 9  # clip length for data "videos", 1 + 4k: 9 frames -> 3 latent frames of the video tokenizer
    train_samples: int = 80000  # built-in data only; a folder's train split is all of its files
    eval_samples: int = 512  # held-out samples (a folder's held-out split is capped at this)
    cache_dir: str = "runs/cache"
    num_workers: int = -1  # DataLoader workers while tokenizing; -1: 8 on CUDA, none on CPU
    sample_every: int = 1000
    # stored in the pipeline folder as its sampling defaults (scripts/generate.py flags override them), over
    # GUIDANCE_BY_CONDITION's guidance scale
    sampling_defaults: dict = field(default_factory=dict)
    pipeline_dtype: str = "float32"  # float32 | bfloat16: precision of the generator weights in pipeline/
    pipeline_tokenizer_dtype: str = "float32"  # the same for the tokenizer's weights there


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):  # an assembled tokenizer keeps its parts in sub-folders
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# A class embedding in every slot (``class_in_slots``) already keeps samples in their class; stronger guidance then
# pushes them off the patterns they learned (README, "Generate from your own data").
GUIDANCE_BY_CONDITION = {"prompt": 3.0, "class": 1.5, "none": 1.0}


def resolve_condition(cfg: GeneratorTrainConfig) -> str:
    """The generator condition ("prompt" | "class" | "none") of a run, from ``cfg.condition`` and the data."""
    if cfg.condition == "auto":
        return detect_condition(cfg.data)
    if cfg.condition not in CONDITION_NAMES:
        raise ValueError(f"unknown condition {cfg.condition!r}; accepted: auto, {', '.join(CONDITION_NAMES)}")
    return CONDITION_NAMES[cfg.condition]


def tokenize_split(tokenizer, split: str, cfg: GeneratorTrainConfig, condition: str, accelerator) -> TokenShards:
    """Streams one split of the run's data through the tokenizer into token shards under ``cfg.cache_dir`` (every
    rank its share; a finished store is reused, an unfinished one completed). Videos are encoded under the run's
    mixed precision ("bf16" runs the 3D convolutions 3x faster on CPU, with the same reconstruction PSNR);
    images always in float32."""
    count = cfg.train_samples if split == "train" else cfg.eval_samples
    data = generator_data(cfg.data, split, condition, cfg.resolution, count=count, frames=cfg.frames, seed=cfg.seed)
    video = family_of(type(tokenizer)).takes_videos
    if (cfg.data == "videos") != video:
        raise ValueError(
            f"data {cfg.data!r} needs {'a video' if cfg.data == 'videos' else 'an image'} tokenizer, "
            f"got a {type(tokenizer).__name__}"
        )
    flip = (condition != "prompt") if cfg.flip is None else cfg.flip
    precision = accelerator.mixed_precision if video else "no"
    key = f"{data.key}-flip{int(flip)}-{precision}-{_digest(Path(cfg.tokenizer))}"
    # On a GPU the encoder outpaces one decoding process by far, so decode in workers; on a CPU the encoder
    # needs every core and decoding is a small share of the time.
    workers = cfg.num_workers
    if workers < 0:
        workers = min(8, os.cpu_count() or 1) if accelerator.device.type == "cuda" else 0
    store = pretokenize(
        data.dataset,
        tokenizer,
        Path(cfg.cache_dir) / f"tokens-{key}",
        accelerator=accelerator,
        flip=flip and split == "train",
        class_names=data.class_names,
        num_workers=workers,
        precision=precision,
        desc=f"tokenizing {split} {Path(cfg.data).name}",
    )
    if store.skipped:
        accelerator.print(f"skipped {store.skipped} unreadable file(s) in the {split} split of {cfg.data}")
    return store


class Conditioner:
    """Builds the condition of a batch of stored samples: prompt states (frozen text encoder), labels or None."""

    def __init__(self, kind: str, encoder=None) -> None:
        self.kind, self.encoder = kind, encoder

    def __call__(self, store: TokenShards, idx: torch.Tensor, device: torch.device):
        if self.kind == "prompt":
            return self.encoder(store.captions(idx))[0]
        if self.kind == "class":
            return store.labels(idx).to(device)
        return None


@torch.no_grad()
def evaluate_generator(model, condition: Conditioner, data: TokenShards, batch_size: int = 128) -> dict:
    """Teacher-forced held-out cross-entropy and next-token accuracy (condition always on; a generator's given
    ``context_tokens`` are not scored); for a next-X generator its flow-matching loss on clean context, with noise
    drawn from a fixed seed so runs compare."""
    model.eval()
    batches = [torch.arange(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]
    if type(model).family.regresses_codes:
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for idx in batches:
                tokens = data.tokens(idx).to(model.device)
                total += model.loss(tokens, condition(data, idx, model.device)).item() * len(idx)
        return {"heldout_loss": total / len(data)}
    total, hits, count = 0.0, 0, 0
    context = getattr(model.config, "context_tokens", 0)
    for idx in batches:
        grids = data.tokens(idx).to(model.device)
        logits = model(grids, condition(data, idx, model.device))[:, context:].float()
        tokens = grids.flatten(1)[:, context:]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum").item()
        hits += (logits.argmax(-1) == tokens).sum().item()
        count += tokens.numel()
    return {"heldout_loss": total / count, "heldout_token_accuracy": hits / count}


def sample_requests(condition: str, heldout: TokenShards, count: int = 8) -> dict:
    """What the sample grids show: the first held-out captions, the first classes, or unconditional rows."""
    if condition == "prompt":
        return {"prompt": heldout.captions(torch.arange(min(count, len(heldout))))}
    if condition == "class":
        return {"class_labels": list(range(min(count, heldout.num_classes)))}
    return {"rows": count}


def write_samples(pipe: TextToImagePipeline, requests: dict, path: Path, seed: int, **sampling) -> None:
    """One row per prompt or class (or per unconditional row), four samples each (videos: a GIF next to the PNG,
    which shows each clip's frames)."""
    if pipe.produces_video:
        write_video_samples(pipe, requests["prompt"], path, seed, requests.get("first_frame"), **sampling)
        return
    if "rows" in requests:
        out = pipe(num_images_per_prompt=4 * requests["rows"], seed=seed, **sampling)
    else:
        out = pipe(**requests, num_images_per_prompt=4, seed=seed, **sampling)
    save_grid(out.images, path, per_row=4)


def build_generator(cfg: GeneratorTrainConfig, tokenizer, train: TokenShards, condition: str, encoder=None):
    """The run's generator, sized for its tokenizer, token grid and condition (next-X: given the codebook)."""
    overrides = dict(codebook_size=tokenizer.codebook_size, grid_size=train.grid, condition=condition)
    if condition == "prompt":
        overrides |= dict(prompt_dim=encoder.dim, prompt_length=encoder.max_length)
    elif condition == "class":
        overrides |= dict(num_classes=train.num_classes)
    overrides |= cfg.model_overrides
    if "context_tokens" in overrides:
        # training samples and the pipeline can give a first frame only
        given = overrides["context_tokens"]
        if given != "first-frame" or not hasattr(tokenizer, "frame_tokens"):
            raise ValueError(
                "training supports context_tokens='first-frame' only (--first-frame-given), with a tokenizer whose "
                f"clips begin with a first frame's tokens (AnchoredVideoTokenizer); got {given!r} with a "
                f"{type(tokenizer).__name__}"
            )
        overrides["context_tokens"] = tokenizer.frame_tokens
    regresses_codes = preset_class(cfg.preset).family.regresses_codes
    if regresses_codes:
        device = next(tokenizer.parameters()).device
        codes = tokenizer.quantizer.codes(torch.arange(tokenizer.codebook_size, device=device)[None])[0]
        overrides.setdefault("latent_dim", codes.shape[-1])
    model = create_generator(cfg.preset, **overrides)
    if regresses_codes:
        model.set_codebook(codes.cpu())
    return model


def train_generator(cfg: GeneratorTrainConfig) -> dict:
    """Trains a generator on cached tokens and writes generator/, pipeline/ (a text-to-video one for data "videos"),
    checkpoints/, samples_*.png (and .gif for videos), metrics.json and TensorBoard logs under ``cfg.output_dir``.
    Returns the metrics."""
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
    device = accelerator.device
    tokenizer = load_tokenizer(cfg.tokenizer).to(device).eval()
    condition = resolve_condition(cfg)
    accelerator.print(f"training a {condition}-conditioned generator on {cfg.data}")
    # every rank encodes its share of the chunks (pretokenize synchronises the ranks itself)
    heldout = tokenize_split(tokenizer, "heldout", cfg, condition, accelerator)
    train = tokenize_split(tokenizer, "train", cfg, condition, accelerator)
    encoder = None
    if condition == "prompt":
        encoder = load_prompt_encoder(cfg.prompt_encoder, word_embeddings=cfg.prompt_word_embeddings).to(device)
    conditioner = Conditioner(condition, encoder)
    set_seed(cfg.seed)  # the same initial weights and dropout draws whether or not the tokens were cached
    model = build_generator(cfg, tokenizer, train, condition, encoder)
    params = sum(p.numel() for p in model.parameters())

    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    model, opt, sched = accelerator.prepare(model, opt, sched)

    start = resume_from_latest(accelerator, out) if cfg.resume else 0
    accelerator.init_trackers("logs", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})

    # FSDP shards the weights: sampling, evaluation and saving need the gathered copy built after training
    sharded = accelerator.distributed_type == DistributedType.FSDP
    raw = accelerator.unwrap_model(model)
    pipeline_class = TextToVideoPipeline if cfg.data == "videos" else TextToImagePipeline
    sampling = {"guidance_scale": GUIDANCE_BY_CONDITION[condition], **cfg.sampling_defaults}
    pipe = pipeline_class(tokenizer, raw, encoder, sampling, class_names=train.class_names)
    requests = sample_requests(condition, heldout)
    if raw.config.get("context_tokens"):  # such a generator only continues given first frames: the held-out ones
        shown = heldout.tokens(torch.arange(len(requests["prompt"]))).to(device)
        with torch.no_grad():
            requests["first_frame"] = (tokenizer.decode_first_frame(shown) + 1) / 2
    rank = accelerator.process_index
    guard = NonFiniteGuard(accelerator, out, cfg.max_nonfinite_skips)
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train generator")
    bar.disable = not accelerator.is_local_main_process
    for step in bar:
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 10**9 + step * 1000 + rank)
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5 if train.has_flip else None
        tokens = train.tokens(idx, flip).to(device)
        with accelerator.autocast():
            # through the (possibly DDP-wrapped) forward, so gradients are all-reduced
            loss = model(tokens, conditioner(train, idx, device), return_loss=True)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        # grad_clip 0: max_norm inf only measures the norm (one pass over the gradients) for the guard
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if guard.check(step, opt, loss, grad_norm):
            opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            accelerator.log({"loss": loss.item(), "lr": sched.get_last_lr()[0]}, step=step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(accelerator, out, step + 1, [model])
        if accelerator.is_main_process and not sharded and cfg.sample_every and (step + 1) % cfg.sample_every == 0:
            write_samples(pipe, requests, out / f"samples_{step + 1:06d}.png", cfg.seed)
    wall = time.time() - t0
    save_checkpoint(accelerator, out, cfg.steps, [model])
    checksums = accelerator.gather(torch.tensor([param_checksum(raw)], device=device)).tolist()
    if sharded:
        state = accelerator.get_state_dict(model)  # a collective: every rank takes part, rank 0 gets the weights
        if accelerator.is_main_process:
            raw = build_generator(cfg, tokenizer, train, condition, encoder).to(device)
            raw.load_state_dict(state)
            pipe = pipeline_class(tokenizer, raw, encoder, sampling, class_names=train.class_names)

    metrics: dict = {}
    if accelerator.is_main_process:
        metrics = evaluate_generator(raw, conditioner, heldout)
        metrics.update(
            steps=cfg.steps,
            trained_steps_this_run=cfg.steps - start,
            wall_seconds=round(wall, 1),
            params=params,
            grid=list(train.grid),
            condition=condition,
            train_samples=len(train),
            heldout_samples=len(heldout),
            skipped_files=train.skipped + heldout.skipped,
            num_processes=accelerator.num_processes,
            rank_param_checksums=checksums,
            nonfinite_skips=guard.skips,
            final_lr=sched.get_last_lr()[0],
            mixed_precision=accelerator.mixed_precision,
            cpu_threads=torch.get_num_threads(),
        )
        save_model_atomically(raw, out / "generator")
        dtypes = dict(generator_dtype=cfg.pipeline_dtype, tokenizer_dtype=cfg.pipeline_tokenizer_dtype)
        pipe.save_pretrained(out / "pipeline", **{k: getattr(torch, v) for k, v in dtypes.items()})
        write_samples(pipe, requests, out / "samples.png", cfg.seed)
        metrics["run_seconds"] = round(time.time() - run_start, 1)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_training_record(out / "pipeline", cfg, metrics)
    accelerator.end_training()
    return metrics


def write_training_record(folder: Path, cfg: GeneratorTrainConfig, metrics: dict) -> None:
    """``training.json`` in the pipeline folder: how its generator (and, when its run folder is known, its
    tokenizer) were trained, with wall times and the machine, for the benchmark tables."""
    tokenizer_metrics = Path(cfg.tokenizer).parent / "metrics.json"
    tokenizer = json.loads(tokenizer_metrics.read_text()) if tokenizer_metrics.is_file() else {}
    keys = ("preset", "steps", "wall_seconds", "run_seconds", "psnr", "mixed_precision", "cpu_threads")
    record = {
        "generator": {"preset": cfg.preset, "batch_size": cfg.batch_size, "train_samples": cfg.train_samples}
        | {k: metrics[k] for k in keys if k in metrics},
        "tokenizer": {"folder": cfg.tokenizer} | {k: tokenizer[k] for k in keys if k in tokenizer},
        "machine": {"cpu": cpu_name(), "cuda": torch.cuda.is_available()},
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
