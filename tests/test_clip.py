import json

import huggingface_hub.constants
import pytest
import torch

from generators.prompt_encoder import PromptEncoder
from tokenizers_vis.clip import DEFAULT_CLIP, CLIPEncoder, WordTokenizer, contrastive_loss, load_clip
from tokenizers_vis.clip_training import CLIPTrainConfig, train_clip
from tokenizers_vis.data.scenes import SyntheticScenes

TINY = dict(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_head_width=16,
    text_width=32,
    text_layers=1,
    text_heads=2,
    embed_dim=16,
)
CAPTIONS = ["a large red circle at the top left", "a small blue square at the center and a large white star at the top"]


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return CLIPEncoder.create(**TINY).eval()


def test_tokenizer_ids_and_padding():
    tok = WordTokenizer(context_length=16)
    ids = tok(["A red circle at the top left, and a Star"])
    assert ids.shape == (1, 16) and ids.dtype == torch.long
    words = ["a", "red", "circle", "at", "the", "top", "left", ",", "and", "a", "star"]
    expected = [tok.sot_id, *[tok.index[w] for w in words], tok.eot_id]
    assert ids[0, : len(expected)].tolist() == expected
    assert (ids[0, len(expected) :] == tok.pad_id).all() and tok.pad_id == 0
    assert tok.eot_id == max(tok.index.values()) == len(tok) - 1
    assert tok.decode(ids[0]) == "a red circle at the top left, and a star"
    assert {"moving", "towards", "up", "down"} <= set(tok.vocab)


def test_tokenizer_unknown_and_truncation():
    tok = WordTokenizer(context_length=8)
    assert tok(["a zebra"])[0, :4].tolist() == [tok.sot_id, tok.index["a"], tok.unk_id, tok.eot_id]
    long = tok(["a red circle " * 10, "a"])
    assert long.shape == (2, 8)
    assert long[0, -1].item() == tok.eot_id and (long[0] != tok.pad_id).all()
    assert long[0, :7].tolist() == [tok.sot_id] + tok.encode("a red circle a red circle")
    # argmax pooling lands on <eot> in every row
    assert (long.gather(1, long.argmax(1, keepdim=True)) == tok.eot_id).all()


def test_tokenizer_save_load(tmp_path):
    tok = WordTokenizer(context_length=12)
    tok.save(tmp_path / "tok.json")
    back = WordTokenizer.load(tmp_path / "tok.json")
    assert back.vocab == tok.vocab and back.context_length == 12
    assert torch.equal(back(CAPTIONS), tok(CAPTIONS))


def test_clip_shapes(tiny_clip):
    clip = tiny_clip
    assert (clip.image_size, clip.embed_dim, clip.text_width, clip.context_length) == (32, 16, 32, 32)
    images = torch.rand(3, 3, 48, 48) * 2 - 1  # resized to 32 inside
    with torch.no_grad():
        img = clip.encode_image(images)
        txt = clip.encode_text(CAPTIONS)
        states, mask = clip.text_states(CAPTIONS)
    assert img.shape == (3, 16) and txt.shape == (2, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert states.shape == (2, 32, 32) and mask.shape == (2, 32) and mask.dtype == torch.bool
    counts = [len(clip.tokenizer.encode(c)) + 2 for c in CAPTIONS]
    assert mask.sum(1).tolist() == counts and mask[:, 0].all()
    # the <eot> state, projected, is exactly the text embedding
    pooled = states[torch.arange(2), torch.tensor(counts) - 1] @ clip.model.text_projection
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), txt)


def test_save_load_round_trip(tiny_clip, tmp_path):
    tiny_clip.save_pretrained(tmp_path)
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text())["model_cfg"]["embed_dim"] == 16
    back = load_clip(tmp_path).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back.encode_image(images), tiny_clip.encode_image(images))
        assert torch.equal(back.encode_text(CAPTIONS), tiny_clip.encode_text(CAPTIONS))
        assert torch.equal(back.text_states(CAPTIONS)[0], tiny_clip.text_states(CAPTIONS)[0])


def test_load_clip_offline_errors(monkeypatch, tmp_path):
    # Force the hub offline (and an empty cache) so the real open_clip download path fails at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    message = str(err.value)
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message
    assert "no Hugging Face hub access" in message and DEFAULT_CLIP in message
    with pytest.raises(FileNotFoundError, match=DEFAULT_CLIP):
        load_clip(tmp_path / "missing")
    with pytest.raises(ValueError, match="pretrained tag"):
        load_clip("ViT-B-32")


