"""LlamaGen's class-conditional GPT checkpoints (FoundationVision/LlamaGen, ``autoregressive/models/gpt.py``) as
:class:`~generators.next_token.NextTokenGenerator` weights, and a pipeline from a LlamaGen GPT and VQ pair.

The generator takes them in its ``layout="llamagen"`` (the ``gpt-*`` presets): the class embedding is the whole
prefix and predicts the first token, no start token or target-position embeddings, the class token's rotary zeroed.
Weights map one to one, except that LlamaGen's separate SwiGLU projections ``w1`` (gate) and ``w3`` (up) are our
fused ``gate_up`` and that our token table has one more row (the mask id of the ``random`` objective), set to zero.
Checkpoint files are read with :func:`tokenizers_vis.llamagen.read_checkpoint` (``GPT_ENTRIES``): nothing pickled
is executed.
"""

from __future__ import annotations

from collections import Counter

import torch

from tokenizers_vis.llamagen import StateDict, check_layout, convert_llamagen_vq

from .next_token import NextTokenGenerator
from .pipeline import TextToImagePipeline
from .registry import PRESETS, create_generator

# LlamaGen's sample_c2i.py reads ``model`` (or DeepSpeed's ``module``), not ``ema``
GPT_ENTRIES = ("model", "module", "state_dict")
# entries that hold no weights: rotary tables and KV caches of models saved after sampling
_GPT_IGNORED = ("freqs_cis", "causal_mask", ".kv_cache.k_cache", ".kv_cache.v_cache")
# LlamaGen's sample_c2i.py defaults: guidance 4, top-k 2000
PIPELINE_DEFAULTS = {"guidance_scale": 4.0, "top_k": 2000}


def gpt_key_table(depth: int) -> dict[str, str]:
    """LlamaGen GPT key -> our parameter name, in LlamaGen's order. ``w1`` (gate) and ``w3`` (up) both name our
    fused ``gate_up``, which is their concatenation in that order."""
    table = {
        "cls_embedding.embedding_table.weight": "class_embed.weight",
        "tok_embeddings.weight": "token_embed.weight",
    }
    for i in range(depth):
        ours, theirs = f"transformer.blocks.{i}", f"layers.{i}"
        table |= {
            f"{theirs}.attention.wqkv.weight": f"{ours}.attn.qkv.weight",
            f"{theirs}.attention.wo.weight": f"{ours}.attn.out.weight",
            f"{theirs}.feed_forward.w1.weight": f"{ours}.mlp.gate_up.weight",
            f"{theirs}.feed_forward.w2.weight": f"{ours}.mlp.down.weight",
            f"{theirs}.feed_forward.w3.weight": f"{ours}.mlp.gate_up.weight",
            f"{theirs}.attention_norm.weight": f"{ours}.attn_norm.weight",
            f"{theirs}.ffn_norm.weight": f"{ours}.mlp_norm.weight",
        }
    return table | {"norm.weight": "transformer.norm.weight", "output.weight": "head.weight"}


def gpt_layout(model: NextTokenGenerator) -> dict[str, tuple[int, ...]]:
    """The LlamaGen checkpoint keys and shapes ``model`` takes."""
    params, table = dict(model.named_parameters()), gpt_key_table(model.config.depth)
    parts = Counter(table.values())
    shapes = {}
    for theirs, ours in table.items():
        rows, *rest = params[ours].shape
        shapes[theirs] = (rows - 1 if ours == "token_embed.weight" else rows // parts[ours], *rest)
    return shapes


def infer_gpt_preset(state: StateDict) -> tuple[str, dict]:
    """The ``gpt-*`` preset with the checkpoint's width and depth, and the codebook size and class count read from
    it."""
    embed, classes = state.get("tok_embeddings.weight"), state.get("cls_embedding.embedding_table.weight")
    depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
    if embed is None or classes is None:
        raise ValueError("not a LlamaGen class-conditional GPT checkpoint: no tok_embeddings / cls_embedding weights")
    for name, (_, kwargs) in PRESETS.items():
        if name.startswith("gpt-") and (kwargs["dim"], kwargs["depth"]) == (embed.shape[1], depth):
            return name, {"codebook_size": embed.shape[0], "num_classes": classes.shape[0] - 1}
    raise ValueError(
        f"no gpt-* preset has this checkpoint's width {embed.shape[1]} and depth {depth}; pass the preset explicitly"
    )


def convert_llamagen_gpt(
    state: StateDict, preset: str | None = None, grid_size: tuple[int, int] = (16, 16), **overrides
) -> NextTokenGenerator:
    """A LlamaGen class-conditional GPT state dict -> a :class:`NextTokenGenerator` (eval mode) that computes the
    same logits. ``preset`` (default: inferred, see :func:`infer_gpt_preset`), ``grid_size`` (LlamaGen's
    ``image_size // downsample_size`` on each side) and ``overrides`` build the model the checkpoint must fit; a
    mismatch is refused naming the first mismatching key and its shape."""
    if preset is None:
        preset, inferred = infer_gpt_preset(state)
        overrides = inferred | overrides
    model = create_generator(preset, **{"grid_size": tuple(grid_size), "layout": "llamagen", **overrides})
    if model.config.condition != "class":
        raise ValueError("LlamaGen's class-conditional GPT converts onto a condition='class' generator")
    check_layout(state, gpt_layout(model), f"LlamaGen GPT ({preset})", _GPT_IGNORED)
    parts: dict[str, list[torch.Tensor]] = {}
    for theirs, ours in gpt_key_table(model.config.depth).items():
        parts.setdefault(ours, []).append(state[theirs])
    embed = parts["token_embed.weight"]
    embed.append(embed[0].new_zeros(1, model.config.dim))  # our mask id: unused in LlamaGen's layout
    model.load_state_dict({name: torch.cat(tensors) for name, tensors in parts.items()})
    return model.eval()


def convert_llamagen_pipeline(
    gpt_state: StateDict,
    vq_state: StateDict,
    image_size: int = 256,
    gpt_preset: str | None = None,
    vq_preset: str | None = None,
) -> TextToImagePipeline:
    """A class-conditional pipeline from LlamaGen's GPT and VQ state dicts (the pair its ``sample_c2i.py`` takes),
    sampling with its defaults (guidance 4, top-k 2000). ``image_size``: LlamaGen's ``--image-size``."""
    tokenizer = convert_llamagen_vq(vq_state, vq_preset)
    side = image_size // tokenizer.config.downsample_factor
    generator = convert_llamagen_gpt(gpt_state, gpt_preset, (side, side))
    if generator.config.codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"the GPT models {generator.config.codebook_size} codes, the VQ has {tokenizer.codebook_size}: not a pair"
        )
    return TextToImagePipeline(tokenizer, generator, defaults=PIPELINE_DEFAULTS)
