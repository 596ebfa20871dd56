"""Selection functions and the method table on small hand-made inputs: exact picks, original order, budgets and
masks."""

from dataclasses import fields

import pytest
import torch

from pruning import (
    METHODS,
    PruningMethod,
    importance_scores,
    indices_to_mask,
    k_center,
    max_min_diversity,
    mmr,
    random_selection,
    selection,
    topk_importance,
)
from pruning.methods import TABLE, MethodRow

# five 2D directions: 0 and 1 nearly equal, 2 and 4 nearly equal, 3 opposite to 0
FEATS = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.1, 0.9]]])
SCORES = torch.tensor([[1.0, 0.9, 0.5, 0.1, 0.4]])


def test_topk_importance_keeps_order_and_budget():
    assert topk_importance(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 2).tolist() == [[1, 3]]


def test_topk_importance_per_sample_budgets_and_mask():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.9]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    picks = topk_importance(scores, torch.tensor([1, 3]), mask)
    assert picks.tolist() == [[1, -1, -1], [0, 1, 2]]  # masked token 3 never picked; short rows padded with -1


def test_budget_larger_than_valid_tokens_is_clamped():
    mask = torch.tensor([[True, False, True, False, False]])
    assert topk_importance(SCORES, 4, mask).tolist() == [[0, 2]]


def test_mmr_trades_importance_for_diversity():
    # pure importance takes 0 and 1 (near duplicates); at λ=0.5 the opposite token 3 replaces 1, then comes 2
    assert mmr(FEATS, SCORES, 2, lam=1.0).tolist() == [[0, 1]]
    assert mmr(FEATS, SCORES, 2, lam=0.5).tolist() == [[0, 3]]
    assert mmr(FEATS, SCORES, 3, lam=0.5).tolist() == [[0, 2, 3]]


def test_mmr_respects_mask():
    mask = torch.tensor([[False, True, True, True, True]])
    assert mmr(FEATS, SCORES, 2, lam=0.5, mask=mask).tolist() == [[1, 3]]


def test_k_center_starts_at_pivot_then_spreads():
    # pivot = most important (0); farthest from it = 3; then the token least similar to {0, 3} = 2 (tie with 4 -> 2)
    assert k_center(FEATS, 3, importance=SCORES).tolist() == [[0, 2, 3]]
    # default pivot: most similar to the mean feature, here token 4
    assert k_center(FEATS, 3).tolist() == [[0, 3, 4]]


def test_k_center_max_sum_objective():
    # after pivot 0: summed similarity to {0} is lowest for 3; then to {0, 3}: 2 and 4 are ~0 and 1 is ~-0.1 -> 1
    assert k_center(FEATS, 3, importance=SCORES, objective="max_sum").tolist() == [[0, 1, 3]]
    with pytest.raises(ValueError, match="max_min"):
        k_center(FEATS, 2, objective="mean")


def test_max_min_diversity_first_pick_is_most_isolated():
    # token 3 is the farthest from its nearest neighbour; then 2 (or 4) is farthest from 3
    assert max_min_diversity(FEATS, 1).tolist() == [[3]]
    assert max_min_diversity(FEATS, 3).tolist() == [[0, 2, 3]]


def test_batched_selection_matches_per_sample():
    torch.manual_seed(0)
    feats = torch.randn(3, 12, 8)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False
    k = torch.tensor([4, 2, 6])
    imp = importance_scores(feats, "mean", mask)
    for fn in (
        lambda f, kk, m, i: k_center(f, kk, m, i),
        lambda f, kk, m, i: mmr(f, i, kk, 0.5, m),
        lambda f, kk, m, i: max_min_diversity(f, kk, m),
    ):
        batched = fn(feats, k, mask, imp)
        for b in range(3):
            n = int(mask[b].sum())
            alone = fn(feats[b : b + 1, :n], int(k[b]), None, imp[b : b + 1, :n])[0]
            assert batched[b, : int(k[b])].tolist() == alone.tolist()
            assert (batched[b, int(k[b]) :] == -1).all()
            assert alone.diff().gt(0).all()


