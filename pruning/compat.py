"""The one place that knows how ``transformers`` names what the pruning hooks read and pass on.

The hooks depend on the keyword call from the outer multimodal model to its decoder and from the decoder to its
layers, and on ``create_causal_mask``. Releases rename parts of that call (the KV cache went from
``past_key_values=`` to ``cache=`` in 5.24), so everything here is read from the installed source's signatures or
checked at run time, and a call that does not look as expected raises ``TransformersCompatibilityError`` instead of
decoding on with a wrong mask or wrong positions.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable

import torch
import transformers
from torch import nn
from transformers import Cache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

# The range the test suite has passed on (make test: newest; make test-oldest: oldest). Keep in step with
# pyproject.toml and the Makefile's OLDEST_TRANSFORMERS.
OLDEST_TESTED = "5.17.0"
NEWEST_TESTED = "5.24.0"
SUPPORTED_RANGE = f"transformers {OLDEST_TESTED} to {NEWEST_TESTED}"

# Names the KV cache has had in the decoder call, newest first.
CACHE_NAMES = ("cache", "past_key_values")


class TransformersCompatibilityError(RuntimeError):
    """The installed transformers calls the hooked modules differently from every version pruning supports."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"{problem}. Pruning supports {SUPPORTED_RANGE} (installed: {transformers.__version__}); "
            "install a version in that range, or report the version you run."
        )


def _release(version: str) -> tuple[int, ...]:
    """``"5.24.0"`` / ``"5.25.0.dev0"`` -> ``(5, 24, 0)`` / ``(5, 25, 0)``."""
    return tuple(int(part) for part in re.match(r"\d+(\.\d+)*", version).group().split("."))


def check_version() -> None:
    """Warn when the installed transformers lies outside the tested range."""
    installed = transformers.__version__
    if not _release(OLDEST_TESTED) <= _release(installed) <= _release(NEWEST_TESTED):
        warnings.warn(
            f"pruning was tested with {SUPPORTED_RANGE}; installed is {installed}. The hooks check the calls they "
            "depend on and raise TransformersCompatibilityError if one has changed.",
            stacklevel=3,
        )


def cache_from(kwargs: dict) -> Cache | None:
    """The KV cache handed to a hooked module, under whichever supported name the caller used.

    Raises if a ``Cache`` arrives under a name pruning does not know (a rename it would otherwise miss and so decode
    as if there were no cache), or if two names carry different caches.
    """
    found = {name: kwargs[name] for name in CACHE_NAMES if kwargs.get(name) is not None}
    unknown = [k for k, v in kwargs.items() if isinstance(v, Cache) and k not in CACHE_NAMES]
    if unknown:
        raise TransformersCompatibilityError(
            f"a KV cache was passed as {unknown[0]!r}, which pruning does not know (known: {', '.join(CACHE_NAMES)})"
        )
    caches = list(found.values())
    if len(caches) > 1 and caches[0] is not caches[1]:
        raise TransformersCompatibilityError(f"two different caches were passed as {' and '.join(found)}")
    return caches[0] if caches else None


def _parameters(fn: Callable) -> set[str]:
    return set(inspect.signature(fn).parameters)


def cache_parameter(fn: Callable, what: str = "") -> str:
    """The name under which ``fn`` (a model's ``forward``, a layer, ``create_causal_mask``) takes the KV cache."""
    params = _parameters(fn)
    name = next((n for n in CACHE_NAMES if n in params), None)
    if name is None:
        what = what or getattr(fn, "__qualname__", repr(fn))
        raise TransformersCompatibilityError(f"{what} takes no cache argument under any known name {CACHE_NAMES}")
    return name


# The mask builder of each decoder layer type (``config.layer_types``) that in-decoder stages can rebuild.
LAYER_MASKS: dict[str, Callable] = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


@functools.cache
def _mask_cache_parameter(build: Callable) -> str:
    return cache_parameter(build, build.__name__)


def causal_mask(
    config,
    hidden: torch.Tensor,
    mask2d: torch.Tensor,
    cache: Cache | None,
    layer_idx: int,
    layer_type: str = "full_attention",
):
    """The mask of one layer of type ``layer_type`` (``LAYER_MASKS``) for its (possibly shorter) keys, sized by that
    layer's cache, which is passed under the name the builder takes."""
    build = LAYER_MASKS[layer_type]
    return build(
        config=config,
        inputs_embeds=hidden,
        attention_mask=mask2d,
        layer_idx=layer_idx,
        **{_mask_cache_parameter(build): cache},
    )


def model_function(module, name: str) -> Callable:
    """A function of a model's module that a family's glue calls (e.g. Gemma 3's mask builders), or a named error."""
    fn = getattr(module, name, None)
    if fn is None:
        raise TransformersCompatibilityError(f"{module.__name__} has no {name}")
    return fn


_DECODER_ARGS = ("inputs_embeds", "attention_mask", "position_ids")
_LAYER_ARGS = ("hidden_states", "attention_mask", "position_embeddings")
_MASK_ARGS = ("config", "inputs_embeds", "attention_mask", "layer_idx")


def check_interfaces(decoder: nn.Module, layers: nn.ModuleList | None) -> None:
    """Refuse, before any hook is attached, a decoder / layer / mask builder whose signature the hooks do not know.

    Args:
        decoder: the module the outer model calls with the merged embeddings (``language_model``).
        layers: the decoder layers that in-decoder stages hook, or None when no such stage is used.
    """
    checks = [(decoder.forward, f"{type(decoder).__name__}.forward", _DECODER_ARGS)]
    if layers is not None:
        checks.append((layers[0].forward, f"{type(layers[0]).__name__}.forward", _LAYER_ARGS))
        checks += [(build, build.__name__, _MASK_ARGS) for build in LAYER_MASKS.values()]
    for fn, what, needed in checks:
        missing = [n for n in needed if n not in _parameters(fn)]
        if missing:
            raise TransformersCompatibilityError(f"{what} takes no {', '.join(missing)}")
        cache_parameter(fn, what)


def check_layer_call(idx: int, kwargs: dict) -> None:
    """The keywords an in-decoder stage reads from a decoder layer's call: the mask, and rotary ``(cos, sin)`` of
    shape ``(B or 1, L, head_dim)`` (before 5.17, Qwen2-VL passed ``(3, B, L, head_dim)`` M-RoPE sections)."""
    if "attention_mask" not in kwargs or "position_embeddings" not in kwargs:
        raise TransformersCompatibilityError(
            f"decoder layer {idx} was called without attention_mask or position_embeddings keywords"
        )
    cos = kwargs["position_embeddings"][0]
    if cos.dim() != 3:
        raise TransformersCompatibilityError(
            f"decoder layer {idx} received rotary embeddings of shape {tuple(cos.shape)}, not (batch, tokens, head_dim)"
        )
