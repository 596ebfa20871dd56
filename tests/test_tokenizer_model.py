import json

import pytest
import torch

from tokenizers_vis import create_tokenizer, list_tokenizers, load_tokenizer


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 64, 64) * 2 - 1


@pytest.mark.parametrize("quantizer", ["vq", "rvq", "fsq", "lfq"])
def test_encode_decode_shapes(images, quantizer):
    extra = {"quantizer_kwargs": {"levels": [4, 4, 4]}} if quantizer == "fsq" else {}
    model = create_tokenizer("vq-f8-tiny", quantizer_type=quantizer, **extra)
    model.train()
    model(images)
    model.eval()
    idx = model.encode(images)
    assert idx.shape[:3] == (2, 8, 8) and idx.dtype == torch.long
    assert model.decode(idx).shape == images.shape
    recon, losses = model(images)
    assert recon.shape == images.shape
    assert {"loss", "recon", "quantizer", "usage", "perplexity"} <= set(losses)
    assert losses["loss"].requires_grad


def test_f16_grid():
    model = create_tokenizer("vq-f16", channels=(8, 8, 8, 8), norm_groups=4, codebook_size=32).eval()
    assert model.encode(torch.zeros(1, 3, 64, 96)).shape == (1, 4, 6)


def test_decode_of_encode_matches_forward(images):
    model = create_tokenizer("vq-f8-tiny").eval()
    recon, _ = model(images)
    torch.testing.assert_close(model.decode(model.encode(images)), recon, rtol=1e-5, atol=1e-5)


def test_save_load_identical(tmp_path, images):
    model = create_tokenizer("vq-f8-tiny", quantizer_type="rvq")
    model.train()
    model(images)  # k-means init changes the codebook buffers, which must be saved too
    model.eval()
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["quantizer_type"] == "rvq"
    loaded = load_tokenizer(tmp_path / "tok").eval()
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


def test_bad_input_refused(tmp_path):
    model = create_tokenizer("vq-f8-tiny").eval()
    with pytest.raises(ValueError, match="divisible by 8"):
        model.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="available: "):
        create_tokenizer("no-such-preset")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="downsample_factor"):
        create_tokenizer("vq-f8", downsample_factor=12)
    assert "vq-f8" in list_tokenizers()