def test_prompt_encoder_frozen(tiny_clip, tmp_path):
    torch.manual_seed(1)
    encoder = PromptEncoder(CLIPEncoder.create(**TINY))
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    states, mask = encoder(CAPTIONS)
    again, mask2 = encoder(CAPTIONS)
    assert states.shape == (2, encoder.max_length, encoder.dim) and states.dtype == torch.float32
    assert not states.requires_grad and torch.equal(states, again) and torch.equal(mask, mask2)
    assert (encoder.dim, encoder.max_length) == (32, 32)
    encoder.save_pretrained(tmp_path / "prompt_encoder")
    folder = tmp_path / "prompt_encoder"
    for back in (PromptEncoder.from_pretrained(folder), PromptEncoder.from_clip(folder)):
        assert not back.training
        out, out_mask = back(CAPTIONS)
        assert torch.equal(out, states) and torch.equal(out_mask, mask)


def test_prompt_encoder_word_embeddings(tmp_path):
    """Word embeddings double the width, keep the states as the first half, tell two words apart whatever their
    states, and survive save/load (a bare CLIP folder loads without them)."""
    torch.manual_seed(1)
    clip = CLIPEncoder.create(**TINY)
    plain, words = PromptEncoder(clip), PromptEncoder(clip, word_embeddings=True)
    prompts = ["a red circle", "a red square"]
    states, mask = plain(prompts)
    both, both_mask = words(prompts)
    assert words.dim == 2 * plain.dim and both.shape == (2, words.max_length, words.dim)
    assert torch.equal(both[..., : plain.dim], states) and torch.equal(both_mask, mask)
    word = 3  # <sot> a red {circle|square}
    assert not torch.allclose(both[0, word, plain.dim :], both[1, word, plain.dim :], atol=1e-3)
    torch.testing.assert_close(both[0, :word], both[1, :word])  # causal tower: identical before the word
    words.save_pretrained(tmp_path / "words")
    assert torch.equal(PromptEncoder.from_pretrained(tmp_path / "words")(prompts)[0], both)
    assert PromptEncoder.from_pretrained(tmp_path / "words", word_embeddings=False).dim == plain.dim
    clip.save_pretrained(tmp_path / "clip")
    assert not PromptEncoder.from_pretrained(tmp_path / "clip").word_embeddings


def test_grouped_loss():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(contrastive_loss(a, b, scale, torch.arange(6)), contrastive_loss(a, b, scale))
    # rows 0 and 1 share a caption. With different text features the soft target changes the loss ...
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    assert not torch.allclose(contrastive_loss(a, b, scale, groups), contrastive_loss(a, b, scale))
    # ... with identical text features (a deterministic tower) one-hot targets give the same loss: terms cancel
    b[1] = b[0]
    torch.testing.assert_close(contrastive_loss(a, b, scale, groups), contrastive_loss(a, b, scale))
    # extra text rows are negatives for image->text only; one equal to a scene's caption counts as its positive
    extra = torch.cat([b, a[:2]])
    plain = contrastive_loss(a, b, scale, groups)
    assert contrastive_loss(a, extra, scale, groups, torch.cat([groups, torch.tensor([7, 8])])) > plain
    with pytest.raises(ValueError, match="text_groups"):
        contrastive_loss(a, extra, scale, groups)
    torch.testing.assert_close(contrastive_loss(a, extra[:6], scale, groups, groups), plain)


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    data = SyntheticScenes(16, resolution=32, seed=3)
    items = [data[i] for i in range(16)]
    images = torch.stack([it["image"] for it in items])
    captions = [it["caption"] for it in items]
    groups = torch.tensor([captions.index(c) for c in captions])
    clip = CLIPEncoder.create(**TINY).train()
    optimizer = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(60):  # a plateau near ln(16) comes first, then the loss falls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = contrastive_loss(*clip(images, captions), groups)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_clip_smoke(tmp_path):
    out = tmp_path / "clip"
    sizes = dict(steps=3, batch_size=16, pool=48, eval_size=40, group_size=20, hard_negatives=0.5)
    report = train_clip(CLIPTrainConfig(**sizes, threads=1, resolution=32, out=str(out)))
    assert (out / "training.json").is_file() and (out / "model.safetensors").is_file()
    assert set(report["heldout"]["retrieval"]) >= {"image_to_text_top1", "text_to_image_top1"}
    assert 0.0 <= report["heldout"]["attribute_probe"]["all_22way"] <= 1.0
    assert load_clip(out).image_size == 32
