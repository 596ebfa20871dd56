"""Text encoders from transformers (tiny random CLIP, T5 and BART checkpoints with tokenizers built here, no
downloads) and the one loader for every prompt encoder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from generators import (
    HFTextEncoder,
    PromptEncoder,
    TextToImagePipeline,
    create_generator,
    load_prompt_encoder,
)
from tokenizers_vis import create_tokenizer

WORDS = "a the red green blue large small circle square star at top bottom left right center and".split()
PROMPTS = ["a red circle at the top left", "a small blue star", "a green square at the center", "a large star"]
LONG = " and ".join(PROMPTS)  # more tokens than any max_length used here
CLIP_POSITIONS = 16
SHIPPED_CLIP = Path(__file__).resolve().parents[1] / "assets" / "pipeline" / "prompt_encoder"


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-pair CLIP tokenizer over WORDS: their letters (inner and word-final), then one merge per letter."""
    vocab, merges = {}, []
    for letter in sorted(set("".join(WORDS))):
        vocab |= {letter: len(vocab), f"{letter}</w>": len(vocab) + 1}
    for word in WORDS:
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


def t5_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer: whole words, and single letters for anything else."""
    letters = sorted(set("".join(WORDS)))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(f"▁{w}", -1.0) for w in WORDS] + [(c, -5.0) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_text_config(tokenizer: CLIPTokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_POSITIONS,
        projection_dim=24,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_config(tokenizer: T5Tokenizer) -> T5Config:
    return T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random transformers checkpoints, each saved with its tokenizer as a plain transformers folder."""
    root = tmp_path_factory.mktemp("text_encoders")
    torch.manual_seed(0)
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    text = clip_text_config(clip_tok)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32)
    bart = BartConfig(
        vocab_size=len(t5_tok),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=t5_tok.pad_token_id,
    )
    models = {
        "clip": (CLIPTextModel(CLIPTextConfig(**text)), clip_tok),
        "clip_proj": (CLIPTextModelWithProjection(CLIPTextConfig(**text)), clip_tok),
        "clip_full": (CLIPModel(CLIPConfig(text_config=text, vision_config=vision | {"patch_size": 16})), clip_tok),
        "t5": (T5EncoderModel(t5_config(t5_tok)), t5_tok),
        "t5_full": (T5ForConditionalGeneration(t5_config(t5_tok)), t5_tok),
        "bart": (BartModel(bart), t5_tok),
    }
    for name, (model, tokenizer) in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: root / name for name in models}


