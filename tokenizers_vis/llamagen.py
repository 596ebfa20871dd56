"""LlamaGen's VQ tokenizer checkpoints (FoundationVision/LlamaGen, ``tokenizer/tokenizer_image/vq_model.py``) as
:class:`~tokenizers_vis.image_tokenizer.ImageTokenizer` weights, and the checkpoint reading both converters share.

LlamaGen saves ``torch.save`` dicts: ``model`` holds the state dict (``ema`` too when trained with ``--ema``; plus
optimizer state and the run's ``argparse.Namespace``). They are read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only (``Namespace`` allowed as a plain attribute bag), so a checkpoint cannot
run code; a ``.safetensors`` file is read as the state dict itself.

Key mapping: LlamaGen names its encoder / decoder modules by level (``encoder.conv_blocks.{level}.res.{i}``,
``.attn.{i}``, ``.downsample``, ``mid.{0,1,2}``, ...), our taming layout (:mod:`tokenizers_vis.convnets`) keeps
each side as one ``nn.Sequential``. Both run the same modules in the same order, so LlamaGen's names, listed in
execution order, are paired with our Sequential's modules that hold weights, each pair's kind checked. LlamaGen
l2-normalises its codebook at every use; ours stores it normalised (a cosine codebook), so it is normalised once here.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .convnets import AttnBlock, Downsample, ResBlock, Upsample
from .image_tokenizer import ImageTokenizer
from .registry import create_tokenizer

StateDict = dict[str, torch.Tensor]

# LlamaGen's entry preference, as its own scripts read checkpoints: vq_demo.py takes ``ema`` first
VQ_ENTRIES = ("ema", "model", "state_dict")
# LlamaGen buffers that hold no weights: the training-time record of codes used
_VQ_IGNORED = ("quantize.codebook_used",)
# our ResBlock's parameter holders <- LlamaGen's ResnetBlock's
_RES_NAMES = {"body.0": "norm1", "body.2": "conv1", "body.3": "norm2", "body.5": "conv2", "shortcut": "nin_shortcut"}
_KINDS = {"res": ResBlock, "attn": AttnBlock, "downsample": Downsample, "upsample": Upsample}
_PRESET_BY_LEVELS = {5: "llamagen-vq16", 4: "llamagen-vq8"}


def read_checkpoint(path: str | Path, entries: Iterable[str]) -> tuple[StateDict, str]:
    """The state dict in a LlamaGen checkpoint and the entry it came from: the first of ``entries`` present in a
    ``torch.save`` dict, or the whole file when it is a bare state dict (``.safetensors`` always is)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path), "state_dict"
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict")
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded, "state_dict"
    entries = tuple(entries)
    for entry in entries:
        if isinstance(loaded.get(entry), dict):
            return loaded[entry], entry
    raise ValueError(f"{path} has none of the entries {', '.join(entries)}; found: {', '.join(map(str, loaded))}")


def check_layout(
    state: StateDict, expected: dict[str, tuple[int, ...]], what: str, ignored: Iterable[str] = ()
) -> None:
    """Refuses ``state`` unless it holds exactly the keys of ``expected`` (plus ``ignored`` ones) with those shapes;
    the message names the first mismatching key, in ``expected``'s order, then any unexpected key."""
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(f"not a {what} checkpoint: no key {key!r} (expected shape {shape})")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"not a {what} checkpoint: {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
    ignored = tuple(ignored)
    for key, value in state.items():
        if key not in expected and not key.endswith(ignored):
            raise ValueError(f"not a {what} checkpoint: unexpected key {key!r} of shape {tuple(value.shape)}")


def _encoder_names(levels: int, blocks: int) -> list[str]:
    """LlamaGen's encoder modules with weights, in execution order."""
    names = ["conv_in"]
    for level in range(levels):
        for i in range(blocks):
            names.append(f"conv_blocks.{level}.res.{i}")
            if level == levels - 1:
                names.append(f"conv_blocks.{level}.attn.{i}")
        if level != levels - 1:
            names.append(f"conv_blocks.{level}.downsample")
    return [*names, "mid.0", "mid.1", "mid.2", "norm_out", "conv_out"]


def _decoder_names(levels: int, blocks: int) -> list[str]:
    """LlamaGen's decoder modules with weights, in execution order; its ``conv_blocks.0`` is the coarsest level."""
    names = ["conv_in", "mid.0", "mid.1", "mid.2"]
    for level in range(levels):
        for i in range(blocks):
            names.append(f"conv_blocks.{level}.res.{i}")
            if level == 0:
                names.append(f"conv_blocks.{level}.attn.{i}")
        if level != levels - 1:
            names.append(f"conv_blocks.{level}.upsample")
    return [*names, "norm_out", "conv_out"]


