"""How well the project's CLIP reads synthetic scenes: top-1 retrieval within groups, a zero-shot attribute probe
(single-object scenes: the true caption against every caption that differs in one attribute; no classifier is
fitted) and an attribute-binding probe (multi-object scenes: the true caption against the one with the first two
objects' colours, or shapes, swapped)."""

from __future__ import annotations

from typing import Any

import torch

from ..clip import CLIPEncoder
from ..data.language import COLORS, POSITIONS, SHAPES, SIZES, make_caption

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "cell": tuple(range(len(POSITIONS)))}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float32 in [-1, 1], CLIP's input."""
    return images.float().mul_(1.0 / 127.5).sub_(1.0)


@torch.no_grad()
def encode_images(clip: CLIPEncoder, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)`` -> L2-normalised embeddings ``(N, E)``."""
    return torch.cat([clip.encode_image(to_float(images[i : i + batch])) for i in range(0, len(images), batch)])


@torch.no_grad()
def encode_texts(clip: CLIPEncoder, texts: list[str], batch: int = 500) -> torch.Tensor:
    """``N`` texts -> L2-normalised embeddings ``(N, E)``."""
    return torch.cat([clip.encode_text(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def caption_with(objects: list[dict[str, Any]], k: int, **changes: Any) -> str:
    """The caption of ``objects`` with object ``k``'s attributes replaced by ``changes``."""
    return make_caption([{**o, **changes} if j == k else o for j, o in enumerate(objects)])


def retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], group: int) -> dict[str, float]:
    """Top-1 retrieval within consecutive groups of ``group`` scenes (embeddings ``(N, E)``). A hit is the retrieved
    item having the same caption as the query's own (two scenes may share a caption; either counts)."""
    i2t = t2i = total = 0
    for start in range(0, len(captions) - group + 1, group):
        sims = image_emb[start : start + group] @ text_emb[start : start + group].T
        caps = captions[start : start + group]
        i2t += sum(caps[j] == caps[k] for j, k in enumerate(sims.argmax(dim=1).tolist()))
        t2i += sum(caps[j] == caps[k] for j, k in enumerate(sims.argmax(dim=0).tolist()))
        total += group
    return {"image_to_text_top1": i2t / max(total, 1), "text_to_image_top1": t2i / max(total, 1), "queries": total}


def attribute_probe(clip: CLIPEncoder, image_emb: torch.Tensor, scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """Zero-shot probe on single-object scenes: pick the true caption among it and every caption that differs in
    one attribute (5 shapes + 7 colours + 1 size + 8 positions = 22 candidates); also per attribute alone
    (6-, 8-, 2- and 9-way). ``image_emb`` ``(N, E)`` embeds ``scenes``."""
    rows = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    candidates: dict[int, dict[str, list[str]]] = {}
    for i in rows:
        obj = scenes[i]["objects"]
        candidates[i] = {a: [caption_with(obj, 0, **{a: v}) for v in values] for a, values in ATTRIBUTES.items()}
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


def evaluate_clip(
    clip: CLIPEncoder, images: torch.Tensor, captions: list[str], scenes: list[dict[str, Any]], group: int
) -> dict[str, dict[str, Any]]:
    """Retrieval, attribute probe and binding probe of ``clip`` on uint8 scenes ``(N, 3, H, W)``, their captions
    and descriptions."""
    clip.eval()
    image_emb = encode_images(clip, images)
    text_emb = encode_texts(clip, captions)
    return {
        "retrieval": retrieval(image_emb, text_emb, captions, group),
        "attribute_probe": attribute_probe(clip, image_emb, scenes),
        "binding_probe": binding_probe(clip, image_emb, scenes),
    }
