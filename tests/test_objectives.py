"""Training objectives of the next-token generator (TokenUnify mixture, multi-token prediction) and sampling with
self-verification."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from generators import NextTokenGenerator
from generators.next_token import OBJECTIVES

ASSET = Path(__file__).resolve().parents[1] / "assets" / "pipeline" / "generator"


def tiny(grid=(4, 5), codebook: int = 50, **kw) -> NextTokenGenerator:
    torch.manual_seed(0)
    args = dict(grid_size=grid, dim=32, depth=2, heads=4, condition="class", num_classes=3)
    return NextTokenGenerator(codebook, **(args | kw)).eval()


def tokens_for(model: NextTokenGenerator, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, model.config.codebook_size, (batch, *model.config.grid_size), generator=gen)


# ---- objectives --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 5), (2, 3, 4)])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_trains_every_parameter(objective, grid):
    """Finite loss, finite gradients, and every parameter in the graph (DDP needs that), extra heads included."""
    model = tiny(grid, objectives={objective: 1.0}, num_predict=3).train()
    loss = model.loss(tokens_for(model), torch.arange(3))
    loss.backward()
    assert loss.isfinite()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.isfinite().all(), name


def test_objective_draw_follows_the_ratios_and_the_global_rng():
    model = tiny(objectives={"next": 0.5, "random": 0.25, "next_all": 0.25})
    torch.manual_seed(0)
    draws = [model.draw_objective() for _ in range(4000)]
    counts = Counter(draws)
    for name, share in (("next", 0.5), ("random", 0.25), ("next_all", 0.25)):
        assert abs(counts[name] / len(draws) - share) < 0.03
    torch.manual_seed(0)
    assert [model.draw_objective() for _ in range(4000)] == draws  # a restored RNG state replays the draws
    reordered = tiny(objectives={"next_all": 0.25, "random": 0.25, "next": 0.5})  # as a saved config sorts them
    torch.manual_seed(0)
    assert [reordered.draw_objective() for _ in range(4000)] == draws
    assert tiny().draw_objective() == "next"


def test_training_forwards_draw_one_objective_each(monkeypatch):
    model = tiny(objectives={"next": 1.0, "random": 1.0})
    drawn = []
    monkeypatch.setattr(model, "draw_objective", lambda: drawn.append("random") or "random")
    tokens, labels = tokens_for(model), torch.arange(3)
    model(tokens, labels)
    model.loss(tokens, labels)  # eval mode: next-token loss, no draw
    assert drawn == []
    model.train()
    model.loss(tokens, labels)
    model(tokens, labels)
    assert drawn == ["random"]


def test_next_only_mixture_matches_the_plain_loss():
    """Weights are normalised, and the draw comes after the condition-dropout draw: {"next": 2} is today's loss."""
    plain, mixed = tiny().train(), tiny(objectives={"next": 2.0}).train()
    tokens, labels = tokens_for(plain), torch.arange(3)
    torch.manual_seed(5)
    expected = plain.loss(tokens, labels)
    torch.manual_seed(5)
    assert torch.equal(mixed.loss(tokens, labels), expected)


def test_bad_objectives_and_head_counts_are_refused():
    with pytest.raises(ValueError, match="accepted: next, random, next_all"):
        tiny(objectives={"next": 0.5, "masked": 0.5})
    for weights in ({"next": -1.0, "random": 2.0}, {"next": 0.0}, {}, {"next": float("nan")}):
        with pytest.raises(ValueError, match="objective weights"):
            tiny(objectives=weights)
    with pytest.raises(ValueError, match=r"num_predict must be in \[1, 20\]"):
        tiny(num_predict=0)
    with pytest.raises(ValueError, match=r"num_predict must be in \[1, 20\]"):
        tiny(num_predict=21)
    with pytest.raises(ValueError, match=r"num_predict_used must be in \[1, 2\]"):
        tiny(num_predict=2).generate(torch.arange(3), num_predict_used=3)