def _kind(name: str) -> type[nn.Module]:
    if name == "mid.1":
        return AttnBlock
    if name.startswith("mid."):
        return ResBlock
    if name.startswith("conv_blocks."):
        return _KINDS[name.split(".")[2]]
    return nn.GroupNorm if name == "norm_out" else nn.Conv2d


def _pair_side(side: str, names: list[str], layers: nn.Sequential) -> dict[str, str]:
    """LlamaGen key -> our key for one side (``encoder`` / ``decoder``)."""
    ours = [(i, m) for i, m in enumerate(layers) if any(True for _ in m.parameters())]
    if len(ours) != len(names):
        raise ValueError(f"the {side} has {len(ours)} modules with weights, LlamaGen's layout {len(names)}")
    table = {}
    for name, (i, module) in zip(names, ours, strict=True):
        if not isinstance(module, _kind(name)):
            raise ValueError(f"{side}.{name} is a {_kind(name).__name__} in LlamaGen, ours is {type(module).__name__}")
        for local, _ in module.named_parameters():
            holder, param = local.rsplit(".", 1) if "." in local else ("", local)
            theirs = _RES_NAMES[holder] if isinstance(module, ResBlock) else holder
            table[".".join(filter(None, (side, name, theirs, param)))] = f"{side}.layers.{i}.{local}"
    return table


def vq_key_table(model: ImageTokenizer) -> dict[str, str]:
    """LlamaGen VQ key -> our parameter name, for every weight but the codebook (``quantize.embedding.weight``)."""
    cfg = model.config
    if cfg.layout != "taming" or not cfg.latent_channels or cfg.quantizer_type != "vq":
        raise ValueError("LlamaGen's VQ maps onto the taming layout with latent_channels and a 'vq' quantizer")
    levels = len(cfg.channels)
    table = _pair_side("encoder", _encoder_names(levels, cfg.encoder_res_blocks), model.encoder.layers)
    table |= _pair_side("decoder", _decoder_names(levels, cfg.decoder_res_blocks), model.decoder.layers)
    for conv in ("quant_conv", "post_quant_conv"):
        table |= {f"{conv}.{p}": f"{conv}.{p}" for p in ("weight", "bias")}
    return table


def vq_layout(model: ImageTokenizer) -> dict[str, tuple[int, ...]]:
    """The LlamaGen checkpoint keys and shapes ``model`` takes, in LlamaGen's module order."""
    params = dict(model.named_parameters())
    shapes = {theirs: tuple(params[ours].shape) for theirs, ours in vq_key_table(model).items()}
    return shapes | {"quantize.embedding.weight": (model.codebook_size, model.config.embed_dim)}


def infer_vq_preset(state: StateDict) -> tuple[str, dict]:
    """The preset a LlamaGen VQ state dict fits (VQ-16 or VQ-8, told by its encoder levels) and the codebook size and
    width read from it (LlamaGen trains other codebooks with the same layers)."""
    levels = {key.split(".")[2] for key in state if key.startswith("encoder.conv_blocks.")}
    if len(levels) not in _PRESET_BY_LEVELS:
        raise ValueError(
            f"not a LlamaGen VQ-16 / VQ-8 checkpoint: {len(levels)} encoder levels (no encoder.conv_blocks keys?); "
            "pass the preset explicitly"
        )
    overrides = {}
    if (codebook := state.get("quantize.embedding.weight")) is not None and codebook.ndim == 2:
        overrides = {"codebook_size": codebook.shape[0], "embed_dim": codebook.shape[1]}
    return _PRESET_BY_LEVELS[len(levels)], overrides


def convert_llamagen_vq(state: StateDict, preset: str | None = None, **overrides) -> ImageTokenizer:
    """A LlamaGen VQ state dict -> an :class:`ImageTokenizer` (eval mode) with exactly its weights. ``preset``
    (default: inferred, see :func:`infer_vq_preset`) and ``overrides`` build the model the checkpoint must fit;
    a mismatch is refused naming the first mismatching key and its shape."""
    if preset is None:
        preset, inferred = infer_vq_preset(state)
        overrides = inferred | overrides
    model = create_tokenizer(preset, **overrides)
    check_layout(state, vq_layout(model), f"LlamaGen VQ ({preset})", _VQ_IGNORED)
    ours = model.state_dict()
    for theirs, name in vq_key_table(model).items():
        ours[name] = state[theirs]
    codebook = F.normalize(state["quantize.embedding.weight"].float(), dim=-1)[None]
    prefix = "quantizer.impl._codebook."
    ours[prefix + "embed"] = codebook
    # EMA statistics consistent with the codebook (each code seen once), for fine-tuning with the project's recipe
    ours[prefix + "embed_avg"] = codebook.clone()
    ours[prefix + "cluster_size"] = torch.ones_like(ours[prefix + "cluster_size"])
    ours[prefix + "initted"] = torch.tensor(True)  # no k-means init over these codes
    model.load_state_dict(ours)
    return model.eval()
