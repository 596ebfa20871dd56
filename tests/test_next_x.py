"""Next-X generation: entities, the flow-matching head and the generator."""

from __future__ import annotations

import pytest
import torch

from generators.entities import ENTITIES, block_causal_mask, make_entity
from generators.flow_head import FlowHead
from generators.next_x import NextXGenerator

ENTITY_CASES = [("token", 2), ("cell", 2), ("cell", 4), ("subsample", 2), ("scale", 2), ("image", 2)]


# ---- entities ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "k"), ENTITY_CASES)
def test_entity_round_trip(kind, k):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, 8)
    ents = make_entity(kind, (8, 8), k)
    seq = ents.split(x)
    assert seq.shape == (2, ents.length, 5)
    assert sum(ents.sizes) == ents.length == ents.offsets[-1] and len(ents.sizes) == ents.num_entities
    assert ents.positions.shape == (ents.length, 2) and ents.positions.dtype == torch.long
    assert 0 <= ents.positions.min() and ents.positions.max() < 8
    if kind == "scale":
        torch.testing.assert_close(ents.merge(seq), x, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(ents.merge(seq), x)


def test_entity_layouts():
    def first(kind, **kw):
        ents = make_entity(kind, (4, 4), **kw)
        return ents.num_entities, sorted(map(tuple, ents.positions[: ents.sizes[0]].tolist()))

    assert first("token") == (16, [(0, 0)])
    assert first("cell", k=2) == (4, [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert first("subsample", k=2) == (4, [(0, 0), (0, 2), (2, 0), (2, 2)])
    assert first("image")[0] == 1
    scale = make_entity("scale", (4, 4))
    assert scale.sizes == (1, 4, 16)
    assert scale.positions[0].tolist() == [2, 2]  # the 1x1 scale sits at the grid's centre
    assert make_entity("scale", (4, 8), scales=(1, 4)).sizes == (2, 32)


@pytest.mark.parametrize(("kind", "k"), ENTITY_CASES)
def test_context_inputs_are_causal(kind, k):
    torch.manual_seed(0)
    ents = make_entity(kind, (8, 8), k)
    seq = torch.randn(2, ents.length, 3)
    base = ents.context_inputs(seq)
    assert base.shape == seq.shape
    assert torch.equal(base[:, : ents.sizes[0]], torch.zeros_like(base[:, : ents.sizes[0]]))
    for e in range(ents.num_entities):
        start, end = ents.offsets[e], ents.offsets[e + 1]
        changed = seq.clone()
        changed[:, start:end] += 1.0 + torch.rand_like(changed[:, start:end])
        out = ents.context_inputs(changed)
        assert torch.equal(out[:, :end], base[:, :end])  # entities <= e never see entity e
        if e + 1 < ents.num_entities:
            assert not torch.allclose(out[:, end:], base[:, end:])  # the next one does
    levels = torch.rand(2, ents.num_entities)
    assert ents.context_levels(levels).shape == (2, ents.length)


def test_block_causal_mask():
    ents = make_entity("cell", (4, 4), 2)
    mask = block_causal_mask(ents, prefix_length=2)
    assert mask.shape == (18, 18)
    assert mask[:2, :2].all() and not mask[:2, 2:].any()  # the prefix sees only itself
    assert mask[2:6, :6].all() and not mask[2:6, 6:].any()  # entity 0: prefix + itself
    assert mask[-1].all()  # the last entity sees everything


def test_bad_entities_refused():
    with pytest.raises(ValueError, match="accepted: token, cell"):
        make_entity("patch", (8, 8))
    with pytest.raises(ValueError, match="accepted k: 1, 2, 4, 8"):
        make_entity("cell", (8, 8), k=3)
    with pytest.raises(ValueError, match="must increase and end at the grid height 8"):
        make_entity("scale", (8, 8), scales=(1, 2, 4))
    assert set(ENTITIES) == {"token", "cell", "subsample", "scale", "image"}


# ---- flow head ---------------------------------------------------------------------------------------------------


def random_head() -> FlowHead:
    torch.manual_seed(0)
    head = FlowHead(8, 3, width=16, depth=2)
    with torch.no_grad():  # leave adaLN-Zero's zero init so the velocity depends on the inputs
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head


def test_flow_head_sampling_is_seeded():
    head = random_head()
    z, z_null = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    a = head.sample(z, steps=4, generator=torch.Generator().manual_seed(0))
    b = head.sample(z, steps=4, generator=torch.Generator().manual_seed(0))
    c = head.sample(z, steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 5, 3)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    guided = head.sample(z, z_null, guidance_scale=3.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert guided.shape == (2, 5, 3) and not torch.allclose(guided, a)
    cold = head.sample(z, steps=4, temperature=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold, head.sample(z, steps=4, temperature=0.0))  # no noise, no randomness


def test_flow_head_fits_a_fixed_target():
    torch.manual_seed(0)
    head = FlowHead(8, 3, width=32, depth=2)
    z, x0 = torch.randn(16, 8), torch.randn(16, 3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = head.loss(z, x0, repeats=4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


# ---- generator ---------------------------------------------------------------------------------------------------

GRIDS = torch.randint(0, 16, (2, 4, 4), generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1])


def tiny(entity: str = "cell", **kw) -> NextXGenerator:
    torch.manual_seed(0)
    args = dict(grid_size=(4, 4), latent_dim=4, entity=entity, k=2, dim=32, depth=1, heads=2, condition="class")
    args |= dict(num_classes=2, head_width=32, head_depth=2, flow_steps=6)
    model = NextXGenerator(16, **(args | kw))
    model.set_codebook(torch.randn(16, 4))
    return model


def train(fit, model: NextXGenerator, steps: int) -> NextXGenerator:
    """Fits class c -> GRIDS[c]."""
    labels = LABELS.repeat(4)
    fit(model, lambda: (GRIDS[labels], labels), steps, 1e-2, weight_decay=0.0)
    return model.eval()


def test_noisy_context_training_step():
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):  # adaLN-Zero: the head's output, then its modulation, must move before the condition matters
        opt.zero_grad()
        loss = model(GRIDS, LABELS)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
    assert model.in_proj.weight.grad.abs().sum() > 0
    assert model(GRIDS, LABELS, return_loss=False).shape == (2, model.entities.length, 32)


def test_overfits_two_classes(fit):
    model = train(fit, tiny("cell"), 300)
    out = model.generate(LABELS, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 4) and out.dtype == torch.long
    assert (out == GRIDS).float().mean() >= 0.9


@pytest.mark.parametrize("entity", ENTITIES)
def test_every_entity_trains_and_samples(entity, fit):
    model = train(fit, tiny(entity), 1)
    assert model.num_entities == model.entities.num_entities
    out = model.generate(LABELS, guidance_scale=1.5, generator=torch.Generator().manual_seed(0), flow_steps=2)
    assert out.shape == (2, 4, 4) and out.dtype == torch.long
    assert 0 <= out.min() and out.max() < 16


@pytest.mark.parametrize("entity", ["cell", "scale"])
def test_cache_matches_full_recompute(entity, fit):
    model = train(fit, tiny(entity), 20)
    kw = dict(guidance_scale=2.0, guidance_schedule="linear", flow_steps=3)
    cached = model.generate(LABELS, generator=torch.Generator().manual_seed(0), **kw)
    full = model.generate(LABELS, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.equal(cached, full)


def test_token_sampling_settings_refused():
    model = tiny().eval()
    with pytest.raises(ValueError, match="do not apply"):
        model.generate(LABELS, top_k=5)
    with pytest.raises(ValueError, match="do not apply"):
        model.generate(LABELS, top_p=0.9)


def test_codebook_required():
    model = NextXGenerator(16, grid_size=(4, 4), latent_dim=4, dim=32, depth=1, heads=2, condition="none")
    with pytest.raises(ValueError, match="set_codebook"):
        model(GRIDS)
    with pytest.raises(ValueError, match="codes must have shape"):
        model.set_codebook(torch.randn(16, 5))


def test_save_load_round_trip(tmp_path, fit):
    model = train(fit, tiny("subsample"), 10)
    model.save_pretrained(tmp_path)
    loaded = NextXGenerator.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.codebook, model.codebook) and loaded.config.entity == "subsample"
    kw = dict(guidance_scale=2.0, flow_steps=3)
    a = model.generate(LABELS, generator=torch.Generator().manual_seed(0), **kw)
    b = loaded.generate(LABELS, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b)