def test_random_token_layout_is_bidirectional_next_token_is_causal():
    model = tiny()
    tokens, labels = tokens_for(model).flatten(1), torch.arange(3)
    later = tokens.clone()
    later[:, -2] = (later[:, -2] + 1) % 50
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[:, 0] = True
    prefix = model.prefix(labels, 3)
    h, h_later = (model._random_token_hidden(prefix, t, masked) for t in (tokens, later))
    assert not torch.allclose(h[:, 0], h_later[:, 0])  # the masked first slot sees a later token
    logits, logits_later = (model(t.view(3, 4, 5), labels) for t in (tokens, later))
    assert torch.equal(logits[:, :-1], logits_later[:, :-1])  # only the last slot holds token N - 2
    assert not torch.allclose(logits[:, -1], logits_later[:, -1])


# ---- multi-token prediction and self-verification -----------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 5), (2, 3, 4)])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_verified_greedy_equals_plain_greedy_untrained(grid, scale):
    model = tiny(grid, num_predict=3)
    labels = torch.arange(3)
    plain, stats = model.generate(labels, temperature=0, guidance_scale=scale, num_predict_used=1, return_stats=True)
    assert stats == {"forward_passes": model.num_tokens}
    for use_cache in (True, False):
        verified = model.generate(labels, temperature=0, guidance_scale=scale, use_cache=use_cache)
        assert torch.equal(verified, plain)


def test_trained_heads_cut_forward_passes_and_keep_greedy_output(tmp_path, fit):
    """Four classes, each with its own fixed grid: once the extra heads have learned them, each forward accepts
    several tokens, and the verified greedy output is still exactly the plain one."""
    model = tiny((4, 4), codebook=16, num_classes=4, num_predict=4)
    targets = torch.randint(0, 16, (4, 4, 4))

    def batch():
        labels = torch.randint(0, 4, (16,))
        return targets[labels], labels

    fit(model, batch, 150, 3e-3)
    model.eval()
    labels = torch.arange(4)
    for scale in (1.0, 2.0):
        plain = model.generate(labels, temperature=0, guidance_scale=scale, num_predict_used=1)
        verified, stats = model.generate(labels, temperature=0, guidance_scale=scale, return_stats=True)
        assert torch.equal(verified, plain)
        assert stats["forward_passes"] < model.num_tokens // 2

    model.save_pretrained(tmp_path / "gen")
    loaded = NextTokenGenerator.from_pretrained(tmp_path / "gen").eval()
    assert loaded.config.num_predict == 4
    assert torch.equal(loaded.generate(labels, temperature=0, guidance_scale=2.0), verified)


def test_verified_sampling_keeps_the_main_heads_distribution(fit):
    """Two-token codebook, three tokens, a model trained briefly towards a skewed law: the empirical law of verified
    samples (batch 1, so proposals do get accepted) matches the exact law of the main head, computed by teacher
    forcing all 8 sequences."""
    model = tiny((1, 3), codebook=2, condition="none", num_predict=3)
    fit(model, lambda: ((torch.rand(32, 1, 3) < torch.tensor([0.9, 0.15, 0.9])).long(),), 80, 3e-3)
    model.eval()
    every = torch.cartesian_prod(*[torch.arange(2)] * 3)  # (8, 3)
    with torch.no_grad():
        law = model(every.view(8, 1, 3)).log_softmax(-1).gather(-1, every[..., None]).sum((1, 2)).exp()
    gen = torch.Generator().manual_seed(0)
    counts, passes = torch.zeros(8), 0
    for _ in range(500):
        sample, stats = model.generate(batch_size=1, generator=gen, return_stats=True)
        counts[(sample.flatten() * torch.tensor([4, 2, 1])).sum()] += 1
        passes += stats["forward_passes"]
    assert passes < 0.8 * 3 * 500  # proposals were accepted (plain decoding: 3 passes a sample)
    assert (counts / 500 - law).abs().sum() < 0.12  # about 0.06 expected from 500 draws


def test_default_config_loads_the_shipped_generator():
    model, info = NextTokenGenerator.from_pretrained(ASSET, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.objectives is None and model.config.num_predict == 1
