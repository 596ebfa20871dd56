"""Semantic regularization: frozen teachers (project CLIP, attribute grader, timm by name or local checkpoint), the
alignment loss, the tokenizer's projection, and the training loop with a teacher."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from tokenizers_vis import TrainConfig, create_tokenizer, load_tokenizer, train_tokenizer
from tokenizers_vis.evaluation import AttributeGrader
from tokenizers_vis.losses import semantic_alignment_loss
from tokenizers_vis.teacher import load_teacher


def test_clip_teacher_is_frozen_and_resizes_inputs(clip_folder):
    teacher = load_teacher(clip_folder)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.grid == 8 and teacher.dim == 32  # 64x64 CLIP input, patch 8
    x = torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1
    feats = teacher(x)
    assert feats.shape == (2, 64, 32) and not feats.requires_grad
    assert teacher(torch.zeros(2, 3, 128, 128)).shape == feats.shape


def test_timm_teacher_from_a_local_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    save_file(model.state_dict(), tmp_path / "vit.safetensors")
    teacher = load_teacher(f"timm:test_vit@{tmp_path / 'vit.safetensors'}")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = teacher(images)
    assert feats.shape == (2, 100, 64)  # 160 px input, patch 16: the class token is dropped
    # the teacher resized and normalised exactly like timm's own eval transform would, and kept the weights
    x = torch.nn.functional.interpolate(images, size=(160, 160), mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = model.eval().forward_features(x)[:, 1:]  # test_vit normalises with mean = std = 0.5
    torch.testing.assert_close(feats, expected)


def test_grader_teacher_gives_its_dense_feature_map(tmp_path):
    torch.manual_seed(0)
    grader = AttributeGrader(channels=(8, 8, 16, 16))
    grader.save_pretrained(tmp_path / "grader")
    teacher = load_teacher(tmp_path / "grader")
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert (teacher.grid, teacher.dim) == (8, 16)  # stride-8 map of the last stage at 64x64
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = grader.eval().features(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(teacher(images), expected)


def test_load_teacher_refuses_bad_specs_and_fails_clearly_offline(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="accepted"):
        load_teacher("resnet")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_teacher(f"timm:test_vit@{tmp_path / 'missing.safetensors'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match="local checkpoint"):
        load_teacher("timm:vit_small_patch14_dinov2.lvd142m")


def test_alignment_loss_values():
    teacher = torch.randn(2, 16, 8)
    student = teacher.transpose(1, 2).reshape(2, 8, 4, 4)
    assert semantic_alignment_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert semantic_alignment_loss(-student, teacher).item() == pytest.approx(2.0, abs=1e-6)
    # a coarser student map is resized to the teacher's grid
    assert semantic_alignment_loss(student[..., :2, :2], teacher).ndim == 0
    with pytest.raises(ValueError, match="do not match"):
        semantic_alignment_loss(student[:, :4], teacher)


@pytest.mark.parametrize("layer", ["decoder", "encoder", "quantized"])
def test_tokenizer_learns_to_align_with_a_fixed_target(layer):
    torch.manual_seed(0)
    model = create_tokenizer("vq-f8-tiny", semantic_dim=12, semantic_layer=layer)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    target = torch.randn(4, 16, 12)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(40):
        _, losses = model(images, semantic_target=target)
        first = first if first is not None else losses["semantic"].item()
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["semantic"].item() < 0.5 * first
    plain = create_tokenizer("vq-f8-tiny")
    assert "semantic" not in plain(images)[1]
    with pytest.raises(ValueError, match="semantic_dim > 0"):
        plain(images, semantic_target=target)
    with pytest.raises(ValueError, match="semantic_layer"):
        create_tokenizer("vq-f8-tiny", semantic_dim=4, semantic_layer="middle")


def test_training_with_a_teacher(clip_folder, tmp_path):
    cfg = TrainConfig(
        preset="vq-f8-tiny",
        resolution=32,
        train_samples=64,
        eval_samples=16,
        steps=4,
        batch_size=8,
        num_workers=0,
        mixed_precision="no",
        semantic_teacher=str(clip_folder),
        semantic_weight=0.25,
        output_dir=str(tmp_path / "run"),
    )
    metrics = train_tokenizer(cfg)
    assert metrics["semantic_teacher"] == f"clip:{clip_folder}"
    model = load_tokenizer(tmp_path / "run" / "model")
    assert model.config.semantic_dim == 32 and model.config.semantic_weight == 0.25
