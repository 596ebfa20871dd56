"""Generators that learn only the tokens after a given context (``context_tokens``): a video's motion tokens after
its first frame's, for image-to-video and factorized text-to-video."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_anchored_video import PROMPTS, generator_and_encoder, parts
from test_video_generation import video_config

from generators import create_generator, train_generator
from generators.video import TextToVideoPipeline
from tokenizers_vis import create_tokenizer
from tokenizers_vis.anchored_video import AnchoredVideoTokenizer


def test_the_loss_covers_only_the_tokens_after_the_context():
    torch.manual_seed(0)
    model = create_generator("nt-tiny", codebook_size=64, grid_size=(24,), condition="none", context_tokens=16).eval()
    tokens = torch.randint(64, (3, 24))
    logits = model(tokens)
    assert logits.shape == (3, 24, 64)  # teacher-forced logits still cover every slot
    expected = F.cross_entropy(logits[:, 16:].flatten(0, 1), tokens[:, 16:].flatten())
    torch.testing.assert_close(model(tokens, return_loss=True), expected)
    # the context is still read: changing one of its tokens changes the loss
    other = tokens.clone()
    other[:, 15] = (other[:, 15] + 1) % 64
    assert not torch.equal(model(other, return_loss=True), model(tokens, return_loss=True))
    # multi-token heads and the next_all objective train with a context too
    model = create_generator(
        "nt-tiny", codebook_size=64, grid_size=(24,), condition="none", context_tokens=16, num_predict=2
    ).eval()
    assert model(tokens, return_loss=True).isfinite()
    model = create_generator(
        "nt-tiny", codebook_size=64, grid_size=(24,), condition="none", context_tokens=16, objectives={"next_all": 1}
    ).train()
    assert model(tokens, return_loss=True).isfinite()


def test_sampling_needs_the_context_and_keeps_it():
    torch.manual_seed(0)
    model = create_generator("nt-tiny", codebook_size=64, grid_size=(24,), condition="none", context_tokens=16)
    given = torch.randint(64, (2, 16))
    out = model.eval().generate(batch_size=2, first_tokens=given, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 24) and torch.equal(out[:, :16], given)
    with pytest.raises(ValueError, match="learned only the tokens after the first 16"):
        model.generate(batch_size=2)
    with pytest.raises(ValueError, match="learned only the tokens after the first 16"):
        model.generate(batch_size=2, first_tokens=given[:, :8])
    for bad in (-1, 24):
        with pytest.raises(ValueError, match=r"context_tokens must be in \[0, 24\)"):
            create_generator("nt-tiny", codebook_size=64, grid_size=(24,), condition="none", context_tokens=bad)
    with pytest.raises(ValueError, match="next / next_all"):
        create_generator("nt-tiny", codebook_size=64, grid_size=(24,), context_tokens=4, objectives={"random": 1})


def test_a_first_frame_given_video_generator_trains_and_its_pipeline_continues_given_frames(tmp_path):
    tokenizer = AnchoredVideoTokenizer.from_parts(*parts()).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    _, encoder = generator_and_encoder(24)
    encoder.save_pretrained(tmp_path / "clip")
    first_frame = {"context_tokens": "first-frame"}
    cfg = video_config(tmp_path, tmp_path, steps=2, output_dir=str(tmp_path / "run"), model_overrides=first_frame)
    metrics = train_generator(cfg)
    assert 0 <= metrics["heldout_token_accuracy"] <= 1
    config = json.loads((tmp_path / "run" / "pipeline" / "generator" / "config.json").read_text())
    assert config["context_tokens"] == tokenizer.frame_tokens == 16
    # samples (which the generator refuses without first frames) continue the held-out clips': 8 prompts x 4 clips
    assert Image.open(tmp_path / "run" / "samples.png").size == (5 * 33 + 1, 32 * 33 + 1)
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    first = torch.rand(2, 3, 32, 32)
    out = pipe(PROMPTS, seed=0, first_frame=first)
    with torch.no_grad():
        assert torch.equal(out.tokens[:, :16], pipe.tokenizer.encode_first_frame(first * 2 - 1))
    with pytest.raises(ValueError, match="pass first_tokens"):
        pipe(PROMPTS, seed=0)
    # only a first frame's tokens can be the given context in training
    for tok, overrides in ((tokenizer, {"context_tokens": 8}), (create_tokenizer("video1d-tiny"), first_frame)):
        folder = tmp_path / f"refused_{type(tok).__name__}"
        tok.save_pretrained(folder / "tokenizer")
        (folder / "clip").symlink_to(tmp_path / "clip")
        cfg = video_config(folder, tmp_path, steps=1, output_dir=str(tmp_path / "x"), model_overrides=overrides)
        with pytest.raises(ValueError, match="context_tokens='first-frame' only"):
            train_generator(cfg)
