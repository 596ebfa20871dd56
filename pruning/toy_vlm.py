"""A toy VLM to measure pruning on: a tiny ``LlavaForConditionalGeneration`` trained on VQA over labelled scenes.

The scene data is an argument (any sequence of dicts with ``"image"`` ``(3, H, W)`` in [-1, 1] and ``"labels"``
``(max_objects, 4)`` rows ``(shape_id, colour_id, size_id, cell_id)`` padded with -1, e.g. the project's
``tokenizers_vis.data.SyntheticScenes``) together with the attribute names (``SceneVocab``), so ``pruning`` keeps
depending on torch and transformers only.

Prompts are ``<bos> <image>×N question ?``; the answer is one word followed by ``<eos>``. Training packs several
questions after one copy of an image's visual tokens (``pack_questions``), which the decoder's cost is dominated by.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

QUESTION_TYPES = ("colour", "shape", "count", "position")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<image>")
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class SceneVocab:
    """Names of the label ids: ``shapes[shape_id]``, ``colors[colour_id]``, ``positions[cell_id]``."""

    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    positions: tuple[str, ...]
    size_fractions: tuple[float, ...] = (0.5, 0.88)  # object diameter / cell side, by size_id
    max_objects: int = 3

    def position_answer(self, cell: int) -> str:
        """One-word answer for a cell ("top left" -> "top_left")."""
        return self.positions[cell].replace(" ", "_")


@dataclass(frozen=True)
class VQAItem:
    question: str
    answer: str
    kind: str  # one of QUESTION_TYPES
    referent: int = -1  # the labels row of the object the question is about; -1 = none (count questions)


def scene_questions(labels: torch.Tensor, vocab: SceneVocab) -> dict[str, list[VQAItem]]:
    """Every unambiguous question about one scene, by type. labels ``(max_objects, 4)``, -1 rows = no object.

    A colour question names a shape that occurs once; a position question names a (colour, shape) pair that occurs
    once; a shape question names an occupied cell (cells hold at most one object).
    """
    objects = {i: tuple(int(v) for v in row) for i, row in enumerate(labels.tolist()) if row[0] >= 0}
    shape_count = Counter(o[0] for o in objects.values())
    pair_count = Counter((o[0], o[1]) for o in objects.values())
    out: dict[str, list[VQAItem]] = {k: [] for k in QUESTION_TYPES}
    out["count"].append(VQAItem("how many objects are there ?", COUNT_WORDS[len(objects)], "count"))
    for row, (shape, colour, _, cell) in objects.items():
        question = f"what shape is at the {vocab.positions[cell]} ?"
        out["shape"].append(VQAItem(question, vocab.shapes[shape], "shape", row))
        if shape_count[shape] == 1:
            question = f"what colour is the {vocab.shapes[shape]} ?"
            out["colour"].append(VQAItem(question, vocab.colors[colour], "colour", row))
        if pair_count[(shape, colour)] == 1:
            question = f"where is the {vocab.colors[colour]} {vocab.shapes[shape]} ?"
            out["position"].append(VQAItem(question, vocab.position_answer(cell), "position", row))
    return out


def sample_question(labels: torch.Tensor, vocab: SceneVocab, rng: random.Random, kind: str | None = None) -> VQAItem:
    """One question: a uniformly drawn type among those the scene allows (or ``kind`` when it does), then a uniformly
    drawn question of that type."""
    options = {k: v for k, v in scene_questions(labels, vocab).items() if v}
    if kind not in options:
        kind = rng.choice(sorted(options))
    return rng.choice(options[kind])


def question_set(scenes: Sequence[dict], vocab: SceneVocab, seed: int = 0) -> tuple[torch.Tensor, list[VQAItem]]:
    """A fixed evaluation set: one question per scene, types cycling over ``QUESTION_TYPES``.

    Returns images ``(N, 3, H, W)`` and the N questions.
    """
    rng = random.Random(seed)
    items = [sample_question(s["labels"], vocab, rng, QUESTION_TYPES[i % 4]) for i, s in enumerate(scenes)]
    return torch.stack([s["image"] for s in scenes]), items


# ---- tokenizer ---------------------------------------------------------------------------------------------------


def vocabulary(vocab: SceneVocab) -> list[str]:
    """Every word of every question and answer (sorted), after the special tokens."""
    words = {"how", "many", "objects", "are", "there", "what", "colour", "shape", "is", "at", "the", "where", "?"}
    words |= set(COUNT_WORDS[: vocab.max_objects + 1]) | set(vocab.shapes) | set(vocab.colors)
    for i, name in enumerate(vocab.positions):
        words |= set(name.split()) | {vocab.position_answer(i)}
    return [*SPECIAL_TOKENS, *sorted(words)]


def build_tokenizer(vocab: SceneVocab) -> PreTrainedTokenizerFast:
    """Word-level tokenizer (whitespace split, ``<bos>`` prepended, left padding) for ``generate()``-style batches."""
    words = vocabulary(vocab)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(list(SPECIAL_TOKENS))  # matched before splitting, so "<image><image>" is two tokens
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", words.index("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def encode(
    tokenizer: PreTrainedTokenizerFast, questions: Sequence[str], num_image_tokens: int, answers=None
) -> dict[str, torch.Tensor]:
    """Processor-style batch: ``input_ids`` / ``attention_mask`` ``(B, L)``, left-padded, each prompt holding
    ``num_image_tokens`` ``<image>`` placeholders; with ``answers``, each answer word is appended."""
    image = IMAGE_TOKEN * num_image_tokens
    texts = [f"{image} {q}" for q in questions]
    if answers is not None:
        texts = [f"{t} {a}" for t, a in zip(texts, answers, strict=True)]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


# ---- model -------------------------------------------------------------------------------------------------------


def toy_llava_config(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 64,
    patch_size: int = 4,
    vision_dim: int = 64,
    vision_layers: int = 2,
    text_dim: int = 128,
    text_layers: int = 4,
    heads: int = 4,
) -> LlavaConfig:
    """A tiny LLaVA: CLIP vision tower (last layer, [CLS] dropped -> ``(image_size / patch_size)²`` visual tokens), a
    2-layer GELU projector and a Llama decoder."""
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("pad", "<pad>"), ("bos", "<bos>"))}
    vision = CLIPVisionConfig(
        hidden_size=vision_dim,
        intermediate_size=2 * vision_dim,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    n_visual = (image_size // patch_size) ** 2
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(256, 2 * (n_visual + 32)),
        bos_token_id=ids["bos"],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=ids["pad"],
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=n_visual,
    )


def num_image_tokens(model: LlavaForConditionalGeneration) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def answer_logits(model: LlavaForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Prefill only: next-token logits after each prompt ``(B, V)`` (left padding puts every prompt's end last)."""
    return model(**batch, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def predict(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    images: torch.Tensor,
    questions: Sequence[str],
    batch_size: int = 64,
) -> list[str]:
    """Greedy one-word answers. images ``(N, 3, H, W)``."""
    n_img = num_image_tokens(model)
    out = []
    for i in range(0, len(questions), batch_size):
        batch = encode(tokenizer, questions[i : i + batch_size], n_img)
        batch["pixel_values"] = images[i : i + batch_size].to(model.dtype)
        out += tokenizer.convert_ids_to_tokens(answer_logits(model, batch).argmax(-1).tolist())
    return out


def accuracy(predictions: Sequence[str], items: Sequence[VQAItem]) -> dict[str, float]:
    """Accuracy overall (``"all"``) and per question type."""
    result = {}
    for kind in (*QUESTION_TYPES, "all"):
        hits = [p == it.answer for p, it in zip(predictions, items, strict=True) if kind in ("all", it.kind)]
        result[kind] = sum(hits) / max(len(hits), 1)
    return result


def token_targets(labels: torch.Tensor, vocab: SceneVocab, grid: int) -> torch.Tensor:
    """Per-visual-token targets for the auxiliary grounding loss: ``(B, grid², 3)`` shape / colour / cell ids of
    the object whose disc covers the patch centre, -1 where none does. labels ``(B, max_objects, 4)``.

    The disc is centred on the object's cell with 0.8× its circumscribed radius, so it stays inside the object despite
    the scenes' small jitter; only tokens that see an object are told what it is, leaving background tokens free.
    """
    centres = (torch.arange(grid) + 0.5) / grid
    py, px = torch.meshgrid(centres, centres, indexing="ij")  # (grid, grid), in image-side units
    out = torch.full((labels.shape[0], grid * grid, 3), -1, dtype=torch.long)
    sizes = torch.tensor(vocab.size_fractions)
    for obj in range(labels.shape[1]):
        lab = labels[:, obj]  # (B, 4)
        present = lab[:, 0] >= 0
        cell = lab[:, 3].clamp(min=0)
        cy, cx = (cell // 3 + 0.5) / 3, (cell % 3 + 0.5) / 3
        radius = 0.8 * sizes[lab[:, 2].clamp(min=0)] / 6
        inside = (px.flatten()[None] - cx[:, None]) ** 2 + (py.flatten()[None] - cy[:, None]) ** 2 < radius[
            :, None
        ] ** 2
        inside &= present[:, None]
        out[inside] = lab[:, [0, 1, 3]].unsqueeze(1).expand(-1, grid * grid, -1)[inside]
    return out


def referent_targets(items: Sequence[Sequence[VQAItem]], scenes: Sequence[dict], slots: int) -> torch.Tensor:
    """Shape / colour / cell ids of each question's object, ``(B, slots, 3)``, -1 where a question names none (count
    questions) and in slots beyond a row's questions. ``items[b]`` are the questions about ``scenes[b]``."""
    out = torch.full((len(items), slots, 3), -1, dtype=torch.long)
    for b, (row, scene) in enumerate(zip(items, scenes, strict=True)):
        for j, item in enumerate(row):
            if item.referent >= 0:
                out[b, j] = scene["labels"][item.referent, [0, 1, 3]]
    return out


def _attribute_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor | float:
    """Summed cross-entropy of the shape / colour / cell heads: ``logits[i]`` ``(..., C_i)`` against ``targets[..., i]``
    over the rows whose targets are known (``targets[..., 0] >= 0``); 0 when none is."""
    known = targets[..., 0] >= 0
    if not known.any():
        return 0.0
    return sum(F.cross_entropy(a[known], targets[..., i][known]) for i, a in enumerate(logits))


# ---- training ----------------------------------------------------------------------------------------------------


def pack_questions(
    tokenizer: PreTrainedTokenizerFast, num_image_tokens: int, items: Sequence[Sequence[VQAItem]]
) -> dict[str, torch.Tensor]:
    """A packed training batch: per image ``<bos> <image>×N`` once, then each of its questions with its answer.

    A 4D mask lets every question segment see the prefix and itself only, and its position ids continue right after
    the prefix, so each segment is exactly the single-question prompt of ``encode`` (RoPE is relative, left padding
    only shifts it) while the image is encoded, and its visual tokens run through the decoder, once per image.

    Returns ``input_ids`` / ``position_ids`` ``(B, L)``, ``attention_mask`` ``(B, 1, L, L)`` (float32, additive: 0 =
    attend, the dtype's minimum = masked; transformers passes a 4D mask through as is, and its eager attention adds
    it, so a boolean one would mask nothing there),
    ``target_index`` / ``target`` ``(B, 2K)``: where the answer and its ``<eos>`` are predicted and what (-100 = none).
    """
    prefix = 1 + num_image_tokens
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    segments = [
        [tokenizer(f"{it.question} {it.answer}", add_special_tokens=False).input_ids for it in row] for row in items
    ]
    length = prefix + max(sum(len(t) for t in row) for row in segments)
    rows = len(items)
    max_targets = 2 * max(len(row) for row in items)
    input_ids = torch.full((rows, length), pad, dtype=torch.long)
    input_ids[:, 0] = tokenizer.bos_token_id
    input_ids[:, 1:prefix] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    position_ids = torch.arange(length).repeat(rows, 1)
    segment = torch.full((rows, length), -1, dtype=torch.long)  # 0 = prefix, j = question j, -1 = padding
    segment[:, :prefix] = 0
    target_index = torch.zeros((rows, max_targets), dtype=torch.long)
    target = torch.full((rows, max_targets), -100, dtype=torch.long)
    for b, row in enumerate(segments):
        start = prefix
        for j, ids in enumerate(row):
            end = start + len(ids)
            input_ids[b, start:end] = torch.tensor(ids)
            position_ids[b, start:end] = torch.arange(prefix, prefix + len(ids))
            segment[b, start:end] = j + 1
            # the last question token predicts the answer, the answer predicts <eos>
            target_index[b, 2 * j : 2 * j + 2] = torch.tensor([end - 2, end - 1])
            target[b, 2 * j : 2 * j + 2] = torch.tensor([ids[-1], eos])
            start = end
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    key, query = segment[:, None, :], segment[:, :, None]
    mask = causal & ((key == 0) | (key == query))  # padding rows see the prefix only, so no row is empty
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[:, None],
        "target_index": target_index,
        "target": target,
    }


def train(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    scenes: Sequence[dict],
    vocab: SceneVocab,
    steps: int = 1000,
    batch_size: int = 32,
    questions_per_image: int = 1,
    lr: float = 2e-3,
    warmup: int = 50,
    seed: int = 0,
    autocast: bool = True,
    grounding_weight: float = 1.0,
    referent_weight: float = 1.0,
    time_limit: float | None = None,
    log: Callable[[int, float], None] | None = None,
) -> int:
    """AdamW + cosine decay on answer and ``<eos>`` cross-entropy; ``questions_per_image`` random questions per
    drawn scene, packed after one copy of its visual tokens (``pack_questions``).

    An auxiliary grounding loss (weight ``grounding_weight``; linear heads on the projected visual tokens predict the
    shape, colour and cell of the object a token sees, ``token_targets``) makes the visual tokens informative from
    the first steps; without it the decoder sits for many hundred steps on the answer prior. A second auxiliary loss
    (weight ``referent_weight``) has linear heads on the decoder's output where the answer is predicted name the
    shape, colour and cell of the object the question is about (``VQAItem.referent``), whatever was asked: the
    decoder's errors are retrievals of the wrong object, and this gives that retrieval three targets per question
    instead of one. The heads are discarded.
    With ``time_limit`` (seconds) the cosine schedule follows elapsed time too and training stops when it is spent.
    ``autocast`` runs the forward in bfloat16 on the model's device type. Training runs the eager attention (its
    backward is faster than SDPA's on CPU at these sizes); the model's own attention is restored. Returns the steps
    run.
    """
    rng = random.Random(seed)
    n_img = num_image_tokens(model)
    dim = model.config.text_config.hidden_size
    device = model.device
    classes = (len(vocab.shapes), len(vocab.colors), len(vocab.positions))
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, c) for c in classes).to(device)
    referent_heads = torch.nn.ModuleList(torch.nn.Linear(dim, c) for c in classes).to(device)
    params = [*model.parameters(), *heads.parameters(), *referent_heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    # the projected visual tokens and the decoder's output, caught by hooks: the output fields that carry them differ
    # between transformers releases (image_hidden_states, image_outputs; hidden_states only on request)
    projected: list[torch.Tensor] = []
    decoded: list[torch.Tensor] = []
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda module, args, output, into=into: into.append(output))
        for name, into in (("model.multi_modal_projector", projected), ("model.language_model.norm", decoded))
    ]
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    start = time.perf_counter()

    def progress(step: int) -> float:
        """Fraction of the run done, by steps or, with a time limit, by time, whichever is further."""
        done = step / steps
        if time_limit is not None:
            done = max(done, (time.perf_counter() - start) / time_limit)
        return min(done, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress(s)))
    )
    model.train()
    done = 0
    bar = tqdm(range(steps), desc="train")
    try:  # the hooks and the model's own attention come back even when a step raises
        for step in bar:
            picks = [scenes[rng.randrange(len(scenes))] for _ in range(batch_size)]
            items = [[sample_question(s["labels"], vocab, rng) for _ in range(questions_per_image)] for s in picks]
            batch = {k: v.to(device) for k, v in pack_questions(tokenizer, n_img, items).items()}
            target_index, target = batch.pop("target_index"), batch.pop("target")
            referents = referent_targets(items, picks, target_index.shape[1] // 2).to(device)  # (B, Q, 3)
            batch["pixel_values"] = torch.stack([s["image"] for s in picks]).to(device)
            labels = torch.stack([s["labels"] for s in picks])
            grounding = token_targets(labels, vocab, math.isqrt(n_img)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(**batch)
                visual = projected.pop().view(len(picks), n_img, -1)  # (B, N, D)
                aux = [head(visual).float() for head in heads]
                at_answer = decoded.pop().gather(1, target_index[:, ::2, None].expand(-1, -1, dim))  # (B, Q, D)
                about = [head(at_answer).float() for head in referent_heads]
            logits = out.logits.float().gather(1, target_index[..., None].expand(-1, -1, out.logits.shape[-1]))
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
            for weight, predicted, wanted in ((grounding_weight, aux, grounding), (referent_weight, about, referents)):
                if weight > 0:
                    loss = loss + weight * _attribute_loss(predicted, wanted)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log is not None:
                log(step, loss.item())
            done = step + 1
            if time_limit is not None and time.perf_counter() - start > time_limit:
                break
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(attention)
        model.eval()
    return done
