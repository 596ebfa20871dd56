import pytest
import torch

from tokenizers_vis.quantizers import QUANTIZERS, build_quantizer, code_histogram, usage_stats

CASES = {
    "vq": dict(codebook_size=64),
    "rvq": dict(codebook_size=64, num_quantizers=3),
    "fsq": dict(levels=[4, 4, 3]),
    "lfq": dict(codebook_size=64),
}


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_shapes_and_index_round_trip(kind):
    torch.manual_seed(0)
    kwargs = dict(CASES[kind])
    q = build_quantizer(kind, dim=16, **kwargs)
    z = torch.randn(3, 20, 16)
    q.train()
    q(z)  # first call initialises k-means codebooks
    q.eval()
    out = q(z)
    assert out.quantized.shape == z.shape
    expected_idx = (3, 20, 3) if kind == "rvq" else (3, 20)
    assert tuple(out.indices.shape) == expected_idx
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size
    assert out.aux_loss.ndim == 0
    assert 0 < out.usage <= 1 and 1 <= out.perplexity <= q.codebook_size
    # the indices alone give back exactly the quantized vectors
    torch.testing.assert_close(q.codes(out.indices), out.quantized, rtol=0, atol=1e-6)


def test_codebook_sizes():
    assert build_quantizer("fsq", 8, levels=[8, 5, 5, 5]).codebook_size == 1000
    assert build_quantizer("lfq", 8, codebook_size=256).codebook_size == 256


def test_gradients_reach_the_input():
    for kind in QUANTIZERS:
        q = build_quantizer(kind, 8, **CASES[kind]).train()
        z = torch.randn(2, 10, 8, requires_grad=True)
        out = q(z)
        (out.quantized.sum() + out.aux_loss).backward()
        assert z.grad is not None and z.grad.abs().sum() > 0, kind


def test_usage_stats_exact():
    counts = code_histogram(torch.tensor([[0, 0, 1, 3]]), 8)
    usage, ppl = usage_stats(counts)
    assert usage == pytest.approx(3 / 8)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert ppl == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def test_bad_input_refused():
    with pytest.raises(ValueError, match="accepted: vq, rvq, fsq, lfq"):
        build_quantizer("pq", 8)
    with pytest.raises(ValueError, match="power-of-two"):
        build_quantizer("lfq", 8, codebook_size=100)
    q = build_quantizer("vq", 8, codebook_size=16)
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        q(torch.randn(2, 8, 4, 4))
