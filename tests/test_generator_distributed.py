"""Generator training in two CPU processes (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``):
both ranks end with identical weights, and a NaN on one rank alone is skipped or stops the run on both ranks alike.
FSDP as far as it runs on CPU: torch's FSDP2 over gloo by hand (accelerate enables FSDP on GPUs only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generators import PromptEncoder
from tokenizers_vis import create_tokenizer
from tokenizers_vis.clip import CLIPEncoder

ROOT = Path(__file__).resolve().parents[1]
# scripts/train_generator.py with the training loss of rank 1 made NaN at step 2 (its third training forward)
NAN_ON_RANK_1 = """
import os, runpy, sys
from generators.registry import preset_class

cls = preset_class("nt-tiny")
forward, calls = cls.forward, [0]


def poisoned(module, *args, **kwargs):
    out = forward(module, *args, **kwargs)
    if module.training and kwargs.get("return_loss"):
        calls[0] += 1
        if calls[0] == 3 and os.environ["RANK"] == "1":
            return out * float("nan")
    return out


cls.forward = poisoned
sys.argv[0] = "scripts/train_generator.py"
runpy.run_path("scripts/train_generator.py", run_name="__main__")
"""

# Two ranks of a generator sharded with torch's FSDP2 as configs/accelerate_fsdp.yaml asks (each Block, then the
# whole model), by hand: accelerate turns FSDP on for GPUs only (on CPU it silently runs DDP). Rank 1's loss is NaN
# at step 2; the guard reads the sharded (DTensor) gradient norm; rank 0 saves the gathered full state dict.
FSDP2_BY_HAND = """
import json, sys
from pathlib import Path
import torch
import yaml
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from generators import create_generator, load_generator, transformer
from tokenizers_vis.train_core import NonFiniteGuard, first_nonfinite, param_checksum, save_model_atomically

out = Path(sys.argv[1])
config = yaml.safe_load(Path("configs/accelerate_fsdp.yaml").read_text())["fsdp_config"]
wrap = getattr(transformer, config["fsdp_transformer_layer_cls_to_wrap"])
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
torch.manual_seed(0)
kw = dict(codebook_size=16, grid_size=(2, 2), condition="class", num_classes=4)
model = create_generator("nt-tiny", **kw)
for module in model.modules():
    if isinstance(module, wrap):
        fully_shard(module)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
