"""Text-to-image pipeline: prompt encoder -> generator -> tokenizer decoder, saved and loaded as one folder.

The folder follows the diffusers pipeline layout: ``model_index.json`` names each component as
``[library, class]`` and every component sits in its own subfolder with its own ``config.json`` and weights::

    pipeline/
      model_index.json        {"_class_name": "TextToImagePipeline", "tokenizer": ["tokenizers_vis", ...], ...}
      tokenizer/              config.json + safetensors
      generator/              config.json + safetensors
      prompt_encoder/         the frozen text encoder: the project's CLIP (text tower used; image tower kept for
                              evaluation) or a transformers one (CLIP text, T5, ...: HFTextEncoder)

Components are loaded through the project's registries, never by importing whatever a JSON file names.
The sampling settings found best by ``scripts/tune_sampling.py`` are stored as the pipeline's defaults.

``num_candidates`` > 1 draws that many samples per requested image and keeps the one whose CLIP image embedding
(the prompt encoder's own CLIP, image tower) is closest to the prompt's text embedding: CLIP re-ranking, as in
DALL-E. It costs ``num_candidates`` times the sampling and needs a prompt-conditioned generator whose prompt encoder
is a CLIP with an image tower (a :class:`PromptEncoder`, not a transformers text encoder). ``rerank="round-trip"``
(text-to-video pipelines, whose tokenizers have a ``round_trip_distance``) keeps instead the sample whose decoded
frames encode back closest to its own tokens, which needs no caption and no CLIP.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from tokenizers_vis import load_tokenizer

from .prompt_encoder import PromptEncoder
from .registry import generator_families, load_generator
from .text_encoders import HFTextEncoder, load_prompt_encoder

# sampling settings that every pipeline takes, with the values it uses unless its folder or the call says otherwise
RUN_DEFAULTS = {
    "guidance_scale": 1.0,
    "guidance_schedule": "constant",
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "num_candidates": 1,
    "rerank": "clip",
}
RERANKERS = ("clip", "round-trip")  # how num_candidates > 1 picks a sample (module docstring)
# plus the settings of one generator family only (its ``family.sampling_keys``, e.g. next-X flow steps): passed on
# when given, refused for a generator of another family
FAMILY_KEYS = tuple(dict.fromkeys(key for family in generator_families().values() for key in family.sampling_keys))
SAMPLING_KEYS = (*RUN_DEFAULTS, *FAMILY_KEYS)


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    pixels: torch.Tensor  # (B, 3, H, W) in [0, 1]
    tokens: torch.Tensor  # (B, h, w)
    stats: dict | None = None  # with return_stats: the generator's stats, summed over the sampling runs

    @classmethod
    def concat(cls, parts: list[PipelineOutput]) -> PipelineOutput:
        """The outputs of consecutive sampling runs as one."""
        stats = None if parts[0].stats is None else {k: sum(p.stats[k] for p in parts) for k in parts[0].stats}
        pixels, tokens = torch.cat([p.pixels for p in parts]), torch.cat([p.tokens for p in parts])
        return cls([image for p in parts for image in p.images], pixels, tokens, stats)


def split_request(
    items: str | list | torch.Tensor | None, batch_size: int | None, seed: int | None
) -> list[tuple] | None:
    """``(items[i : i + batch_size], seed + i)`` for each sampling run of a request (prompts or class labels)
    longer than ``batch_size``, or None when it fits in one run. Seeding a run with its first index gives every run
    its own noise."""
    if batch_size is None or items is None or isinstance(items, str) or len(items) <= batch_size:
        return None
    return [(items[i : i + batch_size], None if seed is None else seed + i) for i in range(0, len(items), batch_size)]


class TextToImagePipeline:
    """``pipe(["a large red circle at the top left"], num_images_per_prompt=4)`` -> PNG-ready images.

    With a class-conditioned generator, pass ``class_labels`` instead of prompts (``prompt_encoder`` may be None):
    label ids, or names from ``class_names`` (the sub-folder names of class-folder training data). An unconditional
    generator takes neither: ``pipe(num_images_per_prompt=8)``.
    """

    produces_video = False  # still images; a text-to-video pipeline's outputs are clips
    run_defaults = RUN_DEFAULTS

    def __init__(
        self,
        tokenizer,
        generator,
        prompt_encoder: PromptEncoder | HFTextEncoder | None = None,
        defaults: dict | None = None,
        class_names: list[str] | None = None,
    ):
        if generator.config.condition == "prompt" and prompt_encoder is None:
            raise ValueError("a prompt-conditioned generator needs a prompt_encoder")
        if class_names is not None and len(class_names) != generator.config.num_classes:
            count = generator.config.num_classes
            raise ValueError(f"{len(class_names)} class names for a generator of {count} classes")
        self.class_names = class_names
        self.tokenizer, self.generator, self.prompt_encoder = tokenizer.eval(), generator.eval(), prompt_encoder
        unknown = set(defaults or {}) - set(SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling defaults {sorted(unknown)}; accepted: {', '.join(SAMPLING_KEYS)}")
        self.defaults = self.run_defaults | (defaults or {})

    @property
    def sampling_keys(self) -> tuple[str, ...]:
        """The sampling settings this pipeline takes: its run defaults' and its generator family's own."""
        return (*self.run_defaults, *type(self.generator).family.sampling_keys)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def to(self, device: str | torch.device) -> TextToImagePipeline:
        for part in (self.tokenizer, self.generator, self.prompt_encoder):
            if part is not None:
                part.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: list[int] | torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        use_cache: bool = True,
        progress: bool = False,
        batch_size: int | None = None,
        return_stats: bool = False,
        **sampling,
    ) -> PipelineOutput:
        """Sampling keywords (``guidance_scale``, ``guidance_schedule``, ``temperature``, ``top_k``, ``top_p``,
        ``num_candidates``) override the pipeline's defaults. Images come in prompt order, ``num_images_per_prompt``
        per prompt. ``batch_size`` caps the prompts (or class labels) of one sampling run: a longer request runs in
        several (see :func:`split_request` for their seeds). ``return_stats`` fills ``stats`` from the generator's
        ``generate(return_stats=True)``."""
        runs = split_request(prompt if class_labels is None else class_labels, batch_size, seed)
        if runs is not None:
            key = "prompt" if class_labels is None else "class_labels"
            options = dict(num_images_per_prompt=num_images_per_prompt, use_cache=use_cache, progress=progress)
            return PipelineOutput.concat(
                [self(**{key: part}, seed=s, return_stats=return_stats, **options, **sampling) for part, s in runs]
            )
        sampling = self._sampling(sampling)
        candidates, rerank = self._pop_candidates(sampling)
        kind = self.generator.config.condition
        if kind == "prompt":
            if prompt is None:
                raise ValueError("this pipeline's generator is prompt-conditioned: pass prompt=")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            wanted = [p for p in prompts for _ in range(num_images_per_prompt)]
            condition = self.prompt_encoder([p for p in wanted for _ in range(candidates)])
            batch = len(wanted) * candidates
        elif kind == "class":
            if class_labels is None:
                raise ValueError("this pipeline's generator is class-conditioned: pass class_labels=")
            labels = self.class_ids(class_labels).to(self.device)
            condition = labels.repeat_interleave(num_images_per_prompt)
            batch = len(condition)
        else:
            condition, batch = None, num_images_per_prompt
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        result = self.generator.generate(
            condition,
            batch_size=batch,
            generator=generator,
            use_cache=use_cache,
            progress=progress,
            **({"return_stats": True} if return_stats else {}),
            **sampling,
        )
        tokens, stats = result if return_stats else (result, None)
        pixels = (self.tokenizer.decode(tokens).float().clamp(-1, 1) + 1) / 2
        if candidates > 1:  # CLIP: _pop_candidates refuses the round trip to every image tokenizer
            rows = self._best_candidates(wanted, pixels, candidates)
            tokens, pixels = tokens[rows], pixels[rows]
        arrays = (pixels.permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
        return PipelineOutput([Image.fromarray(a) for a in arrays], pixels.cpu(), tokens.cpu(), stats)

    def class_ids(self, labels: list[int | str] | torch.Tensor) -> torch.Tensor:
        """Class labels as ids ``(B,)``: ids pass through, names are looked up in :attr:`class_names`."""
        if isinstance(labels, torch.Tensor):
            return labels.long()
        if isinstance(labels, (int, str)):
            labels = [labels]
        names = {name: i for i, name in enumerate(self.class_names or [])}
        unknown = [x for x in labels if isinstance(x, str) and x not in names]
        if unknown:
            known = ", ".join(self.class_names) if self.class_names else "none: pass label ids"
            raise ValueError(f"unknown class name(s) {unknown}; this pipeline's classes: {known}")
        return torch.tensor([names[x] if isinstance(x, str) else int(x) for x in labels])

    def _sampling(self, given: dict) -> dict:
        """The pipeline's defaults overridden by ``given``, checked against what the generator accepts."""
        unknown = set(given) - set(SAMPLING_KEYS)
        if unknown:
            raise TypeError(f"unknown sampling arguments {sorted(unknown)}; accepted: {', '.join(SAMPLING_KEYS)}")
        sampling = self.defaults | given
        for key in set(sampling) - set(self.sampling_keys):
            raise ValueError(f"{key} does not apply to a {type(self.generator).__name__}")
        return sampling

    def _pop_candidates(self, sampling: dict) -> tuple[int, str]:
        """Takes ``num_candidates`` and ``rerank`` out of ``sampling``; refuses, before any sampling, a count or a
        re-ranker this pipeline cannot use."""
        candidates, rerank = int(sampling.pop("num_candidates")), sampling.pop("rerank")
        if candidates < 1 or (candidates > 1 and self.generator.config.condition != "prompt"):
            raise ValueError(f"num_candidates must be >= 1 (> 1 only with prompts), got {candidates}")
        if rerank not in RERANKERS:
            raise ValueError(f"unknown rerank {rerank!r}; accepted: {', '.join(RERANKERS)}")
        if candidates > 1 and rerank == "clip" and not hasattr(self.prompt_encoder, "clip"):
            raise ValueError(
                f"num_candidates > 1 re-ranks with CLIP image embeddings, and this pipeline's prompt encoder "
                f"({type(self.prompt_encoder).__name__}) has no image tower; use num_candidates=1"
            )
        if candidates > 1 and rerank == "round-trip" and not hasattr(self.tokenizer, "round_trip_distance"):
            raise ValueError(
                f"rerank='round-trip' needs a tokenizer with round_trip_distance (Video1DTokenizer, "
                f"AnchoredVideoTokenizer), got a {type(self.tokenizer).__name__}; use rerank='clip'"
            )
        return candidates, rerank

    def _best_candidates(self, prompts: list[str], images: torch.Tensor, candidates: int) -> torch.Tensor:
        """Row of each prompt's best candidate among ``images`` (``candidates`` consecutive rows per prompt, in
        [0, 1]): the one whose CLIP image embedding is closest to the prompt's text embedding."""
        clip = self.prompt_encoder.clip
        embeddings = clip.encode_image(images * 2 - 1).view(len(prompts), candidates, -1)
        best = torch.einsum("bkd,bd->bk", embeddings, clip.encode_text(prompts)).argmax(dim=1)
        return torch.arange(len(prompts), device=best.device) * candidates + best

    # ---- folders -------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        folder: str | Path,
        generator_dtype: torch.dtype | None = None,
        tokenizer_dtype: torch.dtype | None = None,
    ) -> None:
        """Writes the pipeline folder atomically (a temporary folder renamed into place). ``generator_dtype`` and
        ``tokenizer_dtype`` (e.g. ``torch.bfloat16``) store those weights at lower precision to halve the folder;
        they are loaded back as float32."""
        folder = Path(folder)
        tmp = folder.with_name(f".tmp_{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index = {"_class_name": type(self).__name__, "defaults": self.defaults}
        index |= {"condition": self.generator.config.condition, "class_names": self.class_names}
        for name in ("tokenizer", "generator", "prompt_encoder"):
            part = getattr(self, name)
            if part is None:
                index[name] = [None, None]
                continue
            dtype = {"generator": generator_dtype, "tokenizer": tokenizer_dtype}.get(name)
            if dtype is not None:
                part = nn.Module.to(copy.deepcopy(part), dtype)  # plain cast, no diffusers dtype warning
            part.save_pretrained(tmp / name)
            index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
        self._save_extras(tmp, index, generator_dtype, tokenizer_dtype)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def _save_extras(
        self, folder: Path, index: dict, generator_dtype: torch.dtype | None, tokenizer_dtype: torch.dtype | None
    ) -> None:
        """Subclasses write parts beyond the three components into ``folder`` and name them in ``index``."""

    @classmethod
    def _extras_from_index(cls, folder: Path, index: dict) -> dict:
        """Subclasses' extra constructor arguments, read back from what :meth:`_save_extras` wrote."""
        return {}

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None) -> TextToImagePipeline:
        folder = Path(folder)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{folder} is not a pipeline folder (no model_index.json); build the shipped one with `make assets` "
                "or save one with TextToImagePipeline.save_pretrained"
            )
        index = json.loads(index_file.read_text())
        if index.get("_class_name") != cls.__name__:
            raise ValueError(f"{folder} holds a {index.get('_class_name')!r}, not a {cls.__name__}")
        encoder = None
        if index.get("prompt_encoder", [None])[0] is not None:
            encoder = load_prompt_encoder(folder / "prompt_encoder")  # the project's CLIP or a transformers one
        pipe = cls(
            load_tokenizer(folder / "tokenizer").float(),
            load_generator(folder / "generator").float(),
            encoder,
            index.get("defaults"),
            index.get("class_names"),
            **cls._extras_from_index(folder, index),
        )
        return pipe.to(device) if device is not None else pipe


def save_grid(images: list[Image.Image], path: str | Path, per_row: int) -> None:
    """Pastes equally sized images into one PNG, ``per_row`` to a row, 2 px apart."""
    w, h = images[0].size
    rows = -(-len(images) // per_row)
    grid = Image.new("RGB", (per_row * (w + 2) - 2, rows * (h + 2) - 2), (255, 255, 255))
    for i, image in enumerate(images):
        grid.paste(image, ((i % per_row) * (w + 2), (i // per_row) * (h + 2)))
    grid.save(path)
