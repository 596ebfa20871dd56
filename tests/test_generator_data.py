"""Generators on the user's own data: captioned folders, class folders, shards; token shards on disk (lazy reads,
flip augmentation, resume after SIGKILL); class-conditional and unconditional training; the command lines."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from user_images import (
    CLASSES,
    classify_by_colour,
    make_captioned_folder,
    make_class_folder,
    write_shard,
)

from generators import GeneratorTrainConfig, TextToImagePipeline, train_generator
from generators.data import detect_condition, generator_data
from generators.token_shards import TokenShards, pretokenize
from tokenizers_vis import create_tokenizer
from tokenizers_vis.data import ClassImageFolder, ImageFolderDataset, WebDatasetShards, read_metadata_captions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A random tiny tokenizer whose codebook is already initialised (k-means runs on the first batch it sees)."""
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny").eval()
    tokenizer.encode(torch.rand(16, 3, 16, 16) * 2 - 1)
    return tokenizer


def _png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ reading the data


@pytest.mark.parametrize("metadata", ["jsonl", "csv", "txt"])
def test_captions_come_from_metadata_or_sidecars(tmp_path, metadata):
    make_captioned_folder(tmp_path, 6, 16, metadata=metadata)
    ds = ImageFolderDataset(tmp_path, 16)
    captions = [ds[i]["caption"] for i in range(len(ds))]
    assert captions[0].endswith("stripes of " + captions[0].split(" of ")[1]) and captions[1].startswith("a gradient")
    assert all(captions)
    assert detect_condition(str(tmp_path)) == "prompt"


def test_bad_metadata_is_refused_with_its_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2"):
        read_metadata_captions(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "label": 3}\n')
    with pytest.raises(ValueError, match="row 1 needs 'file_name' and one of"):
        read_metadata_captions(tmp_path)


def test_class_folders_give_labels_and_names(tmp_path):
    make_class_folder(tmp_path, 3, 16)
    ds = ClassImageFolder(tmp_path, 16)
    assert ds.class_names == sorted(CLASSES)
    items = [ds[i] for i in range(len(ds))]
    assert [it["label"] for it in items] == [i for i in range(4) for _ in range(3)]
    assert all(ds.class_names[it["label"]] in it["path"] for it in items)
    assert detect_condition(str(tmp_path)) == "class"
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="outside class sub-folders"):
        ClassImageFolder(tmp_path, 16)
    assert detect_condition(str(tmp_path)) == "none"  # loose images and no captions: unconditional


def test_shards_carry_class_labels_and_json_captions(tmp_path):
    write_shard(
        tmp_path / "a.tar",
        [("k0.png", _png((200, 0, 0))), ("k0.cls", b"2"), ("k1.png", _png((0, 200, 0))), ("k1.json", b'{"label": 0}')],
    )
    write_shard(tmp_path / "b.tar", [("k2.png", _png((0, 0, 200))), ("k2.json", b'{"caption": "blue"}')])
    items = list(WebDatasetShards(str(tmp_path), 16))
    assert [(it["key"], it.get("label"), it["caption"]) for it in items] == [
        ("k0", 2, ""),
        ("k1", 0, ""),
        ("k2", None, "blue"),
    ]
    assert detect_condition(str(tmp_path)) == "class"


def test_built_in_data_refuses_class_condition():
    with pytest.raises(ValueError, match="captions, not classes"):
        generator_data("scenes", "train", "class", 32, count=4)


# ---------------------------------------------------------------------------------------------- token shards


def test_token_store_reads_back_what_the_tokenizer_wrote(tmp_path, tiny_tokenizer):
    make_class_folder(tmp_path / "data", 5, 16)
    (tmp_path / "data" / "red_stripes" / "broken.png").write_bytes(b"not an image")
    data = generator_data(str(tmp_path / "data"), "all", "class", 16)
    with pytest.warns(UserWarning, match="broken.png"):
        store = pretokenize(
            data.dataset, tiny_tokenizer, tmp_path / "store", flip=True, class_names=data.class_names, chunk_size=6
        )
    assert len(store) == 20 and store.skipped == 1 and store.num_classes == 4
    assert len(store.chunks) == 4  # 21 inputs in chunks of 6
    images = torch.stack([data.dataset[i]["image"] for i in range(len(data.dataset)) if data.dataset[i] is not None])
    idx = torch.tensor([0, 7, 19, 3])
    flip = torch.tensor([False, True, False, True])
    expected = tiny_tokenizer.encode(images[idx])
    expected[flip] = tiny_tokenizer.encode(images[idx][flip].flip(-1))
    assert torch.equal(store.tokens(idx, flip), expected)
    assert store.labels(idx).tolist() == [0, 1, 3, 0]
    assert store.captions(idx) == ["blue_rings", "green_checks", "yellow_waves", "blue_rings"]
    assert TokenShards(tmp_path / "store").index == store.index  # a finished store reopens as is
    with pytest.raises(IndexError):
        store.tokens(torch.tensor([20]))


