"""What every trainer shares: the base run config, the LR schedule, parameter groups, mixed precision, CPU threads,
checkpoint / resume, atomic model saves and the guard against non-finite losses (nothing non-finite is ever saved).

Trainers on it: :mod:`tokenizers_vis.training` (tokenizers), :mod:`tokenizers_vis.clip_training` (the project CLIP),
:mod:`tokenizers_vis.evaluation.grader_training` (the attribute grader) and :mod:`generators.training`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from accelerate import Accelerator


@dataclass(kw_only=True)
class RunConfig:
    """The optimisation fields every trainer reads. Each trainer's config subclasses it (the Accelerate trainers
    through :class:`AccelerateRunConfig`), adds its own fields and redeclares those whose defaults differ."""

    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # the cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm, 0 disables clipping
    seed: int = 0

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Self:
        return config_from_file(cls, path, **overrides)


@dataclass(kw_only=True)
class AccelerateRunConfig(RunConfig):
    """What the Accelerate trainers (tokenizers, generators) add: warm-up in steps, mixed precision, an output
    folder with checkpoints to resume from, logging and CPU threads."""

    output_dir: str
    warmup_steps: int = 100
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    save_every: int = 500  # checkpoint every this many steps
    log_every: int = 20
    resume: bool = False  # continue from the newest checkpoint under output_dir
    cpu_threads: int = 0  # CPU training: torch threads per process, 0 = available cores / local processes
    # steps with a non-finite loss or gradient norm skipped (update dropped) before the run stops; 0 = stop at the
    # first. Overflows that fp16 loss scaling handles itself are not counted (see NonFiniteGuard)
    max_nonfinite_skips: int = 0


def config_from_file(cls: type, path: str | Path, **overrides: Any) -> Any:
    """Builds the dataclass ``cls`` from a JSON or YAML file whose keys are its field names; overrides win."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown config keys in {path}: {sorted(unknown)}")
    return cls(**{**values, **overrides})


def cpu_name() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``), else whatever ``platform`` knows: benchmark tables name it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_runs_bf16_fast() -> bool:
    """Whether this CPU has bf16 instructions (AMX or AVX512-BF16): there bf16 autocast beats fp32, elsewhere it is
    emulated and slower. torch only has private checks for this; tests/test_train_core.py fails if they change."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_mixed_precision(choice: str) -> str:
    """'auto' picks bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AMX / AVX512-BF16)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_runs_bf16_fast() else "no"


