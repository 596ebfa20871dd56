"""The field's standard sizes as presets: LlamaGen's VQ-16 / VQ-8 tokenizers and its class-conditional GPT-B, GPT-L
and GPT-XL (FoundationVision/LlamaGen, ``tokenizer/tokenizer_image/vq_model.py`` and ``autoregressive/models/gpt.py``
at commit ce98ec4).

Reference counts: "published" is the size the LlamaGen paper and the comments beside its model builders give;
"exact" was counted by building LlamaGen's own ``VQ_16()`` / ``VQ_8()`` / ``GPT_B()`` / ``GPT_L()`` / ``GPT_XL()``
(c2i, vocabulary 16384, 1000 classes) and summing their parameters. The exact GPT counts are also what LLaMA's
arithmetic gives: 2 * 16384 * dim (token table, untied head) + 1001 * dim (class table with the null row)
+ depth * (4 * dim^2 + 3 * dim * hidden + 2 * dim) + dim, with hidden = int(8 * dim / 3) rounded up to 256.

Large models are built on the meta device: shapes and counts without allocating or initialising weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generators import create_generator, load_generator
from generators.transformer import mlp_hidden_size
from tokenizers_vis import ImageTokenizer, create_tokenizer, load_tokenizer
from tokenizers_vis.convnets import AttnBlock, Downsample, ResBlock, Upsample

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.03

# preset -> (published, exact count from LlamaGen's config)
TOKENIZERS = {
    "llamagen-vq16": (72_000_000, 71_883_403),  # the paper's 72M
    "llamagen-vq8": (70_109_835, 70_109_835),  # no rounded figure published: the exact count stands in
}
# preset -> (dim, depth, heads, SwiGLU hidden, published, exact count from LlamaGen's config)
GPTS = {
    "gpt-b": (768, 12, 12, 2048, 111_000_000, 110_888_448),
    "gpt-l": (1024, 24, 16, 2816, 343_000_000, 342_910_976),
    "gpt-xl": (1280, 36, 20, 3584, 775_000_000, 774_699_520),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def modules_of(module: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("preset", TOKENIZERS)
def test_tokenizer_parameter_count_matches_llamagen(preset):
    published, exact = TOKENIZERS[preset]
    with torch.device("meta"):
        model = create_tokenizer(preset)
    # our cosine codebook is an EMA buffer (vector-quantize-pytorch keeps it out of the parameters), LlamaGen's an
    # nn.Embedding: count its codebook_size x embed_dim entries too
    count = n_params(model) + model.codebook_size * model.config.embed_dim
    assert count == exact
    assert abs(count - published) / published < TOLERANCE


def test_vq16_has_llamagens_layers():
    with torch.device("meta"):
        model = create_tokenizer("llamagen-vq16")
    enc, dec = model.encoder, model.decoder
    assert model.codebook_size == 16384 and model.config.embed_dim == 8
    assert model.quantizer.impl.use_cosine_sim  # l2-normalised codes
    assert tuple(model.quant_conv.weight.shape) == (8, 256, 1, 1)
    assert tuple(model.post_quant_conv.weight.shape) == (256, 8, 1, 1)
    # encoder: 5 levels x 2 residual blocks + 2 in the middle; attention twice at 16x16 and once in the middle
    assert (modules_of(enc, ResBlock), modules_of(enc, AttnBlock), modules_of(enc, Downsample)) == (12, 3, 4)
    # decoder: 2 in the middle + 5 levels x 3; attention in the middle and thrice at 16x16
    assert (modules_of(dec, ResBlock), modules_of(dec, AttnBlock), modules_of(dec, Upsample)) == (17, 4, 4)
    assert tuple(enc.layers[0].weight.shape) == (128, 3, 3, 3) and tuple(enc.layers[-1].weight.shape) == (
        256,
        512,
        3,
        3,
    )
    assert tuple(dec.layers[0].weight.shape) == (512, 256, 3, 3) and tuple(dec.last_layer.shape) == (3, 128, 3, 3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)


@pytest.mark.parametrize(
    ("preset", "size", "grid"), [("llamagen-vq16", 256, 16), ("llamagen-vq16", 384, 24), ("llamagen-vq8", 256, 32)]
)
def test_token_grid_per_resolution(preset, size, grid):
    with torch.device("meta"):
        model = create_tokenizer(preset)
        z = model.quant_conv(model.encoder(torch.empty(1, 3, size, size)))
    assert tuple(z.shape) == (1, 8, grid, grid)  # VQ-16: 256 tokens at 256 px, 576 at 384 px


def test_small_taming_tokenizer_round_trips(tmp_path):
    """The taming layout with separate latent and code widths at a CPU-friendly size: encode / decode agree with
    forward, every weight learns, and the config (with its new keys) survives save / load."""
    torch.manual_seed(0)
    model = ImageTokenizer(
        layout="taming",
        downsample_factor=4,
        channels=(16, 16, 32),
        norm_groups=8,
        encoder_res_blocks=1,
        decoder_res_blocks=2,
        latent_channels=16,
        embed_dim=4,
        codebook_size=32,
    )
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    _, losses = model(images)  # training mode: the k-means init sets the codebook
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    assert model.quant_conv.weight.grad.abs().sum() > 0 and model.post_quant_conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        indices = model.encode(images)
        recon, _ = model(images)
        assert tuple(indices.shape) == (2, 8, 8)
        torch.testing.assert_close(model.decode(indices), recon)
        model.save_pretrained(tmp_path)
        loaded = load_tokenizer(tmp_path)
        assert (loaded.config.layout, loaded.config.latent_channels) == ("taming", 16)
        torch.testing.assert_close(loaded.decode(indices), recon)


@pytest.mark.parametrize("preset", GPTS)
@pytest.mark.parametrize("grid", [(16, 16), (24, 24)], ids=["256px", "384px"])
def test_gpt_parameter_count_matches_llamagen(preset, grid):
    dim, depth, heads, hidden, published, exact = GPTS[preset]
    with torch.device("meta"):
        model = create_generator(preset, grid_size=grid)
    cfg = model.config
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.codebook_size, cfg.num_classes) == (dim, depth, heads, 16384, 1000)
    assert cfg.condition == "class" and model.prefix_length == 1
    assert model.num_tokens == math.prod(grid) == {(16, 16): 256, (24, 24): 576}[grid]
    assert model.transformer.blocks[0].mlp.down.in_features == hidden
    assert model.transformer.norm.eps == 1e-5 and model.class_embed.num_embeddings == 1001
    count = n_params(model)
    # LlamaGen's layout (no start token, no target-position embeddings); beyond it only our token table's mask row
    assert cfg.layout == "llamagen" and model.target_pos is None
    assert count - dim == exact
    assert abs(count - published) / published < TOLERANCE


def test_swiglu_width_rules():
    assert mlp_hidden_size(1024) == 2720 and mlp_hidden_size(1280) == 3424  # ours: nearest multiple of 32
    assert mlp_hidden_size(1024, multiple_of=256) == 2816 and mlp_hidden_size(1280, multiple_of=256) == 3584
    assert mlp_hidden_size(768) == mlp_hidden_size(768, multiple_of=256) == 2048


@pytest.mark.parametrize("part", ["tokenizer", "generator"])
def test_shipped_models_keep_their_weights(part):
    """Configs saved before the new options rebuild exactly the saved weights: no quant convs, the old widths."""
    folder = ROOT / "assets" / "pipeline" / part
    model = (load_tokenizer if part == "tokenizer" else load_generator)(folder)
    saved = load_file(folder / "diffusion_pytorch_model.safetensors")
    built = model.state_dict()
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(built[k].shape) for k in saved}
    assert set(dict(model.named_parameters())) <= set(saved)
    if part == "generator":
        assert model.transformer.norm.eps == 1e-6


@pytest.mark.slow  # 1-2 minutes on one CPU thread: backward through full-resolution 128-channel convolutions
def test_vq16_training_step_at_256px():
    torch.manual_seed(0)
    model = create_tokenizer("llamagen-vq16").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    recon, losses = model(images)
    losses["loss"].backward()
    opt.step()
    assert tuple(recon.shape) == (1, 3, 256, 256) and losses["loss"].isfinite()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    # the gradient crosses the quantizer: the encoder's first conv learns, not only the decoder
    for weight in (model.encoder.layers[0].weight, model.quant_conv.weight, model.decoder.last_layer):
        assert weight.grad.abs().sum() > 0


@pytest.mark.slow  # 7-20 seconds on one CPU thread
def test_gpt_b_training_step():
    torch.manual_seed(0)
    model = create_generator("gpt-b").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 16384, (1, 16, 16))
    loss = model.loss(tokens, torch.tensor([207]))
    loss.backward()
    opt.step()
    assert abs(loss.item() - math.log(16384)) < 0.5  # near-uniform logits over the 16384 codes at initialisation
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