def reference_states(folder, model_class, prompts: list[str], max_length: int, read=lambda m: m) -> torch.Tensor:
    """The last hidden states straight from transformers, for comparison."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    model = read(model_class.from_pretrained(folder).eval())
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


@pytest.mark.parametrize(
    "name, model_class, default_length",
    [
        ("clip", CLIPTextModel, CLIP_POSITIONS),  # the model's positions
        ("clip_proj", CLIPTextModelWithProjection, CLIP_POSITIONS),
        ("t5", T5EncoderModel, 120),  # relative positions, no limit: LlamaGen's 120
    ],
)
def test_encoder_gives_padded_states_and_mask(folders, name, model_class, default_length):
    encoder = load_prompt_encoder(folders[name])
    assert isinstance(encoder, HFTextEncoder) and type(encoder.model) is model_class
    assert encoder.max_length == default_length and encoder.dim == 32 and encoder.device == torch.device("cpu")

    encoder = load_prompt_encoder(folders[name], max_length=12)
    states, mask = encoder(PROMPTS)
    assert states.shape == (4, 12, 32) and states.dtype == torch.float32 and mask.dtype == torch.bool
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in PROMPTS]  # with the special tokens
    assert mask.sum(1).tolist() == lengths and all(n < 12 for n in lengths)
    assert torch.equal(mask, torch.arange(12) < torch.tensor(lengths)[:, None])  # real tokens first, then padding
    torch.testing.assert_close(states, reference_states(folders[name], model_class, PROMPTS, 12))

    long_states, long_mask = encoder([LONG])
    assert long_states.shape == (1, 12, 32) and long_mask.all()  # truncated to max_length
    # deterministic, and a prompt's states do not depend on the others in its batch
    assert torch.equal(encoder(PROMPTS)[0], states)
    torch.testing.assert_close(encoder(PROMPTS[1])[0], states[1:2])


@pytest.mark.parametrize(
    "name, model_class, read",
    [
        ("t5_full", T5EncoderModel, lambda m: m.get_encoder()),  # a whole T5: the encoder only
        ("clip_full", CLIPTextModel, lambda m: m.text_model),  # a whole CLIP: the text tower
        ("bart", BartModel, lambda m: m.get_encoder()),  # any other AutoModel; an encoder-decoder's encoder
    ],
)
def test_loader_reads_the_text_part_of_whole_checkpoints(folders, name, model_class, read):
    encoder = load_prompt_encoder(folders[name], max_length=10)
    assert type(encoder.model) is model_class
    full = {"t5_full": T5ForConditionalGeneration, "clip_full": CLIPModel, "bart": BartModel}[name]
    torch.testing.assert_close(encoder(PROMPTS)[0], reference_states(folders[name], full, PROMPTS, 10, read))


def test_encoder_is_frozen(folders):
    encoder = load_prompt_encoder(folders["t5"], max_length=8)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.train() is encoder and not encoder.training and not encoder.model.training
    assert not any(m.training for m in encoder.modules())
    states, _ = encoder(PROMPTS)
    assert not states.requires_grad


@pytest.mark.parametrize("name", ["clip_proj", "t5"])
def test_save_and_load_round_trip(folders, tmp_path, name):
    encoder = load_prompt_encoder(folders[name], max_length=10)
    encoder.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / HFTextEncoder.config_name).read_text())
    assert saved["max_length"] == 10 and saved["dtype"] == "float32" and saved["word_embeddings"] is False
    loaded = load_prompt_encoder(tmp_path / "enc")
    assert type(loaded.model) is type(encoder.model) and loaded.max_length == 10 and loaded.dim == encoder.dim
    assert torch.equal(loaded(PROMPTS)[0], encoder(PROMPTS)[0])
    assert torch.equal(loaded(PROMPTS)[1], encoder(PROMPTS)[1])
    if name == "clip_proj":  # the projection is kept, though the states do not use it
        assert torch.equal(loaded.model.text_projection.weight, encoder.model.text_projection.weight)


def test_bfloat16_computes_in_bf16_returns_float32_and_is_saved(folders, tmp_path):
    full = load_prompt_encoder(folders["t5"], max_length=10)
    half = load_prompt_encoder(folders["t5"], max_length=10, dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())
    states, mask = half(PROMPTS)
    assert states.dtype == torch.float32 and torch.equal(mask, full(PROMPTS)[1])
    assert not torch.equal(states, full(PROMPTS)[0])  # really computed in bf16 ...
    torch.testing.assert_close(states, full(PROMPTS)[0], atol=0.1, rtol=0.05)  # ... to bf16 precision
    half.save_pretrained(tmp_path / "half")
    again = load_prompt_encoder(tmp_path / "half")
    assert again.dtype == torch.bfloat16 and torch.equal(again(PROMPTS)[0], states)
    assert load_prompt_encoder(tmp_path / "half", dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        load_prompt_encoder(folders["t5"], dtype="bf17")


def test_word_embeddings_are_appended_and_saved(folders, tmp_path):
    plain = load_prompt_encoder(folders["clip"], max_length=10)
    words = load_prompt_encoder(folders["clip"], max_length=10, word_embeddings=True)
    assert words.dim == 64
    states, _ = words(PROMPTS)
    assert torch.equal(states[..., :32], plain(PROMPTS)[0])
    batch = words.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=10, return_tensors="pt")
    table = words.model.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(states[..., 32:], torch.nn.functional.layer_norm(table, (32,)))
    words.save_pretrained(tmp_path / "words")
    assert load_prompt_encoder(tmp_path / "words").dim == 64  # the saved choice
    assert load_prompt_encoder(tmp_path / "words", word_embeddings=False).dim == 32


def test_max_length_beyond_the_model_positions_is_refused(folders):
    with pytest.raises(ValueError, match=f"exceeds the model's {CLIP_POSITIONS} positions"):
        load_prompt_encoder(folders["clip"], max_length=CLIP_POSITIONS + 1)


@pytest.mark.parametrize("name", ["clip", "t5"])
def test_generator_learns_from_the_states(folders, fit, name):
    """Four prompts, each with its own fixed grid: a tiny next-token generator trained on their states draws each
    prompt's grid greedily (one shared state for all four gets about a third of the tokens right)."""
    encoder = load_prompt_encoder(folders[name], max_length=12)
    states, _ = encoder(PROMPTS)  # frozen: computed once, as a training run caches them beside the tokens
    torch.manual_seed(0)
    model = create_generator(
        "nt-tiny",
        codebook_size=16,
        grid_size=(4, 4),
        condition="prompt",
        prompt_dim=encoder.dim,
        prompt_length=encoder.max_length,
    )
    targets = torch.randint(0, 16, (4, 4, 4))

    def batch():
        rows = torch.randint(0, 4, (16,))
        return targets[rows], states[rows]

    losses = fit(model, batch, 80, 3e-3)
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
    assert torch.equal(model.eval().generate(states, temperature=0), targets)