guard = NonFiniteGuard(accelerator, out, max_skips=1)
gen = torch.Generator().manual_seed(rank)
applied = []
for step in range(4):
    tokens, labels = torch.randint(16, (4, 2, 2), generator=gen), torch.randint(4, (4,), generator=gen)
    loss = model(tokens, labels, return_loss=True)
    loss = loss * float("nan") if (step, rank) == (2, 1) else loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    applied.append(guard.check(step, opt, loss, torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
    if applied[-1]:
        opt.step()
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
result = {"applied": applied}
if rank == 0:
    plain = create_generator("nt-tiny", **kw)
    plain.load_state_dict(full)
    save_model_atomically(plain, out / "generator")
    result["saved_equals_gathered"] = param_checksum(load_generator(out / "generator")) == param_checksum(plain)
name, param = next((n, p) for n, p in model.named_parameters() if p.to_local().numel())
with torch.no_grad():
    param.to_local()[0] = float("nan") if rank == 1 else 0.0
result |= {"wrapped": wrap.__name__, "param_type": type(param).__name__, "bad": first_nonfinite(model), "name": name}
(out / f"rank{rank}.json").write_text(json.dumps(result))
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()  # left to interpreter exit, gloo's threads once aborted a rank (SIGABRT)
"""


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny tokenizer and prompt encoder saved as folders, and a token cache shared by the runs."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny")
    # one training-mode pass runs the codebook's k-means init here: left to the run, rank 0 would run it alone while
    # tokenizing (rank 1 waits at a barrier) and its distributed k-means would wait for rank 1 forever
    tokenizer.train()(torch.rand(8, 3, 32, 32) * 2 - 1)
    tokenizer.save_pretrained(root / "tokenizer")
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    PromptEncoder(clip).save_pretrained(root / "clip")
    return root


# what the README says for CPU processes, and the shipped DDP config (MULTI_GPU becomes DDP over gloo on CPU)
MULTI_GPU = ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
DDP_CONFIG = ["--config_file", "configs/accelerate_ddp.yaml"]


def _launch_two_processes(
    how: list[str], script: Path, parts: Path, out: Path, *flags: str
) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2"]
    launch += ["--mixed_precision", "no", str(script)]
    run = ["--tokenizer", str(parts / "tokenizer"), "--prompt-encoder", str(parts / "clip"), "--preset", "nt-tiny"]
    run += ["--resolution", "32", "--train-samples", "32", "--eval-samples", "8", "--batch-size", "4"]
    run += ["--steps", "6", "--save-every", "2", "--warmup-steps", "2", "--sample-every", "0", "--cpu-threads", "1"]
    run += ["--mixed-precision", "no", "--cache-dir", str(parts / "cache"), "--output-dir", str(out), *flags]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    pipe, cmd = subprocess.PIPE, [*launch, *run]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # ranks that decided differently hang at the next collective
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_weights_through_a_skipped_nan_step(parts, tmp_path):
    (tmp_path / "nan_on_rank_1.py").write_text(NAN_ON_RANK_1)
    out = tmp_path / "run"
    flags = ["--max-nonfinite-skips", "1", "--warmup-steps", "6", "--lr", "1e-3"]
    result = _launch_two_processes(MULTI_GPU, tmp_path / "nan_on_rank_1.py", parts, out, *flags)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 2: non-finite loss or gradient norm (loss [" in result.stdout  # one line, from the main process
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["nonfinite_skips"] == 1
    # 6 steps of a 6-step warm-up end at the peak LR; a schedule advanced once per process would have decayed
    assert metrics["final_lr"] == pytest.approx(1e-3)
    a, b = metrics["rank_param_checksums"]
    assert a == b


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both(parts, tmp_path):
    (tmp_path / "nan_on_rank_1.py").write_text(NAN_ON_RANK_1)
    out = tmp_path / "run"
    result = _launch_two_processes(DDP_CONFIG, tmp_path / "nan_on_rank_1.py", parts, out)
    assert result.returncode != 0
    for rank in (0, 1):  # both ranks stop with the message (NaN loss on rank 1, NaN gradients after the all-reduce)
        assert f"[rank{rank}]: tokenizers_vis.train_core.NonFiniteLossError: non-finite loss" in result.stderr
    assert "at step 2 (loss [" in result.stderr and ", nan] (by rank), grad norm [nan, nan] (by rank))" in result.stderr
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step_2"]
    assert all(torch.isfinite(t).all() for t in load_file(checkpoints[0] / "model.safetensors").values())
    assert not (out / "generator").exists() and not (out / "pipeline").exists()


@pytest.mark.slow
def test_fsdp2_on_cpu_by_hand_with_the_guard_and_a_full_state_dict_save(tmp_path):
    """As far as FSDP runs on this CPU machine: torch's FSDP2 over gloo with the Block wrap of the shipped config,
    the guard's decision on a sharded gradient norm, per-shard weight checks and a full-state-dict model folder."""
    (tmp_path / "fsdp2.py").write_text(FSDP2_BY_HAND)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "fsdp2.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*cmd, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["applied"] == [True, True, False, True] for r in ranks)  # both skipped rank 1's NaN step
    assert ranks[0]["wrapped"] == "Block" and ranks[0]["param_type"] == "DTensor"
    assert ranks[0]["saved_equals_gathered"]
    assert (ranks[0]["bad"], ranks[1]["bad"]) == (None, ranks[1]["name"])  # each rank sees its own shard
