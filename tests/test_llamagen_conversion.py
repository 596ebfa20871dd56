"""LlamaGen checkpoints convert onto our models exactly: outputs equal those of LlamaGen's own code.

The fixtures (``tests/fixtures/llamagen/``) were written by ``scripts/make_llamagen_fixtures.py`` running
LlamaGen's code (commit in ``reference.json``) on a tiny VQ-16-layout tokenizer and a tiny class-conditional GPT
with random weights: their state dicts in LlamaGen's key layout, inputs, and LlamaGen's outputs. ``layouts.json``
holds the key names and shapes of LlamaGen's full-size VQ-16 / VQ-8 and GPT-B / L / XL.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generators import TextToImagePipeline, create_generator, load_generator
from generators import registry as generator_registry
from generators.decoding import TokenDecoder, guided_prefix
from generators.llamagen import GPT_ENTRIES, convert_llamagen_gpt, gpt_layout, infer_gpt_preset
from generators.sampling import TokenSampler
from tokenizers_vis import create_tokenizer, load_tokenizer
from tokenizers_vis import registry as tokenizer_registry
from tokenizers_vis.llamagen import VQ_ENTRIES, convert_llamagen_vq, infer_vq_preset, read_checkpoint, vq_layout

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "llamagen"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
VQ, GPT = REFERENCE["vq"], REFERENCE["gpt"]
GRID = tuple(GPT["grid_size"])


def fixture(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"{name}.safetensors")


def vq_state() -> dict[str, torch.Tensor]:
    """The tiny VQ's state dict as LlamaGen saves it, with its record of codes used (left out of the fixture)."""
    return fixture("vq_state") | {"quantize.codebook_used": torch.zeros(65536)}


@pytest.fixture(scope="module")
def vq():
    return convert_llamagen_vq(vq_state(), VQ["preset"], **VQ["overrides"])


@pytest.fixture(scope="module")
def gpt():
    return convert_llamagen_gpt(fixture("gpt_state"), GPT["preset"], GRID, **GPT["overrides"])


@pytest.fixture(scope="module")
def gpt_io():
    return fixture("gpt_io")