def test_pipeline_with_a_transformers_encoder_saves_loads_and_generates(folders, tmp_path):
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny").eval()
    encoder = load_prompt_encoder(folders["t5"], max_length=10, dtype="bfloat16")
    generator = create_generator(
        "nt-tiny",
        codebook_size=tokenizer.codebook_size,
        grid_size=(4, 4),
        prompt_dim=encoder.dim,
        prompt_length=encoder.max_length,
    )
    pipe = TextToImagePipeline(tokenizer, generator, encoder)
    out = pipe(PROMPTS[:2], num_images_per_prompt=2, seed=3)
    assert out.tokens.shape == (4, 4, 4) and len(out.images) == 4
    with pytest.raises(ValueError, match="HFTextEncoder.*no image tower"):
        pipe(PROMPTS[:2], num_candidates=2)

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["prompt_encoder"] == ["generators", "HFTextEncoder"]
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.prompt_encoder, HFTextEncoder) and loaded.prompt_encoder.dtype == torch.bfloat16
    assert loaded.prompt_encoder.max_length == 10
    assert torch.equal(loaded(PROMPTS[:2], num_images_per_prompt=2, seed=3).tokens, out.tokens)


def test_project_clip_folders_load_as_before(clip_folder, tmp_path):
    shipped = load_prompt_encoder(SHIPPED_CLIP)
    assert type(shipped) is PromptEncoder and shipped.word_embeddings  # the folder's saved choice
    reference = PromptEncoder.from_pretrained(SHIPPED_CLIP)
    assert torch.equal(shipped(PROMPTS)[0], reference(PROMPTS)[0])

    bare = load_prompt_encoder(clip_folder)  # a bare CLIP folder: no word embeddings, float32
    assert type(bare) is PromptEncoder and not bare.word_embeddings and bare.dtype == torch.float32
    half = load_prompt_encoder(clip_folder, dtype="bfloat16", word_embeddings=True)
    states, _ = half(PROMPTS)
    assert half.dtype == torch.bfloat16 and states.dtype == torch.float32 and half.dim == 2 * bare.dim
    half.save_pretrained(tmp_path / "half")
    again = load_prompt_encoder(tmp_path / "half")
    assert again.dtype == torch.bfloat16 and again.word_embeddings and torch.equal(again(PROMPTS)[0], states)
    with pytest.raises(ValueError, match="fixed context length"):
        load_prompt_encoder(clip_folder, max_length=bare.max_length + 1)


def test_open_clip_names_go_to_open_clip():
    # no tag: refused by open_clip's own registry before any download
    with pytest.raises(ValueError, match="open_clip model 'ViT-B-32' needs a pretrained tag"):
        load_prompt_encoder("open_clip:ViT-B-32")


def test_hub_name_offline_fails_fast_naming_the_model_and_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    name = "no-such-owner-x7/flan-t5-xl"  # LlamaGen's google/flan-t5-xl might be in this machine's cache
    with pytest.raises(OSError, match=f"'{name}'.*HF_HUB_OFFLINE.*assets/pipeline/prompt_encoder"):
        load_prompt_encoder(name)
    assert time.perf_counter() - start < 5


def test_unknown_hub_name_fails_fast_online_or_not(monkeypatch):
    """Without HF_HUB_OFFLINE one request decides (no retry loop): no network here, a missing repo elsewhere."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(OSError, match="'no-such-owner-x7/no-such-text-encoder'.*save_pretrained"):
        load_prompt_encoder("no-such-owner-x7/no-such-text-encoder")
    assert time.perf_counter() - start < 25  # at most the probe's 10 s timeout, twice over
