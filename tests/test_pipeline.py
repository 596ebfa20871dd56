"""Text-to-image pipeline folders, the generator training loop and the generate.py CLI, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from generators import GeneratorTrainConfig, PromptEncoder, TextToImagePipeline, create_generator, train_generator
from generators.evaluate import IMAGE_METRICS, evaluate_pipeline, heldout_scenes, reference, sampling_cost
from tokenizers_vis import create_tokenizer
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.data import SyntheticScenes
from tokenizers_vis.evaluation import grade, load_grader

ROOT = Path(__file__).resolve().parent.parent
# Bars for the shipped pipelines on 24 held-out-split prompts with their default sampling, measured on three prompt
# sets (seeds 11-13): next-token (assets/pipeline) 62-75 % exact prompts, shape 76-84 %; next-X 2x2 cells
# (assets/pipeline_nx_cell_k2) 75-83 %, shape 86-92 %; colour, size and position 98-100 % for both
# (benchmarks/generation.md has the 200-image numbers), minus a margin for the small sample (chance shape: 1/6).
MIN_SHIPPED = {"accuracy": 0.45, "shape": 0.65, "color": 0.9, "size": 0.9, "position": 0.9}
PROMPTS = [
    "a large red circle at the top left",
    "a small blue star at the center and a large white square at the right",
]


def tiny_parts(preset: str = "nt-tiny", **overrides):
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny").eval()
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    encoder = PromptEncoder(clip)
    generator = create_generator(
        preset,
        codebook_size=tokenizer.codebook_size,
        grid_size=(4, 4),
        prompt_dim=encoder.dim,
        prompt_length=encoder.max_length,
        **overrides,
    )
    if preset.startswith("nx"):  # one training-mode pass runs the codebook's k-means init, so the codes are set
        tokenizer.train()(torch.rand(8, 3, 32, 32) * 2 - 1)
        tokenizer.eval()
        generator.set_codebook(tokenizer.quantizer.codes(torch.arange(tokenizer.codebook_size)[None])[0])
    return tokenizer, generator, encoder


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory):
    """A tiny tokenizer and prompt encoder saved as folders, as a training run would find them."""
    root = tmp_path_factory.mktemp("parts")
    tokenizer, _, encoder = tiny_parts()
    tokenizer.save_pretrained(root / "tokenizer")
    encoder.save_pretrained(root / "clip")
    return root


def test_pipeline_generates_and_round_trips(tmp_path):
    pipe = TextToImagePipeline(*tiny_parts(), defaults={"guidance_scale": 2.0, "top_k": 20})
    out = pipe(PROMPTS, num_images_per_prompt=3, seed=5)
    assert out.tokens.shape == (6, 4, 4) and out.pixels.shape == (6, 3, 32, 32)
    assert len(out.images) == 6 and out.images[0].size == (32, 32)
    assert 0 <= out.pixels.min() and out.pixels.max() <= 1

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["generator"] == ["generators", "NextTokenGenerator"]
    assert index["tokenizer"] == ["tokenizers_vis", "ImageTokenizer"]
    assert index["defaults"]["guidance_scale"] == 2.0
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "pipe")
    again = loaded(PROMPTS, num_images_per_prompt=3, seed=5)
    assert torch.equal(again.tokens, out.tokens)
    assert torch.equal(again.pixels, out.pixels)
    # sampling arguments override the stored defaults
    greedy = loaded(PROMPTS, temperature=0.0)
    assert torch.equal(greedy.tokens, loaded(PROMPTS, temperature=0.0, seed=9).tokens)


def test_next_x_pipeline_generates_and_round_trips(tmp_path):
    pipe = TextToImagePipeline(*tiny_parts("nx-tiny", latent_dim=8, entity="cell", k=2), {"guidance_scale": 2.0})
    out = pipe(PROMPTS, num_images_per_prompt=2, seed=4, flow_steps=3)
    assert out.tokens.shape == (4, 4, 4) and out.pixels.shape == (4, 3, 32, 32)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(loaded(PROMPTS, num_images_per_prompt=2, seed=4, flow_steps=3).tokens, out.tokens)
    with pytest.raises(ValueError, match="next-X"):
        pipe(PROMPTS, top_k=5)
    with pytest.raises(ValueError, match="flow_steps does not apply to a NextTokenGenerator"):
        TextToImagePipeline(*tiny_parts())(PROMPTS, flow_steps=3)


def test_clip_reranking_keeps_the_best_candidate():
    pipe = TextToImagePipeline(*tiny_parts(), defaults={"top_k": 20})
    # one image from 3 candidates draws the same batch as 3 images from 1 candidate each
    all_three = pipe(PROMPTS, num_images_per_prompt=3, seed=2)
    best = pipe(PROMPTS, num_candidates=3, seed=2)
    assert best.tokens.shape == (2, 4, 4) and len(best.images) == 2
    clip = pipe.prompt_encoder.clip
    sims = clip.encode_image(all_three.pixels * 2 - 1).view(2, 3, -1) @ clip.encode_text(PROMPTS)[:, :, None]
    chosen = sims.squeeze(-1).argmax(dim=1)
    for i in range(2):
        assert torch.equal(best.tokens[i], all_three.tokens[3 * i + chosen[i]])
    with pytest.raises(ValueError, match="num_candidates"):
        pipe(PROMPTS, num_candidates=0)
    # an image tokenizer has no round trip to score, and says which tokenizers have one
    with pytest.raises(ValueError, match="round_trip_distance .*AnchoredVideoTokenizer.*got a ImageTokenizer"):
        pipe(PROMPTS, num_candidates=2, rerank="round-trip")


def test_batch_size_splits_a_request_into_seeded_runs_and_sums_stats():
    pipe = TextToImagePipeline(*tiny_parts())
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    out = pipe(prompts, num_images_per_prompt=2, seed=5, batch_size=2, return_stats=True)
    first = pipe(prompts[:2], num_images_per_prompt=2, seed=5, return_stats=True)
    second = pipe(prompts[2:], num_images_per_prompt=2, seed=7, return_stats=True)  # seed + its first prompt's index
    assert torch.equal(out.tokens, torch.cat([first.tokens, second.tokens])) and len(out.images) == 6
    assert out.stats["forward_passes"] == first.stats["forward_passes"] + second.stats["forward_passes"] == 32
    assert pipe(prompts, seed=5).stats is None


def test_evaluate_pipeline_grades_samples_and_counts_forward_passes():
    grader = load_grader(ROOT / "assets" / "grader")
    pipe = TextToImagePipeline(*tiny_parts())
    evaluation = evaluate_pipeline(pipe, grader, PROMPTS, per_prompt=2, seed=0, batch_size=1)
    assert tuple(evaluation.scores) == IMAGE_METRICS and evaluation.samples.shape == (4, 3, 32, 32)
    assert torch.equal(evaluation.samples, pipe(PROMPTS, num_images_per_prompt=2, seed=0, batch_size=1).pixels)
    real, captions = heldout_scenes(6, seed=0)
    ref = reference(pipe, grader, real, captions, graded=4)
    assert ref.reconstructed.shape == real.shape and ref.scores["real"]["accuracy"] == 1.0
    assert sampling_cost(pipe, PROMPTS)["forward_passes"] == 16  # one per token of the 4 x 4 grid
    nx = TextToImagePipeline(*tiny_parts("nx-tiny", latent_dim=8, entity="cell", k=2))
    assert sampling_cost(nx, PROMPTS, flow_steps=2)["forward_passes"] == nx.generator.num_entities == 4


def test_pipeline_refuses_bad_calls(tmp_path):
    pipe = TextToImagePipeline(*tiny_parts())
    with pytest.raises(ValueError, match="pass prompt="):
        pipe()
    with pytest.raises(TypeError, match="accepted: guidance_scale"):
        pipe(PROMPTS, guidance=3)
    with pytest.raises(ValueError, match="needs a prompt_encoder"):
        TextToImagePipeline(*tiny_parts()[:2])
    with pytest.raises(FileNotFoundError, match="make assets"):
        TextToImagePipeline.from_pretrained(tmp_path)


def test_train_generator_writes_a_pipeline_and_resumes_exactly(saved_parts, tmp_path):
    base = dict(
        tokenizer=str(saved_parts / "tokenizer"),
        prompt_encoder=str(saved_parts / "clip"),
        preset="nt-tiny",
        resolution=32,
        train_samples=64,
        eval_samples=16,
        batch_size=8,
        save_every=3,
        sample_every=3,
        cache_dir=str(tmp_path / "cache"),
        mixed_precision="no",
    )
    straight = train_generator(GeneratorTrainConfig(**base, steps=6, output_dir=str(tmp_path / "a")))
    out = tmp_path / "a"
    assert straight["trained_steps_this_run"] == 6 and straight["grid"] == [4, 4]
    assert 0 < straight["heldout_token_accuracy"] <= 1
    assert (out / "samples_000003.png").is_file() and (out / "samples.png").is_file()
    assert len(list((tmp_path / "cache").glob("tokens-*/index.json"))) == 2  # train + held-out, tokenized once

    train_generator(GeneratorTrainConfig(**base, steps=3, output_dir=str(tmp_path / "b")))
    resumed = train_generator(GeneratorTrainConfig(**base, steps=6, output_dir=str(tmp_path / "b"), resume=True))
    assert resumed["trained_steps_this_run"] == 3
    a = TextToImagePipeline.from_pretrained(out / "pipeline")
    b = TextToImagePipeline.from_pretrained(tmp_path / "b" / "pipeline")
    for (name, pa), pb in zip(a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_train_generator_trains_next_x_from_the_cli(saved_parts, tmp_path, run_script):
    flags = ["--preset", "nx-tiny", "--entity", "cell", "--k", "2", "--no-noisy-context"]
    flags += ["--tokenizer", str(saved_parts / "tokenizer"), "--prompt-encoder", str(saved_parts / "clip")]
    flags += ["--resolution", "32", "--train-samples", "64", "--eval-samples", "16", "--batch-size", "8"]
    flags += ["--steps", "4", "--sample-every", "0", "--mixed-precision", "no", "--output-dir", str(tmp_path / "nx")]
    result = run_script("train_generator", *flags, "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = json.loads((tmp_path / "nx" / "train_config.json").read_text())
    assert cfg["model_overrides"] == {"entity": "cell", "k": 2, "noisy_context": False}
    metrics = json.loads((tmp_path / "nx" / "metrics.json").read_text())
    assert metrics["heldout_loss"] > 0 and "heldout_token_accuracy" not in metrics
    pipe = TextToImagePipeline.from_pretrained(tmp_path / "nx" / "pipeline")
    assert pipe.generator.config.entity == "cell" and pipe.generator.config.latent_dim == 8
    assert torch.equal(pipe.generator.codebook, pipe.tokenizer.quantizer.codes(torch.arange(64)[None])[0])
    assert pipe(PROMPTS[0], flow_steps=2, seed=0).tokens.shape == (1, 4, 4)
    refused = run_script("train_generator", "--objectives", "next=a")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr  # a usage error, not a crash


def test_generate_cli_end_to_end(tmp_path):
    TextToImagePipeline(*tiny_parts()).save_pretrained(tmp_path / "pipe")
    cmd = [sys.executable, str(ROOT / "scripts" / "generate.py"), "--pipeline", str(tmp_path / "pipe")]
    cmd += ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num-images", "2", "--top-p", "0.9"]
    cmd += ["--out", str(tmp_path / "out"), "--seed", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}, check=True)
    printed = [Path(line) for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(printed) == 5  # 2 prompts x 2 images + grid
    assert all(p.is_file() for p in printed)
    assert Image.open(tmp_path / "out" / "grid.png").size == (2 * 32 + 2, 2 * 32 + 2)
    assert (tmp_path / "out" / "a_large_red_circle_at_the_top_left_1.png").is_file()


def test_generate_cli_runs_next_x_and_refuses_mismatches(tmp_path, run_script):
    def refusal(*argv: str) -> str:
        """stderr of a command line the script refuses (exits with a message, no traceback)."""
        result = run_script("generate", *argv)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        return result.stderr

    TextToImagePipeline(*tiny_parts("nx-tiny", latent_dim=8, entity="cell", k=2)).save_pretrained(tmp_path / "nx")
    TextToImagePipeline(*tiny_parts()).save_pretrained(tmp_path / "nt")
    base = ["--prompt", PROMPTS[0], "--num-images", "1", "--out", str(tmp_path / "out")]
    nx = ["--pipeline", str(tmp_path / "nx")]
    result = run_script(
        "generate", *base, *nx, "--generator", "next-x", "--entity", "cell", "--k", "2", "--flow-steps", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [Path(line) for line in result.stdout.splitlines() if line.endswith(".png")][:-1]  # the grid comes last
    assert len(paths) == 1 and paths[0].is_file() and (tmp_path / "out" / "grid.png").is_file()
    assert "not a next-token generator" in refusal(*base, *nx, "--generator", "next-token")
    assert "entity='cell'" in refusal(*base, *nx, "--generator", "next-x", "--entity", "scale")
    assert "need --generator next-x" in refusal(*base, "--pipeline", str(tmp_path / "nt"), "--entity", "cell")
    assert "no pipeline at" in refusal(*base, "--generator", "next-x", "--entity", "image")  # nothing shipped for it


@pytest.mark.parametrize("folder", ["pipeline", "pipeline_nx_cell_k2"])
def test_shipped_pipeline_follows_prompts(folder):
    pipe = TextToImagePipeline.from_pretrained(ROOT / "assets" / folder)
    scenes = SyntheticScenes(24, 64, split="heldout", seed=11)
    prompts = [scenes.describe(i)["caption"] for i in range(len(scenes))]
    out = pipe(prompts, seed=0)
    assert out.tokens.shape == (24, 16, 16)
    scores = grade(load_grader(ROOT / "assets" / "grader"), out.pixels * 2 - 1, prompts)
    for name, bar in MIN_SHIPPED.items():
        assert scores[name] >= bar, (name, scores[name])
