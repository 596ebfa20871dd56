"""Training the attribute grader (:class:`~tokenizers_vis.evaluation.AttributeGrader`) that scores generated
scenes.

The grader will read images decoded by a VQ tokenizer, which are slightly blurry and round off the corners of small
shapes, so training images are degraded the same way (gaussian blur, mild noise, down-up resampling, horizontal
flips); pixel colours are never altered, as colour is an attribute. The "train" split never pairs some shapes with
some colours (``HELDOUT_PAIRS``) and a grader trained on it alone learns that correlation; but the grader is the
measuring instrument and must read the novel prompts it will grade, so a share ``recolor`` of the training scenes
have their objects' colours redrawn from all colours before rendering (labels follow).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tqdm import tqdm

from ..data import COLORS, POSITIONS, SyntheticScenes, make_caption, render_scenes, scene_labels
from ..registry import load_tokenizer
from ..train_core import RunConfig, cpu_runs_bf16_fast, lr_schedule, param_groups
from .grader import AttributeGrader, grade
from .reconstruction import reconstruct

RESOLUTION = 64


@dataclass
class GraderTrainConfig(RunConfig):
    """Settings of :func:`train_grader` (the flags of ``scripts/train_grader.py``)."""

    out: str | Path = "assets/grader"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    grad_clip: float = 0.0  # no clipping
    warmup: int = 50  # linear warm-up steps before the cosine decay
    train_scenes: int = 25000  # size of the in-memory training pool
    recolor: float = 0.5  # share of training scenes with colours redrawn
    eval_scenes: int = 1000  # per evaluation split (held-out, novel)
    tokenizer: str | Path | None = None  # also grade this tokenizer's held-out reconstructions
    precision: str = "auto"  # auto | bf16 | fp32; auto: bf16 where the hardware runs it fast
    threads: int | None = None  # torch CPU threads (default: torch's choice)


def render_pool(split: str, num: int, seed: int, recolor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``num`` scenes of ``split`` rendered once: uint8 images (N, 3, R, R), labels (N, 3, 4), captions. A share
    ``recolor`` of the scenes get every object's colour redrawn uniformly from COLORS (all shape-colour pairs)."""
    scenes = SyntheticScenes(num, RESOLUTION, split=split, seed=seed)
    rng = np.random.default_rng([seed, 1])  # its own stream: the scenes stay those of the split
    described = []
    for i in range(num):
        scene = scenes.describe(i)
        if rng.random() < recolor:
            scene["objects"] = [{**o, "color": COLORS[int(rng.integers(len(COLORS)))]} for o in scene["objects"]]
            scene["caption"] = make_caption(scene["objects"])
        described.append(scene)
    images = render_scenes(described, RESOLUTION, f"render {split}")
    labels = torch.stack([scene_labels(s["objects"], scenes.max_objects) for s in described])
    return images, labels, [s["caption"] for s in described]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def _blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable gaussian blur with one sigma per image: (B, C, H, W), sigma (B,); sigma ~0 leaves it unchanged."""
    b, c, h, w = images.shape
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, taps): one per channel
    x = images.reshape(1, b * c, h, w)  # grouped conv = a different kernel for every image and channel
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make clean scenes (B, 3, H, W) in [-1, 1] look like VQ-decoded ones: about 40 % are down-up resampled at a
    random scale, 70 % blurred (sigma 0.3-1.5 px), all get gaussian noise (std up to 0.05). Blur and resampling
    only average neighbouring pixels and the noise is zero-mean, so colours stay what the labels say."""
    b, _, h, w = images.shape
    resampled = torch.rand(b, generator=generator) < 0.4
    if resampled.any():
        size = int(h * (0.35 + 0.45 * torch.rand(1, generator=generator).item()))  # 22-51 px at 64
        small = F.interpolate(images[resampled], size=size, mode="bilinear", antialias=True, align_corners=False)
        images = images.clone()
        images[resampled] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    blurred = torch.rand(b, generator=generator) < 0.7
    images = _blur(images, blurred * (0.3 + 1.2 * torch.rand(b, generator=generator)))
    noise_std = 0.05 * torch.rand(b, 1, 1, 1, generator=generator)
    return (images + noise_std * torch.randn(images.shape, generator=generator)).clamp(-1.0, 1.0)


