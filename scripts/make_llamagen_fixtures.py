"""Write the LlamaGen reference fixtures of tests/test_llamagen_conversion.py by running LlamaGen's own code.

    git clone https://github.com/FoundationVision/LlamaGen /tmp/LlamaGen
    python scripts/make_llamagen_fixtures.py /tmp/LlamaGen          # -> tests/fixtures/llamagen/

Builds a tiny VQ-16-layout tokenizer and a tiny class-conditional GPT with LlamaGen's classes (its
``tokenizer/tokenizer_image/vq_model.py`` and ``autoregressive/models/gpt.py``), fills them with seeded random
weights, and saves their state dicts (LlamaGen's key layout), the inputs and LlamaGen's outputs: the tokenizer's
indices and decoded pixels, the GPT's teacher-forced logits (conditional and null class) and greedy samples of
its ``autoregressive/models/generate.py::generate`` with and without classifier-free guidance (``reference.json``:
the configurations, seeds and margins). ``layouts.json`` records the key layout (names and shapes) of LlamaGen's
full-size VQ-16, VQ-8 and GPT-B / L / XL.

Nothing of LlamaGen's is imported by the project or its tests: only these files are committed. The one change made
to LlamaGen's code at run time: its ``Normalize`` hard-codes 32 GroupNorm groups, more than the tiny tokenizer's
4-channel levels have, so the tiny tokenizer uses 4 groups (our ``norm_groups=4``); the full-size layouts are built
unchanged. Random weights are redrawn (next seed) until every nearest-code and greedy-logit margin (best minus
second best) exceeds ``MIN_MARGIN``, so float rounding between two implementations cannot flip an exact comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MIN_MARGIN = 1e-3
GROUPS = 4
# the tiny tokenizer: VQ-16's five levels and block counts at widths 4..16, 64 codes of dimension 4; 48 px images
VQ = dict(ch=4, ch_mult=[1, 1, 2, 2, 4], z_channels=8, codebook_size=64, codebook_embed_dim=4)
IMAGE_SIZE = 48
# the tiny GPT: 2 layers of width 32, 2 heads, 64 codes, 10 classes, a 6x6 grid
GPT = dict(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=64, num_classes=10, block_size=36)
GUIDANCE = 4.0
LABELS = [3, 7]


def import_llamagen(checkout: Path):
    """LlamaGen's modules, imported from its checkout (its files import each other from the repository root)."""
    sys.path.insert(0, str(checkout))
    from autoregressive.models import gpt
    from autoregressive.models.generate import generate
    from tokenizer.tokenizer_image import vq_model

    return vq_model, gpt, generate


def randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Weights ~ N(0, 1 / fan_in) (embeddings N(0, 1)), biases ~ N(0, 0.1), norm scales ~ 1 + N(0, 0.1): outputs
    of order one with well separated logits, unlike LlamaGen's init (zero output head). Values are rounded to
    float16, so the state dicts are stored at half the size and still hold exactly the weights the reference ran
    with (in float32)."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=generator)
                if isinstance(module, nn.Embedding):
                    p.copy_(noise)
                elif name == "weight" and p.ndim > 1:
                    p.copy_(noise / p[0].numel() ** 0.5)
                elif name == "weight":  # norm scales
                    p.copy_(1 + 0.1 * noise)
                else:
                    p.copy_(0.1 * noise)
                p.copy_(p.half().float())


def top2_margin(scores: torch.Tensor) -> float:
    """Smallest gap between the best and second-best entry of each row."""
    top = scores.topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