def test_unfinished_store_encodes_only_missing_chunks(tmp_path, tiny_tokenizer, monkeypatch):
    make_captioned_folder(tmp_path / "data", 12, 16)
    data = generator_data(str(tmp_path / "data"), "all", "prompt", 16)
    full = pretokenize(data.dataset, tiny_tokenizer, tmp_path / "store", chunk_size=5)
    chunk1 = full.chunks[1]
    stamps = {c.name: (c / "tokens.npy").stat().st_mtime_ns for c in full.chunks}
    reference = full.tokens(torch.arange(12))
    # as if killed after chunks 0 and 2: no index, chunk 1 missing
    (tmp_path / "store" / "index.json").unlink()
    for f in chunk1.iterdir():
        f.unlink()
    chunk1.rmdir()
    encoded = []
    original = type(tiny_tokenizer).encode
    monkeypatch.setattr(type(tiny_tokenizer), "encode", lambda self, x: encoded.append(len(x)) or original(self, x))
    again = pretokenize(data.dataset, tiny_tokenizer, tmp_path / "store", chunk_size=5)
    assert sum(encoded) == 5  # chunk 1 only
    assert torch.equal(again.tokens(torch.arange(12)), reference)
    assert again.captions(torch.arange(12)) == full.captions(torch.arange(12))
    assert all((c / "tokens.npy").stat().st_mtime_ns == stamps[c.name] for c in again.chunks if c.name != chunk1.name)


def test_shard_input_gives_one_chunk_per_shard_and_resumes(tmp_path, tiny_tokenizer):
    for s in range(3):
        members = [(f"s{s}k{i}.png", _png((40 * i, 80 * s, 100))) for i in range(3)]
        members += [(f"s{s}k{i}.txt", f"shard {s} item {i}".encode()) for i in range(3)]
        write_shard(tmp_path / f"shard-{s}.tar", sorted(members))
    data = generator_data(str(tmp_path / "shard-*.tar"), "all", "prompt", 16)
    store = pretokenize(data.dataset, tiny_tokenizer, tmp_path / "store", num_workers=2, batch_size=2)
    assert [c.name for c in store.chunks] == ["chunk-s000000", "chunk-s000001", "chunk-s000002"]
    assert store.captions(torch.arange(9)) == [f"shard {s} item {i}" for s in range(3) for i in range(3)]
    (tmp_path / "store" / "index.json").unlink()
    stamp = (store.chunks[0] / "tokens.npy").stat().st_mtime_ns
    for f in store.chunks[2].iterdir():
        f.unlink()
    store.chunks[2].rmdir()
    again = pretokenize(data.dataset, tiny_tokenizer, tmp_path / "store")
    assert (again.chunks[0] / "tokens.npy").stat().st_mtime_ns == stamp
    assert torch.equal(again.tokens(torch.arange(9)), store.tokens(torch.arange(9)))


KILL_SCRIPT = """
import sys
from generators.data import generator_data
from generators.token_shards import pretokenize
from tokenizers_vis import load_tokenizer
data = generator_data(sys.argv[1], "all", "class", 16)
tokenizer = load_tokenizer(sys.argv[3]).eval()
pretokenize(data.dataset, tokenizer, sys.argv[2], class_names=data.class_names, chunk_size=8, batch_size=4)
"""


