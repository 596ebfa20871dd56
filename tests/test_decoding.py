"""Decoding apart from the models: the guided prefix, the token sampler, and next-token decoding's prefill, decode
step and self-verification."""

from __future__ import annotations

import pytest
import torch

from generators import NextTokenGenerator, NextXGenerator
from generators.decoding import TokenDecoder, guided_prefix
from generators.sampling import TokenSampler, guidance_at, guide


def tiny(condition: str = "class", **kw) -> NextTokenGenerator:
    torch.manual_seed(0)
    args = dict(grid_size=(4, 5), dim=32, depth=2, heads=4, condition=condition, num_classes=3)
    args |= dict(prompt_dim=8, prompt_length=6)
    return NextTokenGenerator(50, **(args | kw)).eval()


def condition_for(kind: str, batch: int = 3):
    if kind == "prompt":
        return torch.randn(batch, 6, 8, generator=torch.Generator().manual_seed(1))
    if kind == "class":
        return torch.arange(batch) % 3
    return None


def decoder(model: NextTokenGenerator, scale: float = 1.0, temperature: float = 0.0, **kw) -> TokenDecoder:
    prefix = guided_prefix(model, torch.arange(3), None, scale)
    sampler = TokenSampler(model.num_tokens, prefix.guided, scale, temperature=temperature)
    return TokenDecoder(model, prefix, sampler, **kw)


# ---- guided prefix -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prompt", "class", "none"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_guided_prefix_stacks_the_null_prefix_when_guided(kind, scale):
    model = tiny(kind)
    prefix = guided_prefix(model, condition_for(kind), 3, scale)
    guided = scale != 1.0 and kind != "none"
    assert prefix.guided == guided and prefix.batch_size == 3 and prefix.copies == (2 if guided else 1)
    assert prefix.embeds.shape == (3 * prefix.copies, model.prefix_length, 32)
    assert prefix.length == model.prefix_length
    with torch.no_grad():
        assert torch.equal(prefix.embeds[:3], model.prefix(condition_for(kind), 3))
        if guided:
            assert torch.equal(prefix.embeds[3:], model._null_prefix(3))
    cache = prefix.new_cache(model.transformer, model.num_tokens)
    assert cache.length == 0
    assert cache.keys.shape == (2, 3 * prefix.copies, 4, model.prefix_length + model.num_tokens, 8)


def test_guided_prefix_takes_the_batch_from_the_condition_and_serves_next_x():
    assert guided_prefix(tiny("prompt"), condition_for("prompt", 5), None, 2.0).embeds.shape == (10, 6, 32)
    with pytest.raises(ValueError, match="pass a condition or a batch_size"):
        guided_prefix(tiny("none"), None, None, 1.0)
    torch.manual_seed(0)
    model = NextXGenerator(
        16, grid_size=(4, 4), latent_dim=4, dim=32, depth=1, heads=2, num_classes=2, condition="class"
    )
    prefix = guided_prefix(model, torch.tensor([0, 1]), None, 3.0)
    assert prefix.embeds.shape == (4, 1, 32) and prefix.copies == 2


# ---- token sampler -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_token_sampler_guides_then_samples(schedule):
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)).half()
    guided = TokenSampler(20, True, 2.5, schedule, temperature=0)
    expected = guide(logits.float(), guidance_at(2.5, 7, 20, schedule))
    assert torch.equal(guided.logits(logits, 7), expected)
    assert torch.equal(guided.sample(logits, 7), expected.argmax(-1))
    plain = TokenSampler(20)
    assert plain.logits(logits, 7).dtype == torch.float32 and plain.logits(logits, 7).shape == (6, 10)
    draws = [TokenSampler(20, generator=torch.Generator().manual_seed(3)).sample(logits, 0) for _ in range(2)]
    assert torch.equal(*draws) and draws[0].shape == (6,)


