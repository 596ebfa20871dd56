"""The shared transformer, the next-token generator and its sampling."""

from __future__ import annotations

import pytest
import torch

from generators import (
    NextTokenGenerator,
    Transformer,
    create_generator,
    guidance_at,
    load_generator,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from generators.sampling import guide
from generators.transformer import thin_input_layout


def grid_positions(t: int, width: int = 4) -> torch.Tensor:
    return torch.stack([torch.arange(t) // width, torch.arange(t) % width], dim=-1)


def tiny(condition: str = "prompt", **kw) -> NextTokenGenerator:
    torch.manual_seed(0)
    args = dict(grid_size=(4, 5), dim=32, depth=2, heads=4, condition=condition, num_classes=3)
    args |= dict(prompt_dim=8, prompt_length=6)
    return NextTokenGenerator(50, **(args | kw)).eval()


def condition_for(kind: str, batch: int = 3):
    gen = torch.Generator().manual_seed(1)
    if kind == "prompt":
        return torch.randn(batch, 6, 8, generator=gen)
    if kind == "class":
        return torch.arange(batch) % 3
    return None


# ---- transformer -------------------------------------------------------------------------------------------------


def test_transformer_is_causal():
    torch.manual_seed(0)
    model = Transformer(32, 2, 4).eval()
    x = torch.randn(2, 10, 32)
    pos = grid_positions(10)
    y = model(x, pos)
    x2 = x.clone()
    x2[:, 6] += 1.0
    y2 = model(x2, pos)
    assert torch.equal(y[:, :6], y2[:, :6])  # earlier positions never see a later token
    assert not torch.allclose(y[:, 6:], y2[:, 6:])  # the changed token and those after it do


def test_transformer_cache_matches_full_forward_in_chunks():
    torch.manual_seed(0)
    model = Transformer(32, 3, 4).eval()
    x, pos = torch.randn(2, 12, 32), grid_positions(12)
    full = model(x, pos)
    cache = model.new_cache(2, 12, x.device)
    parts = [model(x[:, a:b], pos[a:b], cache=cache) for a, b in ((0, 5), (5, 6), (6, 9), (9, 12))]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_refuses_overflow():
    model = Transformer(32, 1, 4)
    cache = model.new_cache(1, 4, "cpu")
    with pytest.raises(ValueError, match="holds 4 tokens"):
        model(torch.randn(1, 5, 32), grid_positions(5), cache=cache)


@pytest.mark.parametrize("parts", [1, 2, 3])  # 3 divides some output widths (96, 192) and not another (32)
def test_thin_input_layout_keeps_outputs_and_restores_the_model(parts):
    torch.manual_seed(0)
    model = Transformer(32, 2, 4).eval()
    x, pos = torch.randn(2, 3, 32), grid_positions(3)
    params, saved = list(model.parameters()), {k: v.clone() for k, v in model.state_dict().items()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        y = model(x, pos)
        with pytest.raises(RuntimeError, match="interrupted"), thin_input_layout(model, parts):
            assert all("forward" in vars(m) for m in linears)  # every bias-free linear runs blocked
            torch.testing.assert_close(model(x, pos), y, atol=1e-6, rtol=1e-5)
            raise RuntimeError("interrupted")
    assert not any("forward" in vars(m) for m in linears)
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(m.weight.is_contiguous() for m in linears)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_rotary_positions_are_relative():
    """Shifting every position by the same offset leaves the outputs unchanged (RoPE sees offsets only)."""
    torch.manual_seed(0)
    model = Transformer(32, 2, 4).eval()
    x, pos = torch.randn(1, 8, 32), grid_positions(8)
    torch.testing.assert_close(model(x, pos), model(x, pos + torch.tensor([3, 2])), atol=1e-5, rtol=1e-4)


# ---- generator -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prompt", "class", "none"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_greedy_with_cache_equals_without(kind, scale):
    model = tiny(kind)
    cond = condition_for(kind)
    cached = model.generate(cond, batch_size=3, temperature=0, guidance_scale=scale)
    plain = model.generate(cond, batch_size=3, temperature=0, guidance_scale=scale, use_cache=False)
    assert cached.shape == (3, 4, 5)
    assert torch.equal(cached, plain)


def test_greedy_tokens_are_the_teacher_forced_argmax():
    """Sampling and training see the same sequence layout: re-scoring a greedy sample picks every token again."""
    model = tiny("prompt")
    cond = condition_for("prompt")
    tokens = model.generate(cond, temperature=0)
    assert torch.equal(model(tokens, cond).argmax(-1), tokens.flatten(1))


@pytest.mark.parametrize("objective", ["next", "random", "next_all"])
def test_class_in_slots_adds_the_class_to_every_slot(objective):
    """With ``class_in_slots`` every slot carries the class embedding (the null class's where guidance drops it),
    in every objective's layout, and sampling sees the layout training does."""
    model = tiny("class", class_in_slots=True, objectives={objective: 1.0})
    cond, tokens = condition_for("class"), torch.randint(0, 50, (3, 4, 5))
    prefix = model.prefix(cond, 3)
    torch.testing.assert_close(model.slot_condition(prefix), model.class_embed(cond)[:, None])
    assert tiny("class").slot_condition(prefix) is None
    prompted = tiny("prompt", class_in_slots=True)
    assert prompted.slot_condition(prompted.prefix(condition_for("prompt"), 3)) is None
    model.train()
    torch.manual_seed(0)
    assert model(tokens, cond, return_loss=True).isfinite()
    model.eval()
    greedy = model.generate(cond, temperature=0, guidance_scale=2.0)
    assert torch.equal(greedy, model.generate(cond, temperature=0, guidance_scale=2.0, use_cache=False))
    greedy = model.generate(cond, temperature=0)
    assert torch.equal(model(greedy, cond).argmax(-1), greedy.flatten(1))


@pytest.mark.parametrize("kind", ["prompt", "class", "none"])
def test_llamagen_layout_decodes_as_it_trains(kind):
    """LlamaGen's layout (exactness against LlamaGen: tests/test_llamagen_conversion.py): the prefix's last slot
    predicts token 0 with no start token or target positions, the prefix's rotary angles are zero, and cached,
    uncached, self-verified and teacher-forced decoding agree, for a several-token prompt prefix too."""
    model = tiny(kind, layout="llamagen", num_predict=2)
    p, cond = model.prefix_length, condition_for(kind)
    assert model.target_pos is None and model.first_slot == p - 1
    cos, sin = model._rotary(model._positions(0, p + 2))
    first_two, _ = model.transformer.rotary(model.grid_positions[:2])  # slots p, p + 1 hold tokens 0, 1
    assert not cos[:p].any() and not sin[:p].any() and torch.equal(cos[p:], first_two)
    for scale in (1.0, 3.0):
        cached = model.generate(cond, batch_size=3, temperature=0, guidance_scale=scale)
        plain = model.generate(cond, batch_size=3, temperature=0, guidance_scale=scale, use_cache=False)
        one_by_one = model.generate(cond, batch_size=3, temperature=0, guidance_scale=scale, num_predict_used=1)
        assert torch.equal(cached, plain) and torch.equal(cached, one_by_one)
    greedy = model.generate(cond, batch_size=3, temperature=0)
    assert torch.equal(model(greedy, cond).argmax(-1), greedy.flatten(1))
    for objective in ("next", "random"):
        trained = tiny(kind, layout="llamagen", num_predict=2, objectives={objective: 1.0}).train()
        assert trained(greedy, cond, return_loss=True).isfinite()
    with pytest.raises(ValueError, match="next_all objective needs"):
        tiny(kind, layout="llamagen", objectives={"next_all": 1.0})
    with pytest.raises(ValueError, match="unknown layout 'x'"):
        tiny(kind, layout="x")


def test_sampling_is_seeded():
    model = tiny("class")
    cond = condition_for("class")

    def draw(seed):
        return model.generate(cond, top_k=10, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_condition_dropout_swaps_in_the_null_prefix():
    """With cond_dropout=1 every training sample sees the null prefix, so the condition stops mattering."""
    model = tiny("prompt", cond_dropout=1.0)
    cond, tokens = condition_for("prompt"), torch.randint(0, 50, (3, 4, 5))
    model.train()
    dropped = model(tokens, cond)
    assert torch.equal(dropped, model(tokens, -3 * cond))
    model.eval()
    assert not torch.allclose(model(tokens, cond), dropped)


def test_generator_refuses_bad_input():
    model = tiny("prompt")
    with pytest.raises(ValueError, match=r"shape \(B, 4, 5\)"):
        model(torch.randint(0, 50, (2, 4, 4)), condition_for("prompt", 2))
    with pytest.raises(ValueError, match="prompt states must have shape"):
        model(torch.randint(0, 50, (2, 4, 5)), torch.randn(2, 7, 8))
    with pytest.raises(ValueError, match="pass a condition"):
        model(torch.randint(0, 50, (2, 4, 5)))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        tiny("class")(torch.randint(0, 50, (2, 4, 5)), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="accepted: prompt, class, none"):
        NextTokenGenerator(10, condition="text")
    with pytest.raises(ValueError, match="available: "):
        create_generator("nt-huge", codebook_size=8)


def test_generator_learns_class_to_grid_and_round_trips(tmp_path, fit):
    """Four classes, each with its own fixed grid: after a short run greedy sampling draws exactly those grids."""
    torch.manual_seed(0)
    model = create_generator("nt-tiny", codebook_size=16, grid_size=(4, 4), condition="class", num_classes=4)
    targets = torch.randint(0, 16, (4, 4, 4))

    def batch():
        labels = torch.randint(0, 4, (16,))
        return targets[labels], labels

    losses = fit(model, batch, 150, 3e-3)
    model.eval()
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
    labels = torch.arange(4)
    sample = model.generate(labels, temperature=0, guidance_scale=2.0)
    assert torch.equal(sample, targets)

    model.save_pretrained(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen").eval()
    assert torch.equal(loaded.generate(labels, temperature=0, guidance_scale=2.0), sample)


def test_load_generator_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_generator(tmp_path)


# ---- sampling ------------------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False], [True, True, False, False, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 5), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()[:, [3, 0, 4, 1, 2]]  # shuffled: order must not matter
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False, False, False]]
    assert top_p_filter(logits, 0.7).isfinite().tolist() == [[False, True, False, True, False]]
    assert top_p_filter(logits, 0.71).isfinite().tolist() == [[False, True, False, True, True]]
    assert top_p_filter(logits, 0.01).isfinite().sum() == 1  # the top token always survives
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_sample_logits_draws_only_kept_tokens_at_their_renormalised_rates():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1])).expand(20000, 4)
    draws = sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / len(draws)
    assert counts[2:].sum() == 0
    assert abs(counts[0].item() - 4 / 7) < 0.02
    assert torch.equal(sample_logits(logits[:3], temperature=0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(logits, temperature=-1)


def test_guidance_and_schedules():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.equal(guide(torch.cat([cond, uncond]), 3.0), torch.tensor([[4.0, -2.0]]))
    assert guidance_at(4.0, 5, 10) == 4.0
    assert guidance_at(4.0, 0, 10, "linear") == 1.0 and guidance_at(4.0, 9, 10, "linear") == 4.0
    assert guidance_at(4.0, 0, 10, "cosine") == pytest.approx(1.0)
    assert guidance_at(4.0, 9, 10, "cosine") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="accepted: constant, linear, cosine"):
        guidance_at(2.0, 0, 10, "step")


def test_guided_sampling_equals_manual_mix():
    """The first guided greedy token is the argmax of uncond + s * (cond - uncond) computed by hand."""
    model = tiny("class")
    labels = condition_for("class")
    first = model.generate(labels, temperature=0, guidance_scale=2.5)[:, 0, 0]
    cond_logits = model(torch.zeros(3, 4, 5, dtype=torch.long), labels)[:, 0]
    x = torch.cat([model._null_prefix(3), model._token_slots(torch.full((3, 1), 50), 0)], 1)
    null_logits = model.head(model.transformer(x, model._positions(0, 2))[:, -1])
    expected = (null_logits + 2.5 * (cond_logits - null_logits)).argmax(-1)
    assert torch.equal(first, expected)