def test_random_is_seeded_and_masked():
    mask = torch.tensor([[True, False, True, True, True, False]])
    a = random_selection(6, 3, mask, generator=torch.Generator().manual_seed(7))
    b = random_selection(6, 3, mask, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert set(a[0].tolist()) <= {0, 2, 3, 4} and a.diff().gt(0).all()


def test_importance_sources():
    feats = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    assert importance_scores(feats, "norm").tolist() == [[5.0, 1.0, 2.0]]
    ref = importance_scores(feats, "reference", reference=torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(ref, torch.tensor([[0.8, 0.0, 1.0]]))
    mean = importance_scores(feats, "mean", mask=torch.tensor([[False, True, False]]))
    torch.testing.assert_close(mean, torch.tensor([[0.6, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="accepted: mean, norm, reference"):
        importance_scores(feats, "cls")


def test_indices_to_mask():
    assert indices_to_mask(torch.tensor([[0, 2, -1]]), 4).tolist() == [[True, False, True, False]]


def brute_force_greedy(feats, k, first, objective):
    """Reference: recompute the objective from scratch for every candidate at every step."""
    unit = torch.nn.functional.normalize(feats.double(), dim=-1)
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(len(unit)) if i not in chosen]
        sims = [(unit[i] @ unit[chosen].T) for i in rest]
        cost = [float(s.max() if objective == "max_min" else s.sum()) for s in sims]
        chosen.append(rest[min(range(len(rest)), key=cost.__getitem__)])
    return sorted(chosen)


@pytest.mark.parametrize("objective", ["max_sum", "max_min"])
def test_greedy_objectives_match_brute_force(objective):
    g = torch.Generator().manual_seed(3)
    for trial in range(6):
        feats = torch.randn(1, 20, 6, generator=g)
        imp = torch.rand(1, 20, generator=g)
        k = 3 + trial
        expected = brute_force_greedy(feats[0], k, int(imp.argmax()), objective)
        assert k_center(feats, k, importance=imp, objective=objective)[0].tolist() == expected


@pytest.mark.parametrize("shape", [(2, 40, 16), (1, 300, 64)])
def test_row_by_row_similarity_equals_the_matrix(monkeypatch, shape):
    """Greedy loops gather similarity rows from the whole matrix or compute one per pick: same picks either way."""
    torch.manual_seed(0)
    b, n, _ = shape
    feats, imp = torch.randn(shape), torch.rand(b, n)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, n - 10 :] = False
    runs = {
        "max_min": lambda: k_center(feats, n // 4, mask, imp),
        "max_sum": lambda: k_center(feats, n // 4, mask, imp, "max_sum"),
        "mmr": lambda: mmr(feats, imp, n // 4, 0.5, mask),
    }
    picks = {}
    for matrix in (True, False):
        monkeypatch.setattr(selection, "_use_matrix", lambda *a, matrix=matrix: matrix)
        picks[matrix] = {name: run() for name, run in runs.items()}
    for name in runs:
        assert torch.equal(picks[True][name], picks[False][name]), name


def test_method_budgets():
    method = PruningMethod.create("todre-maxmin", 0.25)
    assert method.budget(torch.tensor([576, 3, 0])).tolist() == [144, 1, 0]
    assert method.budget(torch.tensor([144]), method.relevance_keep).tolist() == [72]


def test_every_row_is_a_valid_method():
    options = {f.name for f in fields(PruningMethod)} - {"name", "keep_ratio"}
    feats = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    for name, row in TABLE.items():
        assert row.before_llm or row.in_decoder, name
        assert set(row.defaults) <= options, name
        assert not PruningMethod.create(name, 1.0).prunes_before_llm
        assert not PruningMethod.create(name, 1.0).prunes_in_decoder
        method = PruningMethod.create(name, 0.5)
        assert (method.prunes_before_llm, method.prunes_in_decoder) == (bool(row.before_llm), bool(row.in_decoder))
        if row.before_llm:
            picked = method.select_before_llm(feats, valid)  # budgets 3 and 2
            assert (picked >= 0).sum(1).tolist() == [3, 2]
            assert valid.gather(1, picked.clamp(min=0))[picked >= 0].all()


def test_builtin_rows_stages_and_layers():
    stages = {
        n: (PruningMethod.create(n, 0.5).prunes_before_llm, PruningMethod.create(n, 0.5).prunes_in_decoder)
        for n in METHODS
    }
    assert stages == {
        "todre": (True, True),
        "todre-maxmin": (True, True),
        "idpruner": (True, False),
        "random": (True, False),
        "importance": (True, False),
        "divprune": (True, False),
        "fastv": (False, True),
    }
    todre = PruningMethod.create("todre", 0.5)
    assert (todre.diversity, todre.pivot, todre.relevance_threshold) == ("max_sum", "cls", 0.10)
    variant = PruningMethod.create("todre-maxmin", 0.5)
    assert (variant.diversity, variant.pivot, variant.relevance_keep) == ("max_min", "norm", 0.5)
    assert todre.decoder_layer(32) == todre.scoring_layer(32) == 28  # 7/8 of the depth
    fastv = PruningMethod.create("fastv", 0.5)
    assert (fastv.decoder_layer(32), fastv.scoring_layer(32)) == (2, 1)  # prunes the input of K from K-1's attention
    assert PruningMethod.create("fastv", 0.5, layer=5).decoder_layer(32) == 5


def test_builtin_rows_call_their_selection():
    valid = torch.ones(1, 5, dtype=torch.bool)
    imp = importance_scores(FEATS, "norm", valid)
    mean = importance_scores(FEATS, "mean", valid)
    expected = {
        "todre": k_center(FEATS, 3, valid, mean, "max_sum"),  # no [CLS] attention given: pivot most like the mean
        "todre-maxmin": k_center(FEATS, 3, valid, imp),
        "idpruner": mmr(FEATS, imp, 3, 0.5, valid),
        "random": random_selection(5, 3, valid, generator=torch.Generator().manual_seed(0)),
        "importance": topk_importance(imp, 3, valid),
        "divprune": max_min_diversity(FEATS, 3, valid),
    }
    for name, picks in expected.items():
        assert torch.equal(PruningMethod.create(name, 0.6).select_before_llm(FEATS, valid), picks), name


def test_todre_pivot_is_the_cls_argmax_with_a_fallback():
    valid = torch.ones(2, 5, dtype=torch.bool)
    feats = FEATS.expand(2, -1, -1)
    cls = torch.full((2, 5), float("-inf"))
    cls[0, 1] = 0.3  # sample 0: [CLS] attention found on token 1; sample 1: none, so similarity to the mean
    method = PruningMethod.create("todre", 0.6)
    picks = method.select_before_llm(feats, valid, cls_attention=cls)
    mean = importance_scores(FEATS, "mean")
    assert picks[0].tolist() == k_center(FEATS, 3, importance=torch.eye(5)[1:2], objective="max_sum")[0].tolist()
    assert picks[1].tolist() == k_center(FEATS, 3, importance=mean, objective="max_sum")[0].tolist()


def test_custom_importance_scorer():
    """A scorer (callable or nn.Module) replaces the training-free importance: here it ranks the last tokens first."""

    class Last(torch.nn.Module):
        def forward(self, features, valid):
            return torch.arange(features.shape[1], dtype=torch.float).expand(valid.shape)

    valid = torch.ones(1, 5, dtype=torch.bool)
    default = PruningMethod.create("idpruner", 0.4).select_before_llm(FEATS, valid)
    for scorer in (Last(), lambda f, v: torch.arange(f.shape[1], dtype=torch.float).expand(v.shape)):
        top = PruningMethod.create("importance", 0.4, importance=scorer).select_before_llm(FEATS, valid)
        assert top.tolist() == [[3, 4]]
        picks = PruningMethod.create("idpruner", 0.4, importance=scorer).select_before_llm(FEATS, valid)
        assert torch.equal(picks, mmr(FEATS, torch.arange(5.0)[None], 2, 0.5))
        assert not torch.equal(picks, default)
    wrong = PruningMethod.create("importance", 0.4, importance=lambda f, v: f.sum(-1)[:, :2])
    with pytest.raises(ValueError, match="returned"):
        wrong.select_before_llm(FEATS, valid)


def test_unknown_names_and_options_are_refused():
    with pytest.raises(ValueError, match="accepted: todre, todre-maxmin, idpruner, .*fastv"):
        PruningMethod.create("todre-v2", 0.5)
    with pytest.raises(ValueError, match="accepted: diversity, importance, .*pivot, .*relevance_threshold, seed"):
        PruningMethod.create("todre", 0.5, tau=0.1)
    for option, value in (("pivot", "first"), ("diversity", "max_mean"), ("importance", "cls")):
        with pytest.raises(ValueError, match=f"unknown {option}"):
            PruningMethod.create("todre", 0.5, **{option: value})


def test_new_row_works_through_pruning_method(monkeypatch):
    def first_k(method, features, k, valid, ctx):  # the first k valid tokens
        return topk_importance(-torch.arange(features.shape[1], dtype=torch.float).expand(valid.shape), k, valid)

    def drop_all(method, layer, hidden, rotary, real, visual):
        return torch.zeros_like(visual)

    row = MethodRow(before_llm=first_k, in_decoder=drop_all, defaults={"layer": 1, "seed": 5})
    monkeypatch.setitem(TABLE, "first", row)
    method = PruningMethod.create("first", 0.4)
    assert method.prunes_before_llm and method.prunes_in_decoder
    assert (method.layer, method.seed, method.mmr_lambda) == (1, 5, 0.5)  # row defaults, then the global ones
    assert PruningMethod.create("first", 0.4, layer=3).decoder_layer(4) == 3  # the caller's option wins
    assert method.select_before_llm(FEATS, torch.ones(1, 5, dtype=torch.bool)).tolist() == [[0, 1]]
    visual = torch.tensor([[False, True, True]])
    assert not method.keep_in_decoder(None, None, None, visual, visual).any()
    with pytest.raises(ValueError, match="accepted: todre, .*, fastv, first"):
        PruningMethod.create("last", 0.4)
