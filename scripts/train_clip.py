"""Train the project's small CLIP on captioned synthetic scenes and save it (default ``runs/clip``; ``make assets``
ships it as ``assets/pipeline/prompt_encoder``).

    python scripts/train_clip.py                      # ~5 min on 2 CPU cores
    python scripts/train_clip.py --steps 200 --out runs/clip-smoke

A pool of training scenes is rendered once into memory (uint8), captions are tokenised once, and the model
(:class:`tokenizers_vis.clip.CLIPEncoder`, an ``open_clip.CLIP``) is trained with a symmetric InfoNCE loss under
bf16 autocast, AdamW, linear warm-up and cosine decay. Each batch also carries hard-negative captions (a scene's
caption with one attribute of one object changed; ``--hard-negatives 0`` turns them off). Held-out scenes then
measure image->text and text->image top-1 retrieval within groups, a zero-shot attribute probe (single-object
scenes: the true caption against every caption that differs in one attribute; no classifier is fitted, but note
that the hard negatives train exactly this kind of distinction) and an attribute-binding probe (multi-object
scenes: the true caption against the one with the first two objects' colours, or shapes, swapped). Everything
goes to ``<out>/training.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tokenizers_vis.clip import CLIPEncoder, SmallCLIPConfig, contrastive_loss
from tokenizers_vis.data.language import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES, make_caption
from tokenizers_vis.data.scenes import SyntheticScenes, render_scene

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "cell": tuple(range(len(POSITIONS)))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=560)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps spent on linear warm-up")
    p.add_argument(
        "--hard-negatives",
        type=float,
        default=0.0,
        help="extra negative captions per batch item (fraction of the batch, 0 = off), each the item's caption\n"
        "with one attribute of one object changed",
    )
    p.add_argument(
        "--negative-attributes",
        default="shape,color,size,cell",
        help="comma-separated attributes the hard negatives may change",
    )
    p.add_argument("--pool", type=int, default=30000, help="training scenes rendered once into memory")
    p.add_argument("--eval-size", type=int, default=1000, help="held-out scenes for the evaluation")
    p.add_argument("--group-size", type=int, default=100, help="retrieval among groups of this many scenes")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--pos-embed", choices=("sin_cos_2d", "learnable"), default="sin_cos_2d", help="ViT positions")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast dtype on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", default="runs/clip")
    return p.parse_args(argv)


def render(dataset: SyntheticScenes, desc: str) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """All scenes of ``dataset`` as (N, 3, R, R) uint8, their captions and their descriptions."""
    images = np.empty((len(dataset), dataset.resolution, dataset.resolution, 3), dtype=np.uint8)
    captions, scenes = [], []
    for i in tqdm(range(len(dataset)), desc=desc, mininterval=2.0):
        scene = dataset.describe(i)
        images[i] = render_scene(scene["objects"], scene["background"], dataset.resolution)
        captions.append(scene["caption"])
        scenes.append(scene)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions, scenes


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().mul_(1.0 / 127.5).sub_(1.0)


@torch.no_grad()
def encode_images(clip: CLIPEncoder, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([clip.encode_image(to_float(images[i : i + batch])) for i in range(0, len(images), batch)])


@torch.no_grad()
def encode_texts(clip: CLIPEncoder, texts: list[str], batch: int = 500) -> torch.Tensor:
    return torch.cat([clip.encode_text(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], group: int) -> dict[str, float]:
    """Top-1 retrieval within consecutive groups of ``group`` scenes. A hit is the retrieved item having the same
    caption as the query's own (two scenes may share a caption; either counts)."""
    i2t = t2i = total = 0
    for start in range(0, len(captions) - group + 1, group):
        sims = image_emb[start : start + group] @ text_emb[start : start + group].T
        caps = captions[start : start + group]
        i2t += sum(caps[j] == caps[k] for j, k in enumerate(sims.argmax(dim=1).tolist()))
        t2i += sum(caps[j] == caps[k] for j, k in enumerate(sims.argmax(dim=0).tolist()))
        total += group
    return {"image_to_text_top1": i2t / max(total, 1), "text_to_image_top1": t2i / max(total, 1), "queries": total}


