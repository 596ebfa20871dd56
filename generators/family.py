"""What a generator class is: each generator class declares a ``family`` class attribute (a :class:`GeneratorFamily`)
that the training loop, the pipelines, the preset registry and ``scripts/generate.py`` read instead of testing
classes, as the tokenizer families do (:class:`tokenizers_vis.registry.TokenizerFamily`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GeneratorFamily:
    """What a generator class is, for the training loop, the pipelines and the scripts."""

    kind: str  # its name on the command line (`scripts/generate.py --generator`)
    default_preset: str  # the preset to train for this kind
    presets: dict[str, dict[str, Any]]  # preset name -> constructor arguments, registered by generators.registry
    sampling_keys: tuple[str, ...] = ()  # generate() settings of this family only, beyond the pipelines' shared ones
    takes_videos: bool = False  # models (t, h, w) grids too, so it can drive a text-to-video pipeline
    # regresses the tokenizer's code vectors instead of predicting token ids: it needs `latent_dim` and
    # `set_codebook(codes)` before training and has no logits, so it is evaluated by its own loss
    regresses_codes: bool = False
    # constructor options that `scripts/generate.py` picks a shipped pipeline by (`--entity`, `--k`), with the
    # values it assumes for those not given
    run_defaults: dict[str, Any] = field(default_factory=dict)
