"""The training core shared by every trainer: base config, LR schedule, parameter groups, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from generators import GeneratorTrainConfig, create_generator, load_generator
from tokenizers_vis import TrainConfig
from tokenizers_vis.clip import CLIPEncoder, SmallCLIPConfig
from tokenizers_vis.clip_training import CLIPTrainConfig
from tokenizers_vis.evaluation import AttributeGrader
from tokenizers_vis.evaluation.grader_training import GraderTrainConfig, _precision
from tokenizers_vis.train_core import (
    AccelerateRunConfig,
    RunConfig,
    config_from_file,
    cpu_runs_bf16_fast,
    latest_checkpoint,
    lr_schedule,
    param_checksum,
    param_groups,
    resolve_mixed_precision,
    save_model_atomically,
)

ACCELERATE_CONFIGS = [TrainConfig, GeneratorTrainConfig]
CONFIGS = [*ACCELERATE_CONFIGS, CLIPTrainConfig, GraderTrainConfig]


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    factor = lr_schedule(warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(4) == pytest.approx(0.5) and factor(9) == 1.0
    assert factor(10) == 1.0  # the cosine starts at its peak
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)  # held at the floor
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_without_floor_is_plain_cosine():
    factor = lr_schedule(warmup_steps=5, steps=45)
    for step in range(5, 60):
        progress = min((step - 5) / 40, 1.0)
        assert factor(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)), abs=1e-12)
    assert lr_schedule(0, 10)(0) == 1.0  # no warm-up


def test_clip_schedule_is_the_shared_one_without_floor():
    def former(step: int, total: int, warmup: int, base: float) -> float:  # the CLIP trainer's own, before
        if step < warmup:
            return base * (step + 1) / warmup
        return base * 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

    cfg = CLIPTrainConfig()
    warmup = max(1, int(cfg.warmup * cfg.steps))
    factor = lr_schedule(warmup, cfg.steps, cfg.min_lr_ratio)
    for step in range(cfg.steps + 5):
        assert cfg.lr * factor(step) == pytest.approx(former(step, cfg.steps, warmup, cfg.lr), rel=1e-15, abs=0)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_embed = nn.Embedding(10, 4)
        self.target_pos = nn.Parameter(torch.zeros(3, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(()))
        self.extra = nn.Parameter(torch.zeros(4, 4))

    def no_weight_decay(self) -> set[str]:
        return {"extra"}


def _names(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_param_groups_skip_biases_norms_embeddings_and_listed_parameters():
    model = Toy()
    decay, no_decay = param_groups(model, 0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert _names(model, decay) == ["proj.weight"]
    # named_parameters order (own parameters first), as the optimizer state of saved checkpoints expects
    expected = ["target_pos", "scale", "extra", "token_embed.weight", "proj.bias", "norm.weight", "norm.bias"]
    assert _names(model, no_decay) == expected


def test_generator_param_groups_match_the_former_rule():
    model = create_generator("nt-tiny", codebook_size=16, grid_size=(2, 2))
    decay, no_decay = param_groups(model, 0.05)
    rule = [n for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    assert _names(model, decay) == rule
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("pos_embed", ["sin_cos_2d", "learnable"])
def test_clip_param_groups_match_the_former_rule(pos_embed):
    model = CLIPEncoder.create(SmallCLIPConfig(image_size=32, vision_pos_embed=pos_embed)).model
    decay, _ = param_groups(model, 0.1)
    skip = model.no_weight_decay()
    rule = [
        n
        for n, p in model.named_parameters()
        if not (p.ndim < 2 or n in skip or "embedding" in n or n == "logit_scale")
    ]
    assert _names(model, decay) == rule


def test_grader_param_groups_decay_only_weight_tensors():
    model = AttributeGrader(resolution=64)
    decay, no_decay = param_groups(model, 0.05)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_is_a_run_config(cls):
    assert issubclass(cls, RunConfig)
    assert cls().steps > 0
    assert {f.name for f in dataclasses.fields(RunConfig)} <= {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", ACCELERATE_CONFIGS)
def test_accelerate_trainers_share_the_run_fields(cls):
    assert issubclass(cls, AccelerateRunConfig) and cls().output_dir
    with pytest.raises(TypeError):
        AccelerateRunConfig(steps=1)  # output_dir has no shared default


def test_base_defaults_kept_by_the_clip_and_grader_configs():
    clip, grader = CLIPTrainConfig(), GraderTrainConfig()
    assert (clip.lr, clip.seed, clip.grad_clip, clip.min_lr_ratio) == (1e-3, 0, 1.0, 0.0)
    assert (grader.seed, grader.grad_clip, grader.min_lr_ratio) == (0, 0.0, 0.0)  # the grader never clipped


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trips_through_a_file(cls, suffix, tmp_path):
    cfg = dataclasses.replace(cls(), steps=7, lr=2e-4, seed=3)
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(dataclasses.asdict(cfg)))  # JSON is valid YAML
    assert cls.from_file(path) == cfg
    assert cls.from_file(path, steps=9) == dataclasses.replace(cfg, steps=9)
    assert config_from_file(cls, path) == cfg
    path.write_text(json.dumps({"steps": 1, "no_such_field": 0}))
    with pytest.raises(ValueError, match="no_such_field"):
        cls.from_file(path)


def test_latest_checkpoint_orders_steps_numerically(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (9, 10, 2):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step_10"


def test_save_model_atomically_replaces_the_folder(tmp_path):
    torch.manual_seed(0)
    model = create_generator("nt-tiny", codebook_size=16, grid_size=(2, 2))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.txt").write_text("old")
    save_model_atomically(model, tmp_path / "model")
    assert not (tmp_path / "model" / "stale.txt").exists()
    assert not list(tmp_path.glob(".tmp_*"))
    assert param_checksum(load_generator(tmp_path / "model")) == param_checksum(model)


def test_bf16_is_chosen_where_the_cpu_has_bf16_instructions(monkeypatch):
    # torch's CPU-capability checks are private: this fails loudly if a torch release renames or drops them
    assert isinstance(torch.cpu._is_amx_tile_supported(), bool)
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and platform.machine() == "x86_64":
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        assert cpu_runs_bf16_fast() == bool(flags & {"amx_tile", "avx512_bf16"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fast = cpu_runs_bf16_fast()
    assert resolve_mixed_precision("auto") == ("bf16" if fast else "no")
    assert _precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")
    assert resolve_mixed_precision("fp16") == "fp16" and _precision("fp32", torch.device("cpu")) == "fp32"