@torch.no_grad()
def test_vq_indices_equal_and_pixels_match_llamagens(vq):
    io = fixture("vq_io")
    indices = vq.encode(io["images"].float() / 127.5 - 1)
    assert torch.equal(indices, io["indices"])
    torch.testing.assert_close(vq.decode(io["indices"]), io["pixels"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_gpt_logits_match_llamagens(gpt, gpt_io):
    tokens, labels = gpt_io["tokens"].view(-1, *GRID), gpt_io["labels"]
    torch.testing.assert_close(gpt(tokens, labels), gpt_io["logits"], rtol=0, atol=1e-4)
    # with guidance: the sampler's prefill over the conditional and null-class rows, guided as sampling guides
    scale = GPT["guidance_scale"]
    prefix = guided_prefix(gpt, labels, None, scale)
    sampler = TokenSampler(gpt.num_tokens, prefix.guided, scale)
    held = torch.cat([torch.full_like(labels[:, None], gpt.config.codebook_size), gpt_io["tokens"][:, :-1]], 1)
    logits = gpt.head(TokenDecoder(gpt, prefix, sampler, use_cache=False).forward(held, 0))
    cond, null = gpt_io["logits"], gpt_io["null_logits"]
    torch.testing.assert_close(logits, torch.cat([cond, null]), rtol=0, atol=1e-4)
    guided = torch.stack([sampler.logits(logits[:, j], j) for j in range(gpt.num_tokens)], 1)
    torch.testing.assert_close(guided, null + (cond - null) * scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("name", "scale"), [("greedy", 1.0), ("greedy_guided", GPT["guidance_scale"])])
def test_gpt_greedy_samples_equal_llamagens(gpt, gpt_io, name, scale):
    for use_cache in (True, False):
        tokens = gpt.generate(gpt_io["labels"], temperature=0, guidance_scale=scale, use_cache=use_cache)
        assert torch.equal(tokens.flatten(1), gpt_io[name])


@pytest.mark.parametrize(("name", "preset"), [("VQ-16", "llamagen-vq16"), ("VQ-8", "llamagen-vq8")])
def test_full_size_vq_layouts_map_onto_the_presets(name, preset):
    layout = {k: tuple(v) for k, v in json.loads((FIXTURES / "layouts.json").read_text())[name].items()}
    with torch.device("meta"):
        model = create_tokenizer(preset)
        assert infer_vq_preset({k: torch.empty(v) for k, v in layout.items()}) == (
            preset,
            {"codebook_size": 16384, "embed_dim": 8},
        )
    layout.pop("quantize.codebook_used")
    assert vq_layout(model) == layout


@pytest.mark.parametrize(("name", "preset"), [("GPT-B", "gpt-b"), ("GPT-L", "gpt-l"), ("GPT-XL", "gpt-xl")])
def test_full_size_gpt_layouts_map_onto_the_presets(name, preset):
    layout = {k: tuple(v) for k, v in json.loads((FIXTURES / "layouts.json").read_text())[name].items()}
    with torch.device("meta"):
        model = create_generator(preset)
        inferred = infer_gpt_preset({k: torch.empty(v) for k, v in layout.items()})
    assert inferred == (preset, {"codebook_size": 16384, "num_classes": 1000})
    assert model.config.layout == "llamagen" and gpt_layout(model) == layout


def test_checkpoints_that_do_not_fit_are_refused_naming_the_first_mismatch():
    overrides = VQ["overrides"]
    with pytest.raises(ValueError, match=re.escape("no key 'encoder.conv_in.weight' (expected shape (4, 3, 3, 3))")):
        convert_llamagen_vq(fixture("gpt_state"), VQ["preset"], **overrides)
    state = vq_state()
    key = "decoder.conv_blocks.1.res.0.conv1.weight"
    with pytest.raises(ValueError, match=re.escape(f"'{key}' has shape (1,), expected (8, 16, 3, 3)")):
        convert_llamagen_vq(state | {key: torch.zeros(1)}, VQ["preset"], **overrides)
    with pytest.raises(ValueError, match=re.escape("unexpected key 'encoder.extra.weight' of shape (2,)")):
        convert_llamagen_vq(state | {"encoder.extra.weight": torch.zeros(2)}, VQ["preset"], **overrides)
    # inferred: five levels make it a VQ-16, whose first weight is wider
    with pytest.raises(ValueError, match=re.escape("'encoder.conv_in.weight' has shape (4, 3, 3, 3), expected (128,")):
        convert_llamagen_vq(state)

    state = fixture("gpt_state")
    key = "layers.1.feed_forward.w3.weight"
    with pytest.raises(
        ValueError,
        match=re.escape(f"not a LlamaGen GPT (gpt-b) checkpoint: '{key}' has shape (5, 32), expected (96, 32)"),
    ):
        convert_llamagen_gpt(state | {key: torch.zeros(5, 32)}, GPT["preset"], GRID, **GPT["overrides"])
    with pytest.raises(ValueError, match="no gpt-\\* preset has this checkpoint's width 32 and depth 2"):
        convert_llamagen_gpt(state)
    with pytest.raises(ValueError, match=re.escape("no key 'cls_embedding.embedding_table.weight'")):
        convert_llamagen_gpt(vq_state(), GPT["preset"], GRID, **GPT["overrides"])


def test_checkpoints_are_read_without_running_pickled_code(tmp_path):
    state = fixture("gpt_state")
    ema = {k: v + 1 for k, v in state.items()}
    path = tmp_path / "0001000.pt"  # a LlamaGen training checkpoint: weights, optimizer state, its argparse args
    torch.save(
        {
            "model": state,
            "ema": ema,
            "optimizer": {"state": {}},
            "steps": 1000,
            "args": argparse.Namespace(gpt_model="GPT-B"),
        },
        path,
    )
    got, entry = read_checkpoint(path, GPT_ENTRIES)
    assert entry == "model" and all(torch.equal(got[k], state[k]) for k in state)
    assert read_checkpoint(path, VQ_ENTRIES)[1] == "ema"
    torch.save(state, tmp_path / "bare.pt")
    assert read_checkpoint(tmp_path / "bare.pt", GPT_ENTRIES)[1] == "state_dict"
    with pytest.raises(ValueError, match="none of the entries module; found: model, ema, optimizer, steps, args"):
        read_checkpoint(path, ("module",))

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(tmp_path / "evil.pt", GPT_ENTRIES)
    assert not marker.exists()


def test_convert_script_writes_folders_the_loaders_pipeline_and_generate_script_read(tmp_path, monkeypatch, gpt_io):
    """The command line on LlamaGen-style .pt files, the tiny models registered as presets for the occasion."""
    convert = _script("convert_checkpoint")
    generate = _script("generate")
    vq_cls, vq_kwargs = tokenizer_registry.PRESETS[VQ["preset"]]
    monkeypatch.setitem(tokenizer_registry.PRESETS, "vq-tiny", (vq_cls, vq_kwargs | VQ["overrides"]))
    gpt_cls, gpt_kwargs = generator_registry.PRESETS[GPT["preset"]]
    monkeypatch.setitem(generator_registry.PRESETS, "gpt-tiny", (gpt_cls, gpt_kwargs | GPT["overrides"]))
    args = argparse.Namespace(vq_model="VQ-16")
    torch.save({"model": vq_state(), "args": args}, tmp_path / "vq.pt")
    torch.save({"model": fixture("gpt_state"), "args": args}, tmp_path / "gpt.pt")
    size = 16 * GRID[0]  # LlamaGen's --image-size for this grid through a factor-16 tokenizer

    convert(f"--from llamagen-vq --ckpt {tmp_path}/vq.pt --preset vq-tiny --out {tmp_path}/vq".split())
    io = fixture("vq_io")
    assert torch.equal(load_tokenizer(tmp_path / "vq").encode(io["images"].float() / 127.5 - 1), io["indices"])

    gpt_flags = f"--from llamagen-gpt --ckpt {tmp_path}/gpt.pt --preset gpt-tiny --image-size {size}"
    convert(f"{gpt_flags} --out {tmp_path}/gpt".split())
    greedy = load_generator(tmp_path / "gpt").generate(gpt_io["labels"], temperature=0)
    assert torch.equal(greedy.flatten(1), gpt_io["greedy"])

    with pytest.raises(SystemExit, match="no key 'cls_embedding.embedding_table.weight'"):
        convert(f"--from llamagen-gpt --ckpt {tmp_path}/vq.pt --preset gpt-tiny --out {tmp_path}/wrong".split())
    assert not (tmp_path / "wrong").exists()

    convert(f"{gpt_flags} --vq-ckpt {tmp_path}/vq.pt --vq-preset vq-tiny --out {tmp_path}/pipeline".split())
    pipe = TextToImagePipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.defaults["guidance_scale"] == 4.0 and pipe.defaults["top_k"] == 2000  # LlamaGen's sample_c2i.py
    out = pipe(class_labels=[int(gpt_io["labels"][1])], temperature=0)
    assert torch.equal(out.tokens.flatten(1), gpt_io["greedy_guided"][1:])
    assert out.pixels.shape == (1, 3, size, size)
    paths = generate(f"--pipeline {tmp_path}/pipeline --class-label 7 --num-images 2 --out {tmp_path}/png".split())
    assert [p.name for p in paths] == ["7_0.png", "7_1.png"] and (tmp_path / "png" / "grid.png").is_file()


def _script(name: str):
    return runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name=f"{name}_cli")["main"]
