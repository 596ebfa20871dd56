"""The toy VLM: tokenizer, question generation, and the shipped checkpoint in assets/toy_vlm (loaded offline)."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from pruning import apply_pruning
from pruning.toy_vlm import (
    COUNT_WORDS,
    QUESTION_TYPES,
    SceneVocab,
    accuracy,
    build_tokenizer,
    encode,
    num_image_tokens,
    pack_questions,
    predict,
    question_set,
    referent_targets,
    sample_question,
    scene_questions,
    toy_llava_config,
    train,
)
from tokenizers_vis.data import COLORS, POSITIONS, SHAPES, SyntheticScenes

ASSET = Path(__file__).resolve().parents[1] / "assets" / "toy_vlm"
VOCAB = SceneVocab(SHAPES, COLORS, POSITIONS)
# Bars from the measured held-out accuracy of the shipped model (see assets/toy_vlm/training.json and
# benchmarks/pruning.md), with a margin for the smaller test set.
MIN_ACCURACY = 0.9  # measured: 99.75 % on 800 held-out questions (chance about 19 %)
MIN_IDPRUNER_SHARE = 0.9  # of the unpruned accuracy at keep_ratio 0.25 (measured 99 % on 400 questions)


def test_tokenizer_round_trip():
    tok = build_tokenizer(VOCAB)
    for question in ("what colour is the circle ?", "where is the red square ?", "what shape is at the top left ?"):
        ids = tok(question).input_ids
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == question
    assert tok("what colour is the zebra ?").input_ids[-2] == tok.unk_token_id
    batch = encode(tok, ["how many objects are there ?", "what colour is the star ?"], 16, ["two", "red"])
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [16, 16]
    assert batch["attention_mask"][:, -1].all() and tok.convert_ids_to_tokens(batch["input_ids"][:, -1]) == [
        "two",
        "red",
    ]


def test_questions_are_unambiguous_and_match_labels():
    # two red circles, one blue square: the circle's colour and the red circle's position are ambiguous
    labels = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 4], [1, 2, 0, 8]])
    qs = scene_questions(labels, VOCAB)
    assert [q.answer for q in qs["count"]] == ["three"]
    assert [(q.question, q.answer) for q in qs["colour"]] == [("what colour is the square ?", "blue")]
    assert [(q.question, q.answer) for q in qs["position"]] == [("where is the blue square ?", "bottom_right")]
    assert [q.answer for q in qs["shape"]] == ["circle", "circle", "square"]

    scenes = SyntheticScenes(60, 32, split="heldout", seed=3)
    for i in range(len(scenes)):
        labels = scenes[i]["labels"]
        objects = [row for row in labels.tolist() if row[0] >= 0]
        qs = scene_questions(labels, VOCAB)
        assert qs["count"][0].answer == COUNT_WORDS[scenes[i]["num_objects"]]
        for q in qs["colour"]:
            matches = [o for o in objects if f"the {SHAPES[o[0]]} ?" in q.question]
            assert len(matches) == 1 and COLORS[matches[0][1]] == q.answer
        for q in qs["shape"]:
            matches = [o for o in objects if q.question.endswith(f"at the {POSITIONS[o[3]]} ?")]
            assert len(matches) == 1 and SHAPES[matches[0][0]] == q.answer
        for q in qs["position"]:
            matches = [o for o in objects if f"is the {COLORS[o[1]]} {SHAPES[o[0]]} ?" in q.question]
            assert len(matches) == 1 and VOCAB.position_answer(matches[0][3]) == q.answer
    _, items = question_set([scenes[i] for i in range(40)], VOCAB, seed=1)
    assert {it.kind for it in items} == set(QUESTION_TYPES)


def test_referents_name_the_object_each_question_is_about():
    labels = torch.tensor([[0, 0, 0, 0], [-1, -1, -1, -1], [1, 2, 0, 8]])  # a padding row between two objects
    qs = scene_questions(labels, VOCAB)
    assert qs["count"][0].referent == -1
    assert [q.referent for q in qs["shape"]] == [0, 2]
    assert [q.referent for q in qs["colour"]] == [0, 2] and [q.referent for q in qs["position"]] == [0, 2]
    scenes = [{"labels": labels}, {"labels": labels}]
    items = [[qs["position"][1], qs["count"][0]], [qs["shape"][0]]]
    targets = referent_targets(items, scenes, slots=3)
    assert targets.shape == (2, 3, 3)
    assert targets[0, 0].tolist() == [1, 2, 8]  # the square's shape, colour and cell
    assert targets[1, 0].tolist() == [0, 0, 0]
    assert targets[0, 1:].eq(-1).all() and targets[1, 1:].eq(-1).all()  # a count question; empty slots


def test_packed_questions_equal_single_prompts():
    # each packed segment must see exactly what the left-padded single-question prompt of predict() sees
    torch.manual_seed(0)
    tok = build_tokenizer(VOCAB)
    model = LlavaForConditionalGeneration(toy_llava_config(tok, image_size=32, patch_size=8)).eval()
    scenes = SyntheticScenes(2, 32, split="train", seed=0)
    rng = random.Random(0)
    items = [[sample_question(scenes[i]["labels"], VOCAB, rng) for _ in range(2 + i)] for i in range(2)]
    images = torch.stack([scenes[i]["image"] for i in range(2)])
    batch = pack_questions(tok, 16, items)
    index, target = batch.pop("target_index"), batch.pop("target")
    assert target[0, 4:].eq(-100).all()  # the first image has fewer questions
    with torch.no_grad():
        packed = model(**batch, pixel_values=images).logits
        # training runs the eager attention: the packed mask must mean the same there
        model.set_attn_implementation("eager")
        eager = model(**batch, pixel_values=images).logits
        model.set_attn_implementation("sdpa")
        torch.testing.assert_close(eager, packed, atol=1e-5, rtol=1e-4)
        for b, row in enumerate(items):
            single = encode(tok, [it.question for it in row], 16)
            logits = model(**single, pixel_values=images[b].expand(len(row), -1, -1, -1)).logits[:, -1]
            torch.testing.assert_close(packed[b, index[b, 0 : 2 * len(row) : 2]], logits, atol=1e-5, rtol=1e-4)
            answers = tok.convert_ids_to_tokens(target[b, 0 : 2 * len(row) : 2].tolist())
            assert answers == [it.answer for it in row]
            assert target[b, 1 : 2 * len(row) : 2].eq(tok.eos_token_id).all()


def test_train_runs_and_lowers_loss():
    torch.manual_seed(0)
    tok = build_tokenizer(VOCAB)
    model = LlavaForConditionalGeneration(toy_llava_config(tok, image_size=32, patch_size=8))
    scenes = SyntheticScenes(64, 32, split="train", seed=0)
    losses = []
    steps = train(
        model,
        tok,
        scenes,
        VOCAB,
        steps=30,
        batch_size=8,
        questions_per_image=4,
        warmup=5,
        log=lambda step, loss: losses.append(loss),
    )
    assert steps == 30 and not model.training
    assert sum(losses[-5:]) < sum(losses[:5])
    # training runs eager attention; the model gets its own back (a private config field: fails loudly if renamed)
    assert model.config._attn_implementation == "sdpa"
    assert model.model.language_model.config._attn_implementation == "sdpa"

    def stop(step, loss):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train(model, tok, scenes, VOCAB, steps=3, batch_size=2, log=stop)
    assert model.config._attn_implementation == "sdpa" and not model.training  # restored after a failed step


@pytest.fixture(scope="module")
def shipped():
    if not (ASSET / "model.safetensors").is_file():
        pytest.fail(f"missing {ASSET}; rebuild it with: python scripts/train_toy_vlm.py")
    model = LlavaForConditionalGeneration.from_pretrained(ASSET, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(ASSET, local_files_only=True)
    res = model.config.vision_config.image_size
    scenes = SyntheticScenes(160, res, split="heldout", seed=0)
    images, items = question_set([scenes[i] for i in range(len(scenes))], VOCAB, seed=0)
    return model, tok, images, items


def test_shipped_model_answers_heldout(shipped):
    model, tok, images, items = shipped
    assert num_image_tokens(model) >= 144
    acc = accuracy(predict(model, tok, images, [it.question for it in items]), items)
    assert acc["all"] >= MIN_ACCURACY, acc
    # generate() answers with one word then stops
    batch = encode(tok, [it.question for it in items[:2]], num_image_tokens(model))
    out = model.generate(**batch, pixel_values=images[:2], max_new_tokens=3, do_sample=False)
    words = tok.convert_ids_to_tokens(out[:, batch["input_ids"].shape[1] :].flatten().tolist())
    assert words[1] == tok.eos_token or words[1] == tok.pad_token


def test_idpruner_keeps_accuracy_on_shipped_model(shipped):
    model, tok, images, items = shipped
    questions = [it.question for it in items]
    base = accuracy(predict(model, tok, images, questions), items)["all"]
    with apply_pruning(model, "idpruner", keep_ratio=0.25) as handle:
        pruned = accuracy(predict(model, tok, images, questions), items)["all"]
        assert handle.last.kept_before_llm.eq(num_image_tokens(model) // 4).all()
    assert pruned >= MIN_IDPRUNER_SHARE * base, (pruned, base)
    info = json.loads((ASSET / "training.json").read_text())
    assert info["heldout_accuracy"]["all"] >= MIN_ACCURACY