# ---- next-token decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("class_in_slots", [False, True])
def test_prefill_is_the_teacher_forced_forward_and_decode_steps_continue_it(scale, class_in_slots):
    model = tiny(class_in_slots=class_in_slots)
    tokens = torch.randint(0, 50, (3, 4, 5), generator=torch.Generator().manual_seed(2))
    dec = decoder(model, scale)
    held = torch.cat([torch.full((3, 1), 50), tokens.flatten(1)[:, :-1]], dim=1).repeat(dec.prefix.copies, 1)
    with torch.no_grad():
        full = dec.prefill(held)
        assert full.shape == (3 * dec.prefix.copies, model.prefix_length + model.num_tokens, 32)
        assert dec.cache.length == model.prefix_length + model.num_tokens
        teacher = model(tokens, torch.arange(3))
        torch.testing.assert_close(model.head(full[:3, model.prefix_length :]), teacher)
        # the first 7 slots in one prefill, then one decode step of 5 slots and single-slot steps
        dec = decoder(model, scale)
        parts = [dec.prefill(held[:, :7])[:, model.prefix_length :], dec.decode_step(held[:, 7:12], 7)]
        parts += [dec.decode_step(held[:, j : j + 1], j) for j in range(12, model.num_tokens)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full[:, model.prefix_length :])


def test_forward_counts_passes_and_prefills_without_a_cache():
    model = tiny()
    held = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(2))
    cached, plain = decoder(model), decoder(model, use_cache=False)
    assert plain.cache is None
    with torch.no_grad():
        cached.forward(held[:, :4], 0)  # the prefill of slots 0 ... 3
        stepped, recomputed = cached.forward(held, 4), plain.forward(held, 4)
    assert stepped.shape == recomputed.shape == (3, 5, 32)
    torch.testing.assert_close(stepped, recomputed)
    assert (cached.forward_passes, plain.forward_passes) == (2, 1)


def test_verify_keeps_agreeing_proposals_and_the_first_own_choice():
    model = tiny(num_predict=3)
    dec = decoder(model)
    h = torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        choices = model.head(h).argmax(-1)  # greedy: the main head's tokens
        assert torch.equal(dec.verify(h, 0, choices[:, :0]), choices[:, :1])
        assert torch.equal(dec.verify(h, 0, choices), choices)
        assert torch.equal(dec.verify(h[:, :2], 0, choices[:, :2]), choices[:, :2])  # at most F + 1 tokens
        wrong = choices.clone()
        wrong[1, 1] = (wrong[1, 1] + 1) % 50  # one row disagrees at the second proposal
        assert torch.equal(dec.verify(h, 0, wrong), choices[:, :2])


def test_propose_uses_the_extra_heads_up_to_the_grids_end():
    model = tiny(num_predict=3)
    last = torch.randn(3, 32)
    with torch.no_grad():
        dec = decoder(model, num_predict=3)
        assert dec.propose(last, 0).shape == (3, 2)
        assert torch.equal(dec.propose(last, 0)[:, 1], model.extra_heads[1](last).argmax(-1))
        assert dec.propose(last, model.num_tokens - 1).shape == (3, 1)
        assert dec.propose(last, model.num_tokens).shape == (3, 0)
        assert decoder(model, num_predict=1).propose(last, 0).shape == (3, 0)


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("use_cache", [True, False])
def test_decoder_reproduces_generate(scale, temperature, use_cache):
    model = tiny(num_predict=3)
    labels = torch.arange(3)
    tokens, stats = model.generate(
        labels,
        guidance_scale=scale,
        temperature=temperature,
        top_k=10,
        generator=torch.Generator().manual_seed(5),
        use_cache=use_cache,
        return_stats=True,
    )
    prefix = guided_prefix(model, labels, None, scale)
    gen = torch.Generator().manual_seed(5)
    sampler = TokenSampler(model.num_tokens, prefix.guided, scale, temperature=temperature, top_k=10, generator=gen)
    dec = TokenDecoder(model, prefix, sampler, num_predict=3, use_cache=use_cache)
    with torch.no_grad():
        flat = dec.decode()
    assert torch.equal(flat.view(3, 4, 5), tokens)
    assert stats == {"forward_passes": dec.forward_passes}
