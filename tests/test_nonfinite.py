"""Long runs fail safe: a NaN step stops the tokenizer and generator runs (or is skipped, within a bound), and no
checkpoint or model folder with non-finite weights is ever written; --resume continues from the last good one."""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from generators import GeneratorTrainConfig, PromptEncoder, create_generator, train_generator
from generators.registry import preset_class as generator_class
from tokenizers_vis import TrainConfig, create_tokenizer, train_tokenizer
from tokenizers_vis.cli import parse_train_args
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.registry import preset_class as tokenizer_class
from tokenizers_vis.train_core import (
    NonFiniteGuard,
    NonFiniteLossError,
    NonFiniteWeightsError,
    first_nonfinite,
    save_checkpoint,
    save_model_atomically,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 8, 2
TINY = dict(
    resolution=32, train_samples=32, eval_samples=8, batch_size=4, warmup_steps=2, mixed_precision="no", cpu_threads=1
)


@dataclass
class Trainer:
    """One trainer under test: how to build its config, run it, and make its training forward return NaN."""

    name: str
    model_folder: str

    def config(self, out: Path, parts: Path, **kw) -> TrainConfig | GeneratorTrainConfig:
        common = dict(**TINY, steps=STEPS, save_every=SAVE_EVERY, output_dir=str(out), **kw)
        if self.name == "tokenizer":
            return TrainConfig(preset="vq-f8-tiny", num_workers=0, **common)
        saved = dict(tokenizer=str(parts / "tokenizer"), prompt_encoder=str(parts / "clip"))
        return GeneratorTrainConfig(preset="nt-tiny", sample_every=0, cache_dir=str(parts / "cache"), **saved, **common)

    def train(self, cfg) -> dict:
        return train_tokenizer(cfg) if self.name == "tokenizer" else train_generator(cfg)

    def poison(self, monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
        """The training forward of the ``i``-th step of a run (counted from 0 in this process) returns a NaN loss
        for ``i`` in ``steps``, so its gradients are NaN too, as after a real blow-up."""
        cls = tokenizer_class("vq-f8-tiny") if self.name == "tokenizer" else generator_class("nt-tiny")
        forward, calls = cls.forward, itertools.count()

        def poisoned(module, *args, **kwargs):
            out = forward(module, *args, **kwargs)
            training_step = module.training and (self.name == "tokenizer" or kwargs.get("return_loss"))
            if not training_step or next(calls) not in steps:
                return out
            if self.name == "tokenizer":
                recon, losses = out
                return recon, {**losses, "loss": losses["loss"] * float("nan")}
            return out * float("nan")

        monkeypatch.setattr(cls, "forward", poisoned)


TRAINERS = [Trainer("tokenizer", "model"), Trainer("generator", "generator")]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny tokenizer and prompt encoder saved as folders, and a token cache shared by the generator runs."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    create_tokenizer("vq-f8-tiny").save_pretrained(root / "tokenizer")
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    PromptEncoder(clip).save_pretrained(root / "clip")
    return root


def _checkpoints(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p / "model.safetensors") for p in sorted((out / "checkpoints").glob("*step_*"))}


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.name)
def test_nan_step_stops_the_run_keeps_the_good_checkpoints_and_resume_continues(trainer, parts, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer.poison(monkeypatch, {5})
    with pytest.raises(NonFiniteLossError) as stop:
        trainer.train(trainer.config(out, parts))
    message = str(stop.value)
    assert "at step 5 (loss nan, grad norm nan)" in message
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step_4'}" in message and "--resume" in message
    assert "--max-nonfinite-skips" in message
    # without the guard step_6 and step_8 would hold NaN weights and rotate both good checkpoints away
    saved = _checkpoints(out)
    assert list(saved) == ["step_2", "step_4"] and all(_all_finite(s) for s in saved.values())
    assert not (out / trainer.model_folder).exists() and not (out / "metrics.json").exists()

    monkeypatch.undo()  # the cause is fixed
    metrics = trainer.train(trainer.config(out, parts, resume=True))
    assert metrics["trained_steps_this_run"] == STEPS - 4 and metrics["nonfinite_skips"] == 0
    assert list(_checkpoints(out)) == ["step_6", "step_8"]
    assert _all_finite(load_file(next((out / trainer.model_folder).glob("*.safetensors"))))


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.name)
def test_skips_within_the_bound_finish_the_run(trainer, parts, tmp_path, monkeypatch):
    trainer.poison(monkeypatch, {3})
    metrics = trainer.train(trainer.config(tmp_path / "run", parts, max_nonfinite_skips=1))
    assert metrics["nonfinite_skips"] == 1 and metrics["trained_steps_this_run"] == STEPS
    assert _all_finite(load_file(next((tmp_path / "run" / trainer.model_folder).glob("*.safetensors"))))


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.name)
def test_a_skip_over_the_bound_stops_the_run(trainer, parts, tmp_path, monkeypatch):
    trainer.poison(monkeypatch, {1, 5})
    with pytest.raises(NonFiniteLossError, match="at step 5 .*1 such steps were skipped already"):
        trainer.train(trainer.config(tmp_path / "run", parts, max_nonfinite_skips=1))
    saved = _checkpoints(tmp_path / "run")
    assert list(saved) == ["step_2", "step_4"] and all(_all_finite(s) for s in saved.values())


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, guard: NonFiniteGuard, step: int, scale: float) -> bool:
    opt.zero_grad(set_to_none=True)
    guard.accelerator.backward(model(torch.ones(2, 4)).sum() * scale)
    grad_norm = guard.accelerator.clip_grad_norm_(model.parameters(), 1.0)
    applied = guard.check(step, opt, torch.tensor(1.0), grad_norm)
    if applied:
        opt.step()
    return applied