def _caption_with(objects: list[dict[str, Any]], k: int, **changes: Any) -> str:
    return make_caption([{**o, **changes} if j == k else o for j, o in enumerate(objects)])


def attribute_probe(clip: CLIPEncoder, image_emb: torch.Tensor, scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """Zero-shot probe on single-object scenes: pick the true caption among it and every caption that differs in
    one attribute (5 shapes + 7 colours + 1 size + 8 positions = 22 candidates); also per attribute alone
    (6-, 8-, 2- and 9-way)."""
    rows = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    candidates: dict[int, dict[str, list[str]]] = {}
    for i in rows:
        obj = scenes[i]["objects"]
        candidates[i] = {a: [_caption_with(obj, 0, **{a: v}) for v in values] for a, values in ATTRIBUTES.items()}
    texts = sorted({c for per in candidates.values() for cands in per.values() for c in cands})
    emb = dict(zip(texts, encode_texts(clip, texts), strict=True))
    hits = {a: 0 for a in ATTRIBUTES} | {"all": 0}
    for i in rows:
        true = scenes[i]["caption"]
        pool = sorted({c for cands in candidates[i].values() for c in cands})
        scores = {c: float(image_emb[i] @ emb[c]) for c in pool}
        hits["all"] += max(pool, key=scores.__getitem__) == true
        for a, cands in candidates[i].items():
            hits[a] += max(cands, key=scores.__getitem__) == true
    n = max(len(rows), 1)
    out: dict[str, Any] = {"scenes": len(rows), "all_22way": hits.pop("all") / n}
    out.update({f"{a}_{len(v)}way": hits[a] / n for a, v in ATTRIBUTES.items()})
    return out


def binding_probe(clip: CLIPEncoder, image_emb: torch.Tensor, scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """Multi-object scenes: does the true caption beat the caption with the first two objects' colours (shapes)
    swapped? Chance is 0.5; only a model that binds attributes to objects gets it right."""
    out: dict[str, Any] = {}
    for attr in ("color", "shape"):
        rows, swapped = [], []
        for i, s in enumerate(scenes):
            objs = s["objects"]
            if len(objs) >= 2 and objs[0][attr] != objs[1][attr]:
                objs2 = [{**o} for o in objs]
                objs2[0][attr], objs2[1][attr] = objs[1][attr], objs[0][attr]
                rows.append(i)
                swapped.append(make_caption(objs2))
        if not rows:
            continue
        true_emb = encode_texts(clip, [scenes[i]["caption"] for i in rows])
        swap_emb = encode_texts(clip, swapped)
        img = image_emb[rows]
        wins = ((img * true_emb).sum(-1) > (img * swap_emb).sum(-1)).float().mean().item()
        out[f"{attr}_swap_accuracy"] = wins
        out[f"{attr}_swap_scenes"] = len(rows)
    return out


def evaluate(clip: CLIPEncoder, images: torch.Tensor, captions: list[str], scenes: list, group: int) -> dict:
    clip.eval()
    image_emb = encode_images(clip, images)
    text_emb = encode_texts(clip, captions)
    return {
        "retrieval": retrieval(image_emb, text_emb, captions, group),
        "attribute_probe": attribute_probe(clip, image_emb, scenes),
        "binding_probe": binding_probe(clip, image_emb, scenes),
    }


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
            return _caption_with(objects, k, **{attr: value})


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, embeddings and the logit scale."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or name in skip or "embedding" in name or name == "logit_scale":
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    train_set = SyntheticScenes(args.pool, args.resolution, split="train", seed=args.seed)
    images, captions, pool_scenes = render(train_set, "render train pool")
    heldout = SyntheticScenes(args.eval_size, args.resolution, split="heldout", seed=args.seed)
    novel = SyntheticScenes(args.eval_size, args.resolution, split="novel", seed=args.seed)
    eval_sets = {"heldout": render(heldout, "render heldout"), "novel": render(novel, "render novel")}
    t_render = time.perf_counter() - t0

    clip = CLIPEncoder.create(SmallCLIPConfig(image_size=args.resolution, vision_pos_embed=args.pos_embed))
    model = clip.model
    token_ids = clip.tokenizer(captions)
    # Scenes that share a caption (same objects, other background or jitter) are true positives of each other:
    # single-object captions repeat often (~750 distinct ones), so a 256 batch holds a few such pairs. We pass
    # caption ids so contrastive_loss spreads each target uniformly over every identical caption in the batch
    # (soft targets: a duplicate is never treated as a negative). With this deterministic text tower, identical
    # captions get identical text features, and then one-hot InfoNCE happens to give exactly the same loss and
    # gradients (the duplicate terms cancel, see contrastive_loss); the ids make that explicit and keep it right
    # if text dropout or caption augmentation is added. Retrieval metrics below likewise count any scene with the
    # query's caption as a hit.
    caption_index: dict[str, int] = {}
    caption_ids = torch.tensor([caption_index.setdefault(c, len(caption_index)) for c in captions])
    n_params = sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    negative_rng = np.random.default_rng(args.seed)
    n_negatives = int(round(args.hard_negatives * args.batch_size))
    negative_attributes = tuple(a.strip() for a in args.negative_attributes.split(",") if a.strip())
    if n_negatives and (not negative_attributes or set(negative_attributes) - set(ATTRIBUTES)):
        raise SystemExit(f"--negative-attributes must be a subset of {','.join(ATTRIBUTES)}")
    warmup = max(1, int(args.warmup * args.steps))
    autocast = args.precision == "bf16"
    order, cursor = torch.randperm(len(images), generator=generator), 0
    losses: list[float] = []
    t1 = time.perf_counter()
    model.train()
    bar = tqdm(range(args.steps), desc="train clip", mininterval=2.0)
    for step in bar:
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        idx = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, warmup, args.lr)
        ids, groups = token_ids[idx], caption_ids[idx]
        text_groups = groups
        if n_negatives:
            # Random in-batch negatives rarely differ from a scene in one attribute only, so without these the
            # model can match captions coarsely (e.g. get an object's cell only roughly right).
            rows = idx[torch.randperm(len(idx), generator=generator)[:n_negatives]].tolist()
            negatives = [hard_negative(pool_scenes[i], negative_rng, negative_attributes) for i in rows]
            negative_groups = [caption_index.setdefault(c, len(caption_index)) for c in negatives]
            ids = torch.cat([ids, clip.tokenizer(negatives)])
            text_groups = torch.cat([groups, torch.tensor(negative_groups)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            image_features, text_features, scale = clip(to_float(images[idx]), ids)
        loss = contrastive_loss(image_features, text_features, scale, groups, text_groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(loss.item())
        if step % 20 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{scale.item():.1f}")
    t_train = time.perf_counter() - t1

    t2 = time.perf_counter()
    results = {name: evaluate(clip, *data, group=args.group_size) for name, data in eval_sets.items()}
    t_eval = time.perf_counter() - t2

    out = Path(args.out)
    clip.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "training.json")
    every = max(1, args.steps // 50)
    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["train_clip", *argv]),
        "args": vars(args),
        "params": n_params,
        "folder_bytes": size,
        "distinct_train_captions": len(set(captions)),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "loss_curve": {str(s): round(float(np.mean(losses[s : s + every])), 4) for s in range(0, len(losses), every)},
        "logit_scale": float(model.logit_scale.detach().exp()),
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
    summary = {
        k: results[k]["retrieval"] | {"probe_22way": results[k]["attribute_probe"]["all_22way"]} for k in results
    }
    print(json.dumps({"out": str(out), "seconds": report["seconds"], **summary}, indent=2))
    return report


if __name__ == "__main__":
    main()
