"""Shared test settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tokenizers_vis.clip import CLIPEncoder


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


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script():
    """``script("generate")``: a file of scripts/ imported as a module (its ``main`` / ``parse_args``)."""
    return _load_script


@pytest.fixture(scope="session")
def train_cli():
    """scripts/train_tokenizer.py as a module (its ``parse_args``)."""
    return _load_script("train_tokenizer")


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