def test_sigkilled_tokenization_resumes_without_re_encoding(tmp_path, tiny_tokenizer, monkeypatch):
    """Kill the writer with SIGKILL once its first chunk is on disk; the rerun keeps that chunk (same file), encodes
    only the rest, and the result equals an uninterrupted run."""
    make_class_folder(tmp_path / "data", 40, 16)
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    script = tmp_path / "tok.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    store = tmp_path / "store"
    args = [sys.executable, str(script), str(tmp_path / "data"), str(store), str(tmp_path / "tokenizer")]
    proc = subprocess.Popen(args, env=env)
    deadline = time.time() + 120
    while not list(store.glob("chunk-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(store.glob("chunk-*"))
    assert written and not (store / "index.json").exists(), "kill the run between its first chunk and its end"
    stamps = {c.name: (c / "tokens.npy").stat().st_mtime_ns for c in written}
    data = generator_data(str(tmp_path / "data"), "all", "class", 16)
    encoded = []
    original = type(tiny_tokenizer).encode
    monkeypatch.setattr(type(tiny_tokenizer), "encode", lambda self, x: encoded.append(len(x)) or original(self, x))
    options = dict(class_names=data.class_names, chunk_size=8, batch_size=4)
    resumed = pretokenize(data.dataset, tiny_tokenizer, store, **options)
    assert sum(encoded) == 160 - 8 * len(written)
    assert all((store / name / "tokens.npy").stat().st_mtime_ns == t for name, t in stamps.items())
    clean = pretokenize(data.dataset, tiny_tokenizer, tmp_path / "clean", **options)
    everything = torch.arange(len(clean))
    assert len(resumed) == len(clean) == 160
    assert torch.equal(resumed.tokens(everything), clean.tokens(everything))
    assert torch.equal(resumed.labels(everything), clean.labels(everything))


# -------------------------------------------------------------------------------------------- training and sampling


def test_class_conditional_generator_learns_four_classes(tmp_path):
    """Four pattern classes in class folders and 300 steps of the tiny preset (about a minute): >= 90 % of the
    generated images, and >= 80 % of every class's, are recognised as their class by their colours, at the
    pipeline's own sampling defaults. (At 32 px the rings are too fine for 8x8 tokens and come out as blue blobs;
    the few-minute 64-px run in the closing note of issue 20 reaches >= 96 % for every class.)"""
    make_class_folder(tmp_path / "data", 40, 32)
    cfg = GeneratorTrainConfig(
        data=str(tmp_path / "data"),
        resolution=32,
        preset="nt-tiny",
        steps=300,
        batch_size=64,
        lr=3e-3,
        warmup_steps=10,
        save_every=10**6,
        sample_every=0,
        eval_samples=16,
        mixed_precision="no",
        cpu_threads=1,
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
    )
    metrics = train_generator(cfg)
    assert metrics["condition"] == "class" and metrics["grid"] == [8, 8]
    index = json.loads((tmp_path / "run" / "pipeline" / "model_index.json").read_text())
    assert index["condition"] == "class" and index["class_names"] == sorted(CLASSES)
    pipe = TextToImagePipeline.from_pretrained(tmp_path / "run" / "pipeline")
    out = pipe(class_labels=pipe.class_names, num_images_per_prompt=40, seed=0)
    predicted = classify_by_colour(out.pixels, pipe.class_names)
    per_class = (predicted == torch.arange(4).repeat_interleave(40)).view(4, 40).float().mean(1)
    assert per_class.mean() >= 0.9 and per_class.min() >= 0.8, per_class  # chance: 0.25
    with pytest.raises(ValueError, match="unknown class name"):
        pipe(class_labels=["cat"])


def test_unconditional_generator_trains_and_samples(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    cfg = GeneratorTrainConfig(
        data=str(tmp_path / "data"),
        resolution=16,
        preset="nt-tiny",
        steps=4,
        batch_size=4,
        warmup_steps=1,
        sample_every=0,
        mixed_precision="no",
        cpu_threads=1,
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
    )
    metrics = train_generator(cfg)
    assert metrics["condition"] == "none"
    pipe = TextToImagePipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.prompt_encoder is None
    assert len(pipe(num_images_per_prompt=3, seed=0).images) == 3


def test_captioned_folder_end_to_end_on_the_command_line(tmp_path, run_script, clip_folder):
    """A folder of stripe and gradient images captioned in its own grammar: train_generator.py, then generate.py
    with a prompt in that grammar, offline."""
    make_captioned_folder(tmp_path / "data", 40, 32)
    train = run_script(
        "train_generator",
        *("--data", str(tmp_path / "data"), "--resolution", "32", "--preset", "nt-tiny", "--steps", "6"),
        *("--batch-size", "4", "--warmup-steps", "1", "--sample-every", "0", "--mixed-precision", "no"),
        *("--text-encoder", str(clip_folder), "--output-dir", str(tmp_path / "run")),
        *("--cache-dir", str(tmp_path / "cache")),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["condition"] == "prompt"
    gen = run_script(
        "generate",
        *("--pipeline", str(tmp_path / "run" / "pipeline"), "--prompt", "vertical stripes of orange and teal"),
        *("--num-images", "2", "--out", str(tmp_path / "out")),
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert Image.open(tmp_path / "out" / "vertical_stripes_of_orange_and_teal_1.png").size == (32, 32)
    refused = run_script("generate", "--pipeline", str(tmp_path / "run" / "pipeline"), "--class-label", "3")
    assert refused.returncode != 0 and "text-conditioned" in refused.stderr