def test_guard_skips_an_infinite_gradient_without_touching_the_weights(tmp_path):
    """A finite loss with an infinite gradient (an overflow in backward) is caught through the gradient norm."""
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    model = torch.nn.Linear(4, 4)
    model, opt = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    guard = NonFiniteGuard(accelerator, tmp_path, max_skips=1)
    assert _step(model, opt, guard, 0, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not _step(model, opt, guard, 1, float("inf"))
    assert guard.skips == 1 and all(p.grad is None for p in model.parameters())
    opt.step()  # what a loop that ignored the answer would do: with the gradients dropped, nothing moves
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(NonFiniteLossError, match=r"at step 2 \(loss 1, grad norm inf\), .*no checkpoint was written"):
        _step(model, opt, guard, 2, float("inf"))


def test_guard_under_fp16_loss_scaling(tmp_path):
    """An overflow is the GradScaler's business (it skips the step and lowers the scale, uncounted); a NaN loss is
    skipped by the guard, which resets the scaler so the next step unscales again. accelerate makes no scaler on
    CPU, so one is set by hand and unscaled where accelerate's clip_grad_norm_ does under fp16 on a GPU."""
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model = torch.nn.Linear(4, 4)
    model, opt = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    guard = NonFiniteGuard(accelerator, tmp_path, max_skips=1)

    def step(index: int, loss_scale: float, grad_scale: float) -> bool:
        opt.zero_grad(set_to_none=True)
        out = model(torch.ones(2, 4)).sum()
        accelerator.backward(out * grad_scale)
        accelerator.scaler.unscale_(opt.optimizer)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
        applied = guard.check(index, opt, out.detach() * loss_scale, grad_norm)
        if applied:
            opt.step()
        return applied

    assert step(0, 1.0, 1.0) and accelerator.scaler.get_scale() == 2.0**10
    assert step(1, 1.0, float("inf")) and accelerator.scaler.get_scale() == 2.0**9  # the scaler skipped it
    assert not step(2, float("nan"), 1.0) and guard.skips == 1 and accelerator.scaler.get_scale() == 2.0**8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert step(3, 1.0, 1.0)  # unscale_ works again, and the step is taken
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(NonFiniteLossError, match=r"at step 4 \(loss nan\)"):
        step(4, float("nan"), 1.0)


def test_checkpoints_and_model_folders_with_nonfinite_weights_are_refused(tmp_path):
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    model = accelerator.prepare(create_generator("nt-tiny", codebook_size=16, grid_size=(2, 2)))
    save_checkpoint(accelerator, tmp_path, 1, [model])
    save_model_atomically(model, tmp_path / "generator")
    good = load_file(tmp_path / "generator" / "diffusion_pytorch_model.safetensors")
    name, param = list(model.named_parameters())[3]
    with torch.no_grad():
        param[0, 0] = float("nan")
    assert first_nonfinite(model) == name
    with pytest.raises(NonFiniteWeightsError, match=f"checkpoint step_2: {name} holds NaN"):
        save_checkpoint(accelerator, tmp_path, 2, [model])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]
    with pytest.raises(NonFiniteWeightsError, match=f"{name} holds NaN"):
        save_model_atomically(model, tmp_path / "generator")
    kept = load_file(tmp_path / "generator" / "diffusion_pytorch_model.safetensors")  # the good folder is intact
    assert kept.keys() == good.keys() and all(torch.equal(kept[k], good[k]) for k in good)
    assert not list(tmp_path.glob(".tmp_*"))
    with torch.no_grad():
        param[0, 0] = 0.0
    model.register_buffer("ema", torch.tensor([float("inf")]))  # buffers count too (EMA codebooks)
    assert first_nonfinite(model) == "ema"


def test_cli_flags_set_the_bound():
    assert parse_train_args([]).max_nonfinite_skips == 0
    assert parse_train_args(["--max-nonfinite-skips", "3"]).max_nonfinite_skips == 3
    spec = importlib.util.spec_from_file_location("train_generator_cli", ROOT / "scripts" / "train_generator.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_args(["--max-nonfinite-skips", "2"]).max_nonfinite_skips == 2