def make_vq(vq_model, seed: int) -> tuple[dict, dict, float]:
    args = vq_model.ModelArgs(
        codebook_size=VQ["codebook_size"], codebook_embed_dim=VQ["codebook_embed_dim"], z_channels=VQ["z_channels"]
    )
    model = vq_model.VQModel(args)
    shape = dict(ch=VQ["ch"], ch_mult=VQ["ch_mult"], z_channels=VQ["z_channels"])
    model.encoder, model.decoder = vq_model.Encoder(**shape), vq_model.Decoder(**shape)
    randomise(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # pixels in about [-1, 1], as a trained decoder's (a power of two: still exact in float16)
        model.decoder.conv_out.weight.mul_(0.25)
        model.decoder.conv_out.bias.mul_(0.25)
    model.eval()
    size, generator = (2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, size, dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        h = model.quant_conv(model.encoder(images.float() / 127.5 - 1))
        _, _, (_, _, indices) = model.quantize(h)
        z = nn.functional.normalize(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), dim=-1)
        codes = nn.functional.normalize(model.quantize.embedding.weight, dim=-1)
        margin = top2_margin(z @ codes.T)
        grid = h.shape[-2:]
        pixels = model.decode_code(indices, (2, h.shape[1], *grid))
    # the 65536-entry record of codes used in training (zeros here) is left out: 256 KB of no weights
    state = {k: v for k, v in model.state_dict().items() if k != "quantize.codebook_used"}
    io = {"images": images, "indices": indices.view(2, *grid).long(), "pixels": pixels.contiguous()}
    return state, io, margin


def teacher_forced(model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, N, V)`` of LlamaGen's GPT for whole sequences: its training-mode forward (its one full-sequence
    path) with the label dropout off and no KV cache (``generate`` leaves one behind)."""
    for layer in model.layers:
        layer.attention.kv_cache = None
    model.train()
    dropout, model.cls_embedding.dropout_prob = model.cls_embedding.dropout_prob, 0.0
    logits = model(tokens[:, :-1], labels)[0]
    model.cls_embedding.dropout_prob = dropout
    model.eval()
    return logits


def make_gpt(gpt, generate, seed: int) -> tuple[dict, dict, float]:
    args = gpt.ModelArgs(**GPT, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, cls_token_num=1)
    model = gpt.Transformer(args).eval()
    randomise(model, torch.Generator().manual_seed(seed))
    n, labels = args.block_size, torch.tensor(LABELS)
    null = torch.full_like(labels, args.num_classes)
    tokens = torch.randint(0, args.vocab_size, (len(LABELS), n), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cond, uncond = teacher_forced(model, tokens, labels), teacher_forced(model, tokens, null)
        io = {"tokens": tokens, "labels": labels, "logits": cond, "null_logits": uncond}
        margins = [top2_margin(uncond + (cond - uncond) * GUIDANCE)]
        for name, scale in (("greedy", 1.0), ("greedy_guided", GUIDANCE)):
            sample = generate(model, labels, n, cfg_scale=scale, sample_logits=False).long()
            io[name] = sample
            c, u = teacher_forced(model, sample, labels), teacher_forced(model, sample, null)
            margins.append(top2_margin(c if scale == 1.0 else u + (c - u) * scale))
    return dict(model.state_dict()), io, min(margins)


def full_layouts(vq_model, gpt) -> dict:
    """Key -> shape of LlamaGen's full-size models, as its builders make them (class-conditional GPTs, 256 px). The
    GPTs are built on the CPU (a few GB for GPT-XL): their constructor reads a tensor's value, which meta tensors
    do not have."""
    layouts = {}
    with torch.device("meta"):
        for name in ("VQ-16", "VQ-8"):
            layouts[name] = {k: list(v.shape) for k, v in vq_model.VQ_models[name]().state_dict().items()}
    for name in ("GPT-B", "GPT-L", "GPT-XL"):
        model = gpt.GPT_models[name](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1)
        layouts[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        del model
    return layouts


def commit_of(checkout: Path) -> str | None:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkout", type=Path, help="a checkout of FoundationVision/LlamaGen (outside this project)")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "llamagen")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit", help="the checkout's LlamaGen commit, when it is not a git work tree")
    args = p.parse_args(argv)
    vq_model, gpt, generate = import_llamagen(args.checkout.resolve())
    layouts = full_layouts(vq_model, gpt)  # before the tiny tokenizer's group-count change
    vq_model.Normalize = lambda channels, norm_type="group": nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)
    torch.set_grad_enabled(False)

    for seed in range(args.seed, args.seed + 100):
        vq_state, vq_io, vq_margin = make_vq(vq_model, seed)
        if vq_margin > MIN_MARGIN:
            break
    for gpt_seed in range(args.seed, args.seed + 100):
        gpt_state, gpt_io, gpt_margin = make_gpt(gpt, generate, gpt_seed)
        if gpt_margin > MIN_MARGIN:
            break
    args.out.mkdir(parents=True, exist_ok=True)
    for name, tensors in (("vq_state", vq_state), ("gpt_state", gpt_state)):
        save_file({k: v.half() for k, v in tensors.items()}, args.out / f"{name}.safetensors")  # exact: see randomise
    for name, tensors in (("vq_io", vq_io), ("gpt_io", gpt_io)):
        save_file({k: v.contiguous() for k, v in tensors.items()}, args.out / f"{name}.safetensors")
    ch = [VQ["ch"] * m for m in VQ["ch_mult"]]
    config = {
        "llamagen_commit": args.commit or commit_of(args.checkout),
        "torch": torch.__version__,
        "vq": {
            "llamagen": VQ | {"norm_groups": GROUPS},
            "preset": "llamagen-vq16",
            "overrides": dict(
                channels=ch,
                norm_groups=GROUPS,
                latent_channels=VQ["z_channels"],
                codebook_size=VQ["codebook_size"],
                embed_dim=VQ["codebook_embed_dim"],
            ),
            "seed": seed,
            "min_margin": vq_margin,
        },
        "gpt": {
            "llamagen": GPT,
            "preset": "gpt-b",
            "overrides": dict(
                dim=GPT["dim"],
                depth=GPT["n_layer"],
                heads=GPT["n_head"],
                mlp_multiple_of=GPT["multiple_of"],
                codebook_size=GPT["vocab_size"],
                num_classes=GPT["num_classes"],
            ),
            "grid_size": [int(GPT["block_size"] ** 0.5)] * 2,
            "guidance_scale": GUIDANCE,
            "seed": gpt_seed,
            "min_margin": gpt_margin,
        },
    }
    (args.out / "reference.json").write_text(json.dumps(config, indent=1) + "\n")
    (args.out / "layouts.json").write_text(json.dumps(layouts) + "\n")
    sizes = {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}
    print(json.dumps({"vq_margin": vq_margin, "gpt_margin": gpt_margin, "bytes": sizes}, indent=1))


if __name__ == "__main__":
    main()
