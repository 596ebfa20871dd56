"""Every tokenizer family through the training loop and CLI, family-aware metrics and pictures, and the linear probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenizers_vis import TrainConfig, create_tokenizer, evaluate_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.cli import parse_train_args
from tokenizers_vis.data import build_dataset
from tokenizers_vis.evaluation import cell_targets, linear_probe, probe_latents
from tokenizers_vis.registry import KINDS, preset_kind

ROOT = Path(__file__).resolve().parents[1]


def test_cli_tokenizer_kinds_pick_presets_and_run_defaults(tmp_path):
    cfg = parse_train_args(["--tokenizer", "video"])
    assert (cfg.preset, cfg.data, cfg.batch_size, cfg.image_batch_size) == ("video-f8t4", "videos", 8, 16)
    assert (cfg.frames, cfg.eval_frames) == (9, 17)
    cfg = parse_train_args(["--tokenizer", "video", "--batch-size", "2", "--preset", "video-tiny"])
    assert (cfg.preset, cfg.batch_size) == ("video-tiny", 2)  # explicit flags win over the kind's defaults
    assert parse_train_args(["--tokenizer", "dual"]).semantic_teacher == "clip"
    assert parse_train_args(["--tokenizer", "vq1d"]).preset == "vq1d-32-prior"
    assert parse_train_args(["--tokenizer", "vq2d"]).preset == "vq-f4"
    (tmp_path / "run.json").write_text('{"batch_size": 3}')
    assert parse_train_args(["--tokenizer", "video", "--config", str(tmp_path / "run.json")]).batch_size == 3
    with pytest.raises(SystemExit, match="does not match"):
        parse_train_args(["--tokenizer", "vq1d", "--preset", "vq-f8"])
    for kind, (cls, preset) in KINDS.items():
        assert preset_kind(preset) == kind and isinstance(create_tokenizer(preset.replace("-f8t4", "-tiny")), cls)


@pytest.mark.parametrize("preset", ["video-tiny", "vq1d-tiny", "dual-f8-tiny"])
def test_training_loop_trains_each_family(preset, clip_folder, tmp_path):
    kind = preset_kind(preset)
    video = kind == "video"
    cfg = TrainConfig(
        preset=preset,
        model_overrides={"image_size": 32} if kind == "vq1d" else {},
        data="videos" if video else "scenes",
        frames=5,
        eval_frames=5,
        resolution=32,
        train_samples=32,
        eval_samples=8,
        ood_samples=8,
        steps=40,
        batch_size=4 if video else 16,
        image_batch_size=4 if video else 0,
        lr=3e-3,
        warmup_steps=5,
        num_workers=0,
        mixed_precision="no",
        semantic_teacher=str(clip_folder) if kind == "dual" else "",
        output_dir=str(tmp_path / "run"),
    )
    heldout = build_dataset(cfg.data, "heldout", 32, 8, 0, palette="wide", **({"frames": 5} if video else {}))
    heldout = torch.stack([heldout[i]["video" if video else "image"] for i in range(8)])
    untrained = evaluate_tokenizer(create_tokenizer(preset, **cfg.model_overrides), heldout)["psnr"]
    metrics = train_tokenizer(cfg)
    assert metrics["tokenizer"] == type(create_tokenizer(preset)).__name__
    assert metrics["psnr"] > untrained + 3, (untrained, metrics["psnr"])
    model = load_tokenizer(tmp_path / "run" / "model")
    assert evaluate_tokenizer(model, heldout)["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert (tmp_path / "run" / "reconstructions.gif").is_file() == video
    assert (tmp_path / "run" / "reconstructions_ood.png").is_file() == video  # image runs: in reconstructions.png
    assert {"psnr_ood_scenes", "psnr_ood_photos"} <= set(metrics)
    if kind == "dual":
        assert len(metrics["codebook_usage_each"]) == 2 and model.config.semantic_dim == 32


def test_training_loop_refuses_mismatched_model_data_and_teacher(clip_folder, tmp_path):
    base = TrainConfig(steps=1, train_samples=8, num_workers=0, mixed_precision="no", output_dir=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="needs a video tokenizer"):
        train_tokenizer(TrainConfig(**{**base.__dict__, "data": "videos", "preset": "vq-f8-tiny"}))
    with pytest.raises(ValueError, match="vq2d, dual, video1d tokenizers, not OneDTokenizer"):
        train_tokenizer(TrainConfig(**{**base.__dict__, "preset": "vq1d-tiny", "semantic_teacher": str(clip_folder)}))
    with pytest.raises(ValueError, match="GAN"):
        train_tokenizer(TrainConfig(**{**base.__dict__, "preset": "vq1d-tiny", "gan_weight": 0.1}))


# ---- linear probe ------------------------------------------------------------------------------------------------


def _scene_labels(n: int, seed: int) -> torch.Tensor:
    data = build_dataset("scenes", "train", 32, n, seed)
    return torch.stack([data[i]["labels"] for i in range(n)])


def test_cell_targets_mark_each_object_in_its_cell():
    labels = torch.tensor([[[2, 5, 1, 4], [0, 0, 0, 8], [-1, -1, -1, -1]]])
    targets = cell_targets(labels)
    assert targets["shape"].tolist() == [[0, 0, 0, 0, 3, 0, 0, 0, 1]]
    assert targets["color"].tolist() == [[0, 0, 0, 0, 6, 0, 0, 0, 1]]
    assert targets["size"].tolist() == [[0, 0, 0, 0, 2, 0, 0, 0, 1]]


def test_linear_probe_reads_planted_attributes_and_not_noise():
    train, test = _scene_labels(300, 1), _scene_labels(150, 2)

    def planted(labels: torch.Tensor) -> torch.Tensor:
        """(N, 24, 6, 6) latents carrying one-hot attributes in each cell's 2x2 block, plus noise."""
        targets = cell_targets(labels)
        z = torch.randn(len(labels), 24, 6, 6) * 0.1
        for c in range(9):
            r, col = divmod(c, 3)
            onehot = torch.cat([torch.nn.functional.one_hot(targets[a][:, c], 9).float() for a in targets], 1)[:, :24]
            z[:, :, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2] += onehot[:, :, None, None]
        return z

    scores = linear_probe(planted(train), train, planted(test), test)
    assert scores["shape"] == 1.0 and scores["color"] > 0.99 and scores["size"] == 1.0
    noise = linear_probe(torch.randn(300, 8, 6, 6), train, torch.randn(150, 8, 6, 6), test)
    assert noise["shape"] < 0.5 and noise["mean"] < 0.6
    tokens = linear_probe(torch.randn(300, 4, 8), train, torch.randn(150, 4, 8), test)  # 1D path: per-cell models
    assert set(tokens) == {"shape", "color", "size", "mean"} and tokens["mean"] < 0.6
    with pytest.raises(ValueError, match="latents"):
        linear_probe(torch.randn(300, 8), train, torch.randn(150, 8), test)


def test_probe_latents_shapes_for_each_family():
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    assert probe_latents(create_tokenizer("vq-f8-tiny"), images).shape == (3, 8, 4, 4)
    assert probe_latents(create_tokenizer("dual-f8-tiny"), images).shape == (3, 16, 4, 4)  # both codebooks
    assert probe_latents(create_tokenizer("video-tiny"), images).shape == (3, 8, 4, 4)  # image = one frame
    assert probe_latents(create_tokenizer("vq1d-tiny", image_size=32), images).shape == (3, 8, 16)