def set_cpu_threads(accelerator: Accelerator, requested: int) -> None:
    """`accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves CPU training speed
    on two cores; give each local process its share of the cores instead (or the requested number)."""
    if accelerator.device.type != "cpu":
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    torch.set_num_threads(requested or max(1, len(os.sched_getaffinity(0)) // local))


def lr_schedule(warmup_steps: int, steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """The LR factor of each step (for ``LambdaLR``, or ``lr * factor`` by hand): linear warm-up over
    ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at step ``steps``, held there after."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, in ``named_parameters`` order: ``weight_decay`` on weight matrices; none on biases and
    norm scales (fewer than 2 dims), embeddings and position tables (names containing "embed" or "pos") and what
    the model lists in ``no_weight_decay()`` (the timm / open_clip convention). Decaying those only pulls them
    towards zero without regularising anything."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or name in skip or "embed" in name or "pos" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoints/step_<n>`` folder under ``output_dir``, if any."""
    ckpts = sorted(output_dir.glob("checkpoints/step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpts[-1] if ckpts else None


def resume_from_latest(accelerator: Accelerator, output_dir: Path) -> int:
    """Loads the newest checkpoint under ``output_dir`` (if any) into the prepared objects; returns its step."""
    ckpt = latest_checkpoint(output_dir)
    if ckpt is None:
        return 0
    accelerator.load_state(str(ckpt))
    step = json.loads((ckpt / "step.json").read_text())["step"]
    accelerator.print(f"resumed from {ckpt} at step {step}")
    return step


class NonFiniteLossError(FloatingPointError):
    """A training step gave a NaN or infinite loss or gradient norm, and no more such steps may be skipped."""


class NonFiniteWeightsError(FloatingPointError):
    """A model about to be saved holds a NaN or infinity (it is not written)."""


def first_nonfinite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or floating buffer of ``model`` holding a NaN or infinity, None if none does.
    FSDP shards (DTensors) are checked locally: each rank sees its own part."""
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.is_floating_point() and not torch.isfinite(local).all():
            return name
    return None


class NonFiniteGuard:
    """Stops a run at its first step with a non-finite loss or gradient norm, or skips up to ``max_skips`` of them.

    Called once per optimizer step after ``accelerator.backward`` and ``accelerator.clip_grad_norm_`` (with
    ``max_norm=math.inf`` when not clipping, which only measures the norm)::

        if guard.check(step, opt, loss, grad_norm):
            opt.step()

    A skipped step's gradients are dropped (the LR schedule still advances, so a step index means the same LR and
    batch with or without skips); buffers updated in the forward pass (EMA codebooks) are not rolled back, and if
    they turned non-finite the next steps fail too until the bound stops the run. The loss and norm of every rank are
    gathered, so all ranks decide alike and DDP / FSDP never desync; this costs one small collective and one host sync
    per step. Under fp16 loss scaling an infinite gradient is the ``GradScaler``'s business (it skips the step and
    lowers the scale, as fp16 training expects, without bound), so only the loss is checked there.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, max_skips: int = 0) -> None:
        self.accelerator, self.output_dir, self.max_skips = accelerator, output_dir, max_skips
        self.skips = 0

    def check(
        self, step: int, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor | None = None
    ) -> bool:
        """True if this step's update may be applied. False if it is skipped (``optimizer``'s gradients cleared);
        raises :class:`NonFiniteLossError` naming ``step`` and the checkpoint to resume from once skips run out."""
        acc = self.accelerator
        values = [loss.detach().float().reshape(())]
        if grad_norm is not None and acc.scaler is None:
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2
            values.append(grad_norm.detach().float().reshape(()).to(values[0].device))
        gathered = acc.gather(torch.stack(values)).view(acc.num_processes, len(values)).cpu()
        if bool(torch.isfinite(gathered).all()):
            return True
        found = f"loss {_fmt(gathered[:, 0])}" + (f", grad norm {_fmt(gathered[:, 1])}" if len(values) > 1 else "")
        if self.skips < self.max_skips:
            self.skips += 1
            acc.print(
                f"step {step}: non-finite loss or gradient norm ({found}); update skipped ({self.skips} of "
                f"{self.max_skips} allowed)"
            )
            optimizer.zero_grad(set_to_none=True)
            if acc.scaler is not None:  # clears the scaler's "already unscaled" mark and backs off like an overflow
                acc.scaler.update(acc.scaler.get_scale() * acc.scaler.get_backoff_factor())
            return False
        ckpt = latest_checkpoint(self.output_dir)
        where = (
            f"the last good checkpoint is {ckpt}: continue from it with --resume (after the cause is fixed: a lower "
            "--lr, longer --warmup-steps or --mixed-precision no)"
            if ckpt
            else "no checkpoint was written yet"
        )
        skips = (
            f"{self.skips} such steps were skipped already, the most --max-nonfinite-skips allows"
            if self.max_skips
            else "--max-nonfinite-skips N skips up to N such steps instead"
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradient norm at step {step} ({found}), nothing saved from it; {where}; {skips}"
        )


def _fmt(values: torch.Tensor) -> str:
    """One value, or one per rank in brackets."""
    text = [f"{v:.4g}" for v in values.tolist()]
    return text[0] if len(text) == 1 else f"[{', '.join(text)}] (by rank)"


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, models: Sequence[torch.nn.Module], keep: int = 2
) -> None:
    """Accelerate state written to a temporary folder and renamed, so a kill never leaves a half checkpoint. Refused
    (:class:`NonFiniteWeightsError`, on every rank, nothing written) if one of the prepared ``models`` holds a NaN or
    infinity, so a bad step never rotates the good checkpoints away."""
    # the flag is gathered so every rank raises or none does
    bad = [name for m in models if (name := first_nonfinite(accelerator.unwrap_model(m))) is not None]
    if accelerator.gather(torch.tensor([len(bad)], device=accelerator.device)).any():
        name = bad[0] if bad else "a parameter shard on another process"
        raise NonFiniteWeightsError(f"refusing to write checkpoint step_{step}: {name} holds NaN or infinite values")
    root = output_dir / "checkpoints"
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        # every rank writes its own RNG state into it: the folder exists before any rank saves
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # all ranks' files are in before the folder is renamed
    if accelerator.is_main_process:
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_model_atomically(model: torch.nn.Module, path: Path) -> None:
    """``model.save_pretrained`` into a temporary folder renamed to ``path``, so a kill never leaves half a model;
    refused (:class:`NonFiniteWeightsError`, nothing written) if the model holds a NaN or infinity."""
    if (name := first_nonfinite(model)) is not None:
        raise NonFiniteWeightsError(f"refusing to write {path}: {name} holds NaN or infinite values")
    tmp = path.with_name(f".tmp_{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def param_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters and buffers in float64: equal across ranks iff they stayed in sync. FSDP shards
    (DTensors) are summed locally, without a collective: there each rank gives its own shard's sum."""
    tensors = (t.to_local() if hasattr(t, "to_local") else t for t in model.state_dict().values())
    return float(sum(t.double().sum() for t in tensors if t.is_floating_point()))
