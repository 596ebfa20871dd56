"""Training the project's small CLIP (:class:`~tokenizers_vis.clip.CLIPEncoder`, an ``open_clip.CLIP``) on
captioned synthetic scenes.

A pool of training scenes is rendered once into memory (uint8) and its captions tokenised once; the model is
trained with a symmetric InfoNCE loss under bf16 autocast, AdamW, linear warm-up and cosine decay. Each batch can
also carry hard-negative captions (a scene's caption with one attribute of one object changed). Held-out and
novel scenes then measure retrieval and the zero-shot attribute and binding probes
(:mod:`tokenizers_vis.evaluation.clip_probes`); the model and ``training.json`` go to ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .clip import CLIPEncoder, SmallCLIPConfig, contrastive_loss
from .data.language import HELDOUT_PAIRS
from .data.scenes import SyntheticScenes, render_scenes
from .evaluation.clip_probes import ATTRIBUTES, caption_with, evaluate_clip, to_float
from .train_core import RunConfig, lr_schedule, param_groups


@dataclass
class CLIPTrainConfig(RunConfig):
    """Settings of :func:`train_clip` (the flags of ``scripts/train_clip.py``)."""

    steps: int = 560
    batch_size: int = 128
    weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of the steps spent on linear warm-up
    hard_negatives: float = 0.0  # extra negative captions per batch item, as a fraction of the batch (0 = off)
    negative_attributes: str = "shape,color,size,cell"  # comma-separated attributes the hard negatives may change
    pool: int = 30000  # training scenes rendered once into memory
    eval_size: int = 1000  # held-out scenes (and as many novel ones) for the evaluation
    group_size: int = 100  # retrieval among groups of this many scenes
    resolution: int = 64
    pos_embed: str = "sin_cos_2d"  # ViT positions: sin_cos_2d | learnable
    precision: str = "bf16"  # autocast dtype on the CPU: bf16 | fp32
    threads: int = 2  # torch intra-op threads
    out: str = "runs/clip"

    def __post_init__(self) -> None:
        if self.num_negatives and (not self.attributes or set(self.attributes) - set(ATTRIBUTES)):
            raise ValueError(f"--negative-attributes must be a subset of {','.join(ATTRIBUTES)}")

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.negative_attributes.split(",") if a.strip())

    @property
    def num_negatives(self) -> int:
        return int(round(self.hard_negatives * self.batch_size))


def render(dataset: SyntheticScenes, desc: str) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """All scenes of ``dataset`` as ``(N, 3, R, R)`` uint8, their captions and their descriptions."""
    scenes = [dataset.describe(i) for i in range(len(dataset))]
    return render_scenes(scenes, dataset.resolution, desc), [s["caption"] for s in scenes], scenes


def hard_negative(scene: dict[str, Any], rng: np.random.Generator, attributes: tuple[str, ...]) -> str:
    """The scene's caption with one attribute (shape, colour, size or cell) of one object changed. Held-out
    (shape, colour) pairs are never produced, so the "novel" split stays unseen by the text tower too."""
    objects = scene["objects"]
    while True:
        k = int(rng.integers(len(objects)))
        attr = attributes[int(rng.integers(len(attributes)))]
        taken = {o["cell"] for o in objects}
        values = [v for v in ATTRIBUTES[attr] if v != objects[k][attr] and not (attr == "cell" and v in taken)]
        value = values[int(rng.integers(len(values)))]
        changed = {**objects[k], attr: value}
        if (changed["shape"], changed["color"]) not in HELDOUT_PAIRS:
            return caption_with(objects, k, **{attr: value})


def _fit(
    clip: CLIPEncoder, images: torch.Tensor, captions: list[str], scenes: list[dict[str, Any]], cfg: CLIPTrainConfig
) -> list[float]:
    """``cfg.steps`` optimizer steps on the uint8 pool ``(N, 3, R, R)``; returns the losses."""
    model = clip.model
    token_ids = clip.tokenizer(captions)
    # Scenes that share a caption (same objects, other background or jitter) are true positives of each other:
    # caption ids let contrastive_loss spread each target over every identical caption in the batch, so a
    # duplicate is never a negative (see contrastive_loss for why one-hot targets happen to agree today).
    caption_index: dict[str, int] = {}
    caption_ids = torch.tensor([caption_index.setdefault(c, len(caption_index)) for c in captions])
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(cfg.seed)
    negative_rng = np.random.default_rng(cfg.seed)
    schedule = lr_schedule(max(1, int(cfg.warmup * cfg.steps)), cfg.steps, cfg.min_lr_ratio)
    order, cursor = torch.randperm(len(images), generator=generator), 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="train clip", mininterval=2.0)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(step)
        ids, groups = token_ids[idx], caption_ids[idx]
        text_groups = groups
        if cfg.num_negatives:
            # Random in-batch negatives rarely differ from a scene in one attribute only, so without these the
            # model can match captions coarsely (e.g. get an object's cell only roughly right).
            rows = idx[torch.randperm(len(idx), generator=generator)[: cfg.num_negatives]].tolist()
            negatives = [hard_negative(scenes[i], negative_rng, cfg.attributes) for i in rows]
            negative_groups = [caption_index.setdefault(c, len(caption_index)) for c in negatives]
            ids = torch.cat([ids, clip.tokenizer(negatives)])
            text_groups = torch.cat([groups, torch.tensor(negative_groups)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            image_features, text_features, scale = clip(to_float(images[idx]), ids)
        loss = contrastive_loss(image_features, text_features, scale, groups, text_groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(loss.item())
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{scale.item():.1f}")
    return losses


def train_clip(cfg: CLIPTrainConfig, command: str = "") -> dict[str, Any]:
    """Renders the pools, trains, evaluates on held-out and novel scenes and saves the model and
    ``training.json`` (with ``command``, how the run was started) to ``cfg.out``; returns that report."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, captions, scenes = render(
        SyntheticScenes(cfg.pool, cfg.resolution, split="train", seed=cfg.seed), "render train pool"
    )
    eval_sets = {
        split: render(SyntheticScenes(cfg.eval_size, cfg.resolution, split=split, seed=cfg.seed), f"render {split}")
        for split in ("heldout", "novel")
    }
    t_render = time.perf_counter() - t0

    clip = CLIPEncoder.create(SmallCLIPConfig(image_size=cfg.resolution, vision_pos_embed=cfg.pos_embed))
    t1 = time.perf_counter()
    losses = _fit(clip, images, captions, scenes, cfg)
    t_train = time.perf_counter() - t1

    t2 = time.perf_counter()
    results = {name: evaluate_clip(clip, *data, group=cfg.group_size) for name, data in eval_sets.items()}
    t_eval = time.perf_counter() - t2

    out = Path(cfg.out)
    clip.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "training.json")
    every = max(1, cfg.steps // 50)
    report = {
        "command": command,
        "args": dataclasses.asdict(cfg),
        "params": sum(p.numel() for p in clip.model.parameters()),
        "folder_bytes": size,
        "distinct_train_captions": len(set(captions)),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "loss_curve": {str(s): round(float(np.mean(losses[s : s + every])), 4) for s in range(0, len(losses), every)},
        "logit_scale": float(clip.model.logit_scale.detach().exp()),
        **results,
        "seconds": {
            "render": round(t_render, 1),
            "train": round(t_train, 1),
            "eval": round(t_eval, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report