def flip(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror half of the scenes left-right and move their objects to the mirrored cells. Every shape is symmetric
    about the vertical axis and rotations are drawn symmetrically, so mirrored scenes stay in distribution."""
    mirrored = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    cells = labels[..., 3]
    mirrored_cells = torch.where(cells >= 0, cells - cells % 3 + (2 - cells % 3), cells)
    labels = labels.clone()
    labels[..., 3] = torch.where(mirrored[:, None], mirrored_cells, cells)
    return images, labels


def accuracy(grader: AttributeGrader, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Per-attribute and exact-match accuracy of ``grader`` on float images (N, 3, H, W) against their captions."""
    report = grade(grader, images, captions)
    return {
        "exact_match": round(report["accuracy"], 4),
        **{k: round(report[k], 4) for k in ("shape", "color", "size", "position")},
        "images": len(captions),
    }


def _describe(objects: list[dict]) -> str:
    return "\n".join(f"{o['size']} {o['color']} {o['shape']} @ {POSITIONS[o['cell']]}" for o in objects) or "nothing"


def save_examples(grader: AttributeGrader, images: torch.Tensor, captions: list[str], path: Path) -> None:
    """A row of held-out images (N, 3, H, W) in [-1, 1] titled with the grader's predictions; misgraded ones (up to
    4) come first."""
    report = grade(grader, images, captions)
    wrong = [i for i, ok in enumerate(report["correct"]) if not ok][:4]
    shown = wrong + [i for i in range(len(captions)) if i not in wrong][: 10 - len(wrong)]
    fig = Figure(figsize=(2.2 * len(shown), 3.0))  # no pyplot: no GUI backend, nothing left open
    for ax, i in zip(fig.subplots(1, len(shown)), shown, strict=True):
        ax.imshow(((images[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
        mark = "ok" if report["correct"][i] else "WRONG"
        ax.set_title(f"{_describe(report['predictions'][i])}\n({mark})", fontsize=6.5)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _precision(choice: str, device: torch.device) -> str:
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_runs_bf16_fast() else "fp32"


def _fit(
    model: AttributeGrader, pool: torch.Tensor, labels: torch.Tensor, cfg: GraderTrainConfig, precision: str
) -> dict[str, torch.Tensor]:
    """``cfg.steps`` AdamW steps on augmented batches of the uint8 pool ``(N, 3, R, R)``; returns the last losses."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    generator = torch.Generator().manual_seed(cfg.seed)  # batches and augmentations: a run is a function of seed
    model.train()
    progress = tqdm(range(cfg.steps), desc="train grader", mininterval=2)
    for _ in progress:
        idx = torch.randint(len(pool), (cfg.batch_size,), generator=generator)
        images, batch_labels = flip(to_float(pool[idx]), labels[idx], generator)
        images = degrade(images, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses = model.loss(images.to(device), batch_labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        progress.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()}, refresh=False)
    model.eval()
    return losses


def _evaluate(model: AttributeGrader, cfg: GraderTrainConfig) -> tuple[dict[str, dict], torch.Tensor, list[str]]:
    """Accuracy on held-out, novel and degraded held-out scenes (and the tokenizer's reconstructions), with the
    held-out images (N, 3, R, R) in [-1, 1] and captions."""
    device = next(model.parameters()).device
    heldout = render_pool("heldout", cfg.eval_scenes, cfg.seed)
    heldout_images = to_float(heldout[0])
    results = {"heldout": accuracy(model, heldout_images, heldout[2])}
    novel = render_pool("novel", cfg.eval_scenes, cfg.seed)
    results["novel"] = accuracy(model, to_float(novel[0]), novel[2])
    # Same held-out scenes through a fixed draw of the training degradations: robustness to blur/noise.
    degraded = degrade(heldout_images, torch.Generator().manual_seed(cfg.seed + 1))
    results["heldout_degraded"] = accuracy(model, degraded, heldout[2])
    if cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer).to(device).eval()
        with torch.no_grad():
            recon = torch.cat([reconstruct(tokenizer, x.to(device)).cpu() for x in heldout_images.split(100)])
        results["heldout_reconstructed"] = {"tokenizer": str(cfg.tokenizer), **accuracy(model, recon, heldout[2])}
    return results, heldout_images, heldout[2]


def train_grader(cfg: GraderTrainConfig, command: str = "") -> dict:
    """Trains a grader, evaluates it and saves it with ``training.json`` (accuracies, ``command``: how the run was
    started, seconds) and ``heldout_examples.png`` to ``cfg.out``; returns that record."""
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = _precision(cfg.precision, device)
    pool, pool_labels, _ = render_pool("train", cfg.train_scenes, cfg.seed, cfg.recolor)
    model = AttributeGrader(resolution=RESOLUTION).to(device)
    train_start = time.perf_counter()
    losses = _fit(model, pool, pool_labels, cfg, precision)
    train_seconds = time.perf_counter() - train_start
    results, heldout_images, heldout_captions = _evaluate(model, cfg)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_examples(model, heldout_images[:64], heldout_captions[:64], out / "heldout_examples.png")
    record = {
        "command": command,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "train_scenes": cfg.train_scenes,
        "recolor": cfg.recolor,
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_losses": {k: round(v.item(), 4) for k, v in losses.items()},
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "accuracy": results,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
