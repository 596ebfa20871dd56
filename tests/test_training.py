import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokenizers_vis import TrainConfig, create_tokenizer, evaluate_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.cli import parse_train_args
from tokenizers_vis.data import build_dataset
from tokenizers_vis.evaluation import ood_images, reconstruction_psnr
from tokenizers_vis.training import materialize

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    preset="vq-f8-tiny",
    train_samples=256,
    eval_samples=64,
    batch_size=16,
    warmup_steps=5,
    mixed_precision="no",
    num_workers=0,
    cpu_threads=1,
    log_every=5,
    ood_samples=32,
)
CLI_TINY = [
    "--preset",
    "vq-f8-tiny",
    "--train-samples",
    "256",
    "--eval-samples",
    "64",
    "--batch-size",
    "16",
    "--warmup-steps",
    "5",
    "--mixed-precision",
    "no",
    "--num-workers",
    "0",
    "--cpu-threads",
    "1",
    "--ood-samples",
    "32",
]


def test_short_training_lowers_loss_and_writes_outputs(tmp_path):
    torch.manual_seed(0)
    untrained = create_tokenizer("vq-f8-tiny")
    heldout = materialize(build_dataset("scenes", "heldout", 64, 64, 0, palette="wide"), 0, "heldout")
    before = evaluate_tokenizer(untrained, heldout)["psnr"]
    metrics = train_tokenizer(TrainConfig(**TINY, steps=80, lr=3e-3, output_dir=str(tmp_path)))
    assert metrics["psnr"] > before + 4, (before, metrics["psnr"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "steps", "wall_seconds"):
        assert key in written
    assert (written["palette"], written["photo_fraction"]) == ("wide", 0.2)
    ood = ood_images(TINY["ood_samples"], 64, 0)
    for name, images in ood.items():  # the out-of-distribution sets, next to the in-distribution PSNR
        assert written[f"psnr_{name}"] == pytest.approx(
            reconstruction_psnr(load_tokenizer(tmp_path / "model"), images), abs=1e-4
        )
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["steps"] == 80
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    assert list((tmp_path / "tokenizer").glob("events.out.tfevents.*")), "TensorBoard log missing"
    model = load_tokenizer(tmp_path / "model")
    assert evaluate_tokenizer(model, heldout)["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)


def _run(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_killed_run_resumes_exactly(tmp_path):
    """A run killed with SIGKILL and restarted with --resume ends with the weights of an uninterrupted run
    (batches are drawn per step from a seeded generator, so nothing is replayed or skipped)."""
    steps = 60
    cmd = [
        sys.executable,
        "scripts/train_tokenizer.py",
        *CLI_TINY,
        "--steps",
        str(steps),
        "--save-every",
        "5",
    ]
    straight = subprocess.run([*cmd, "--output-dir", str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "b"
    proc = _run([*cmd, "--output-dir", str(out)], start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/step_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(int(p.name.split("_")[1]) for p in out.glob("checkpoints/step_*"))
    assert 5 <= saved < steps
    result = subprocess.run([*cmd, "--output-dir", str(out), "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints'}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == steps and metrics["trained_steps_this_run"] == steps - saved
    assert not list(out.glob("checkpoints/.tmp*")), "a temporary checkpoint was left behind"
    expected = json.loads((tmp_path / "a" / "metrics.json").read_text())["rank_param_checksums"]
    assert metrics["rank_param_checksums"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_weights(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "scripts/train_tokenizer.py",
        *CLI_TINY,
        "--steps",
        "12",
        "--output-dir",
        str(tmp_path),
    ]
    result = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    a, b = metrics["rank_param_checksums"]
    assert a == b


def test_gan_path_trains_with_adaptive_weight(tmp_path):
    metrics = train_tokenizer(
        TrainConfig(**{**TINY, "eval_samples": 16}, steps=6, gan_weight=0.5, gan_start=2, output_dir=str(tmp_path))
    )
    assert metrics["steps"] == 6 and metrics["psnr"] == metrics["psnr"]  # finite, not NaN


def test_lpips_is_used_or_refused_clearly():
    from tokenizers_vis.losses import build_lpips

    try:
        lpips = build_lpips()
    except RuntimeError as err:  # offline: the pretrained backbone cannot be fetched
        assert "LPIPS" in str(err) and "--lpips-weight" in str(err)
    else:
        x = torch.rand(1, 3, 64, 64) * 2 - 1
        assert float(lpips(x, x)) < 1e-6


def test_cli_config_file_and_flags(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"steps": 7, "data": "photos", "lr": 0.01}))
    cfg = parse_train_args(["--config", str(tmp_path / "run.json"), "--steps", "9", "--quantizer", "fsq"])
    assert (cfg.steps, cfg.data, cfg.lr, cfg.model_overrides) == (9, "photos", 0.01, {"quantizer_type": "fsq"})
    defaults = parse_train_args([])
    assert (defaults.data, defaults.palette, defaults.photo_fraction, defaults.ood_samples) == (
        "scenes",
        "wide",
        0.2,
        256,
    )
    cfg = parse_train_args(["--palette", "classic", "--photo-fraction", "0", "--ood-samples", "0"])
    assert (cfg.palette, cfg.photo_fraction, cfg.ood_samples) == ("classic", 0.0, 0)
    (tmp_path / "bad.json").write_text(json.dumps({"stepz": 7}))
    with pytest.raises(ValueError, match="stepz"):
        parse_train_args(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):
        parse_train_args(["--preset", "nope"])


def test_training_on_a_folder_skips_and_counts_bad_files(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "nested" / f"{i}.png")
    for i in range(4):
        (folder / f"empty_{i}.png").write_bytes(b"")
        (folder / f"text_{i}.jpg").write_text("not an image")
    train_files = {Path(f).name for f in build_dataset(str(folder), "train", 32).files}
    expected_bad = sum(
        name in train_files for name in [f"empty_{i}.png" for i in range(4)] + [f"text_{i}.jpg" for i in range(4)]
    )
    cfg = dict(TINY, eval_samples=8)
    metrics = train_tokenizer(
        TrainConfig(**cfg, data=str(folder), resolution=32, steps=3, output_dir=str(tmp_path / "o"))
    )
    assert expected_bad > 0 and metrics["skipped_files"] == expected_bad
