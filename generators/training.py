"""Accelerate training loop for the text-to-image and text-to-video next-token generators.

The captioned scenes (or moving-shape clips, ``data="videos"``, with a video tokenizer) are rendered and tokenized
once (cached on disk, keyed by the tokenizer's weights and the data settings); each step then draws a batch of
cached index grids with a generator seeded by (seed, step, rank), encodes the captions with the frozen prompt
encoder and takes one optimizer step. A resumed run sees exactly the batches, condition dropouts and weights of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tokenizers_vis import load_tokenizer
from tokenizers_vis.data import MovingShapes, SyntheticScenes, collate_images
from tokenizers_vis.registry import family_of
from tokenizers_vis.train_core import (
    AccelerateRunConfig,
    lr_schedule,
    param_groups,
    resolve_mixed_precision,
    resume_from_latest,
    save_checkpoint,
    save_model_atomically,
    set_cpu_threads,
)

from .pipeline import TextToImagePipeline, save_grid
from .prompt_encoder import PromptEncoder
from .registry import create_generator, preset_class
from .video import TextToVideoPipeline, write_video_samples


@dataclass
class GeneratorTrainConfig(AccelerateRunConfig):
    """Everything a generator run needs; serialised to ``train_config.json`` in the output dir."""

    steps: int = 4500  # a long CPU run with bf16 autocast (nt-small, 256 tokens)
    output_dir: str = "runs/generator"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    tokenizer: str = "assets/pipeline/tokenizer"  # a saved tokenizer folder
    prompt_encoder: str = "assets/pipeline/prompt_encoder"  # a saved CLIP / prompt-encoder folder
    prompt_word_embeddings: bool = True  # append the text tower's word embeddings to its states (PromptEncoder)
    preset: str = "nt-small"
    model_overrides: dict = field(default_factory=dict)
    data: str = "scenes"  # captioned sources: "scenes" (text-to-image) | "videos" (text-to-video, moving shapes)
    resolution: int = 64
    frames: int = 9  # clip length for data "videos", 1 + 4k: 9 frames -> 3 latent frames of the video tokenizer
    train_samples: int = 80000
    eval_samples: int = 512
    cache_dir: str = "runs/cache"
    sample_every: int = 1000
    # stored in the pipeline folder as its sampling defaults (scripts/generate.py flags override them)
    sampling_defaults: dict = field(default_factory=lambda: {"guidance_scale": 3.0})
    pipeline_dtype: str = "float32"  # float32 | bfloat16: precision of the generator weights in pipeline/


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def tokenize_data(tokenizer, split: str, cfg: GeneratorTrainConfig, count: int, device, precision: str = "no") -> dict:
    """Renders ``count`` captioned samples of ``split`` and encodes them: ``{"tokens": (N, h, w) int16, "captions":
    [str]}`` for scenes, (N, t, h, w) for videos; cached under ``cfg.cache_dir`` so later runs with the same
    tokenizer skip this. Videos are encoded under ``precision`` autocast ("bf16" runs the 3D convolutions 3x faster
    on CPU, with the same reconstruction PSNR); scenes always in float32."""
    if cfg.data == "scenes":
        key = f"{split}-{cfg.resolution}-{count}-{cfg.seed}"
        data, pixels = SyntheticScenes(count, cfg.resolution, split=split, seed=cfg.seed), "image"
        precision = "no"
    elif cfg.data == "videos":
        if not family_of(type(tokenizer)).takes_videos:
            raise ValueError(f"data 'videos' needs a video tokenizer, got a {type(tokenizer).__name__}")
        key = f"videos-{split}-{cfg.resolution}x{cfg.frames}-{count}-{cfg.seed}-{precision}"
        data, pixels = MovingShapes(count, cfg.resolution, cfg.frames, split=split, seed=cfg.seed), "video"
    else:
        raise ValueError(f"generator training needs captions; supported data: 'scenes', 'videos', got {cfg.data!r}")
    path = Path(cfg.cache_dir) / f"tokens-{key}-{_digest(Path(cfg.tokenizer))}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    # On a GPU the encoder outpaces one rendering process by far, so render in workers; on a CPU the encoder
    # needs every core and rendering is a tenth of the time.
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = DataLoader(data, batch_size=256, num_workers=workers, collate_fn=collate_images)
    tokens, captions = [], []
    for batch in tqdm(loader, desc=f"tokenizing {split} {cfg.data}", leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            tokens.append(tokenizer.encode(batch[pixels].to(device)).to(torch.int16).cpu())
        captions += batch["caption"]
    data = {"tokens": torch.cat(tokens), "captions": captions}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


@torch.no_grad()
def evaluate_generator(model, encoder: PromptEncoder, data: dict, batch_size: int = 128) -> dict:
    """Teacher-forced held-out cross-entropy and next-token accuracy (condition always on); for a next-X generator
    its flow-matching loss on clean context, with noise drawn from a fixed seed so runs compare."""
    model.eval()
    if type(model).family.regresses_codes:
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for i in range(0, len(data["captions"]), batch_size):
                tokens = data["tokens"][i : i + batch_size].long().to(model.device)
                states, _ = encoder(data["captions"][i : i + batch_size])
                total += model.loss(tokens, states).item() * len(tokens)
        return {"heldout_loss": total / len(data["captions"])}
    total, hits, count = 0.0, 0, 0
    for i in range(0, len(data["captions"]), batch_size):
        tokens = data["tokens"][i : i + batch_size].long().to(model.device)
        states, _ = encoder(data["captions"][i : i + batch_size])
        logits = model(tokens, states).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum").item()
        hits += (logits.argmax(-1) == tokens.flatten(1)).sum().item()
        count += tokens.numel()
    return {"heldout_loss": total / count, "heldout_token_accuracy": hits / count}


def write_samples(pipe: TextToImagePipeline, prompts: list[str], path: Path, seed: int, **sampling) -> None:
    """One row per prompt, four samples each (videos: a GIF next to the PNG, which shows each clip's frames)."""
    if pipe.produces_video:
        write_video_samples(pipe, prompts, path, seed, **sampling)
        return
    out = pipe(prompts, num_images_per_prompt=4, seed=seed, **sampling)
    save_grid(out.images, path, per_row=4)


def train_generator(cfg: GeneratorTrainConfig) -> dict:
    """Trains a generator on cached tokens and writes generator/, pipeline/ (a text-to-video one for data "videos"),
    checkpoints/, samples_*.png (and .gif for videos), metrics.json and TensorBoard logs under ``cfg.output_dir``.
    Returns the metrics."""
    run_start = time.time()
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision), log_with="tensorboard", project_dir=str(out)
    )
    set_seed(cfg.seed)
    set_cpu_threads(accelerator, cfg.cpu_threads)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    device = accelerator.device
    tokenizer = load_tokenizer(cfg.tokenizer).to(device).eval()
    encoder = PromptEncoder.from_pretrained(cfg.prompt_encoder, cfg.prompt_word_embeddings).to(device)
    with accelerator.main_process_first():  # one process renders and caches, the others read the cache
        train = tokenize_data(tokenizer, "train", cfg, cfg.train_samples, device, accelerator.mixed_precision)
        heldout = tokenize_data(tokenizer, "heldout", cfg, cfg.eval_samples, device, accelerator.mixed_precision)
    grid = tuple(train["tokens"].shape[1:])
    overrides = dict(codebook_size=tokenizer.codebook_size, grid_size=grid, condition="prompt")
    overrides |= dict(prompt_dim=encoder.dim, prompt_length=encoder.max_length, **cfg.model_overrides)
    set_seed(cfg.seed)  # the same initial weights and dropout draws whether or not the tokens were cached
    regresses_codes = preset_class(cfg.preset).family.regresses_codes
    if regresses_codes:
        codes = tokenizer.quantizer.codes(torch.arange(tokenizer.codebook_size, device=device)[None])[0]
        overrides.setdefault("latent_dim", codes.shape[-1])
    model = create_generator(cfg.preset, **overrides)
    if regresses_codes:
        model.set_codebook(codes)
    params = sum(p.numel() for p in model.parameters())

    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    model, opt, sched = accelerator.prepare(model, opt, sched)

    start = resume_from_latest(accelerator, out) if cfg.resume else 0
    accelerator.init_trackers("logs", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})

    raw = accelerator.unwrap_model(model)
    pipeline_class = TextToVideoPipeline if cfg.data == "videos" else TextToImagePipeline
    pipe = pipeline_class(tokenizer, raw, encoder, cfg.sampling_defaults)
    sample_prompts = heldout["captions"][:8]
    rank = accelerator.process_index
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train generator")
    bar.disable = not accelerator.is_local_main_process
    for step in bar:
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 10**9 + step * 1000 + rank)
        idx = torch.randint(len(train["captions"]), (cfg.batch_size,), generator=gen)
        tokens = train["tokens"][idx].long().to(device)
        states, _ = encoder([train["captions"][i] for i in idx.tolist()])
        with accelerator.autocast():
            # through the (possibly DDP-wrapped) forward, so gradients are all-reduced
            loss = model(tokens, states, return_loss=True)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            accelerator.log({"loss": loss.item(), "lr": sched.get_last_lr()[0]}, step=step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(accelerator, out, step + 1)
        if accelerator.is_main_process and cfg.sample_every and (step + 1) % cfg.sample_every == 0:
            write_samples(pipe, sample_prompts, out / f"samples_{step + 1:06d}.png", cfg.seed)
    wall = time.time() - t0
    save_checkpoint(accelerator, out, cfg.steps)

    metrics: dict = {}
    if accelerator.is_main_process:
        metrics = evaluate_generator(raw, encoder, heldout)
        metrics.update(
            steps=cfg.steps,
            trained_steps_this_run=cfg.steps - start,
            wall_seconds=round(wall, 1),
            params=params,
            grid=list(grid),
            num_processes=accelerator.num_processes,
            mixed_precision=accelerator.mixed_precision,
            cpu_threads=torch.get_num_threads(),
        )
        save_model_atomically(raw, out / "generator")
        pipe.save_pretrained(out / "pipeline", generator_dtype=getattr(torch, cfg.pipeline_dtype))
        write_samples(pipe, sample_prompts, out / "samples.png", cfg.seed)
        metrics["run_seconds"] = round(time.time() - run_start, 1)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.end_training()
    return metrics
