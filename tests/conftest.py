"""Shared test settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenizers_vis.clip import CLIPEncoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine is never oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """A tiny randomly initialised project CLIP saved to a folder (a semantic teacher for tests)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPEncoder.create(
        vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1
    ).save_pretrained(folder)
    return folder


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"scripts/{name}.py", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny models: one thread, as in-process tests
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def run_script():
    """``run_script("generate", "--prompt", ...)``: a command line of scripts/ run from the repository root in a
    subprocess; returns the finished process (``returncode``, ``stdout``, ``stderr``)."""
    return _run_script


def _fit(model, batch, steps: int, lr: float, **adamw) -> list[float]:
    """``steps`` AdamW steps on ``model.loss(*batch())`` in training mode; returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **adamw)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.loss(*batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def fit():
    """``fit(model, batch, steps, lr)``: a short training run of a tiny generator (``batch()`` gives loss args)."""
    return _fit


def _fit_tokenizer(model, x: torch.Tensor, steps: int = 30, lr: float = 3e-3) -> list[float]:
    """``steps`` Adam steps of a tokenizer's ``forward`` loss on one batch ``x``; returns the reconstruction losses."""
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        _, parts = model(x)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["recon"].item())
    return losses


@pytest.fixture(scope="session")
def fit_tokenizer():
    """``fit_tokenizer(model, x)``: a short reconstruction run of a tiny tokenizer on one batch."""
    return _fit_tokenizer
