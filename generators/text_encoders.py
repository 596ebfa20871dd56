"""Text encoders from Hugging Face transformers, and one loader for every prompt encoder a generator can use.

:class:`HFTextEncoder` wraps a transformers text model and its tokenizer behind the interface of
:class:`~generators.prompt_encoder.PromptEncoder`: ``encoder(prompts) -> (states (B, L, D) float32, mask (B, L)
bool)`` with ``dim`` D and ``max_length`` L fixed, so a generator's prompt prefix has one shape. Models: CLIP text
towers (``CLIPTextModel``, ``CLIPTextModelWithProjection``, or the text tower of a whole CLIP checkpoint), T5 and the
other encoders transformers lists for text encoding (``T5EncoderModel`` and friends: the encoder half only, as
LlamaGen uses ``google/flan-t5-xl``), and any other ``AutoModel`` (of an encoder-decoder, its encoder).

:func:`load_prompt_encoder` turns a folder, an open_clip name or a hub name into the matching encoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTextEncoding,
    AutoTokenizer,
    CLIPTextModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

from tokenizers_vis.clip import DEFAULT_CLIP

from .prompt_encoder import PromptEncoder

# LlamaGen pads its T5 prompts to 120 tokens; a model or tokenizer with a shorter limit (CLIP: 77) keeps its own.
DEFAULT_MAX_LENGTH = 120
OPEN_CLIP_PREFIXES = ("open_clip:", "hf-hub:", "local-dir:")  # ours, then open_clip's own schemes
OFFLINE_ALTERNATIVES = (
    "offline, pass a local folder instead: one written by HFTextEncoder.save_pretrained (e.g. "
    "`HFTextEncoder.from_pretrained({name}).save_pretrained(FOLDER)` on a machine with hub access), a transformers "
    "checkpoint folder with its tokenizer, a pipeline's prompt_encoder/ subfolder, or the project CLIP folder "
    f"{DEFAULT_CLIP!r}"
)


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype, or the name of one (``"bfloat16"``, as saved in a folder's config)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; e.g. 'float32', 'bfloat16'")
    return value


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The transformers class whose forward gives the text states of a checkpoint with this config."""
    architecture = (config.architectures or [""])[0]
    if architecture in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        return getattr(transformers, architecture)  # the projection, if any, is kept and saved again
    if config.model_type == "clip":  # a whole CLIP: its text tower (the states need no projection)
        return CLIPTextModel
    if config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:  # T5 & co: the encoder without the decoder
        return AutoModelForTextEncoding
    return AutoModel


class HFTextEncoder(nn.Module):
    """Frozen transformers text model + tokenizer: prompts -> per-token states for a generator.

    ``forward(prompts)`` pads or truncates every prompt to :attr:`max_length` tokens and returns ``(states (B, L, D),
    mask (B, L) bool)``: the model's last hidden states (float32 whatever the model's dtype) and the tokenizer's
    attention mask (True on real tokens). Padded positions still hold the model's outputs there, as
    :class:`PromptEncoder`'s do; a generator reads all L of them. ``word_embeddings=True`` appends the model's
    layer-normalised input word embeddings (see :class:`PromptEncoder` for why), so D = hidden size + embedding size.

    Frozen as :class:`PromptEncoder` is: eval mode whatever :meth:`train` is asked, no parameter requires grad,
    outputs computed without autograd. Load with :meth:`from_pretrained`, e.g. ``dtype=torch.bfloat16`` to hold and
    run a large encoder at half the memory.
    """

    config_name = "text_encoder.json"
    format = "discrete-visual-tokens/hf-text-encoder"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        word_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:  # decoder-only LMs ship without one; the mask marks padding anyway
            tokenizer.pad_token = tokenizer.eos_token
        positions = getattr(model.config, "max_position_embeddings", None)  # T5 has none: relative positions
        # an unset tokenizer.model_max_length is a huge sentinel
        self.max_length = int(max_length or min(DEFAULT_MAX_LENGTH, tokenizer.model_max_length, positions or 10**9))
        if positions and self.max_length > positions:
            raise ValueError(f"max_length {self.max_length} exceeds the model's {positions} positions")
        self.word_embeddings = word_embeddings
        self.train(False)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        max_length: int | None = None,
        word_embeddings: bool | None = None,
        local_files_only: bool = False,
    ) -> HFTextEncoder:
        """From a folder written by :meth:`save_pretrained`, a transformers checkpoint folder with its tokenizer,
        or a hub name. Options left None take the folder's saved choice (else float32, the default length, no word
        embeddings). Without hub access use :func:`load_prompt_encoder`, which fails fast and says why."""
        saved_file = Path(name_or_path) / cls.config_name
        saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
        hub = {"local_files_only": local_files_only}
        model_class = _model_class(AutoConfig.from_pretrained(name_or_path, **hub))
        model = model_class.from_pretrained(name_or_path, dtype=as_dtype(dtype or saved.get("dtype", "float32")), **hub)
        return cls(
            model,
            AutoTokenizer.from_pretrained(name_or_path, **hub),
            max_length or saved.get("max_length"),
            saved.get("word_embeddings", False) if word_embeddings is None else word_embeddings,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Model (``config.json`` + weights in their dtype), tokenizer files and ``text_encoder.json`` (length,
        dtype, features): a folder that loads offline, e.g. a pipeline's ``prompt_encoder/``."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        config = {
            "format": self.format,
            "max_length": self.max_length,
            "dtype": str(self.dtype).removeprefix("torch."),
            "word_embeddings": self.word_embeddings,
        }
        (folder / self.config_name).write_text(json.dumps(config, indent=2) + "\n")

    def train(self, mode: bool = True) -> HFTextEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def dim(self) -> int:
        """D, the width of each token state (plus the word-embedding width with word embeddings)."""
        words = self.model.get_input_embeddings().embedding_dim if self.word_embeddings else 0
        return int(self.model.config.hidden_size) + words

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (states are returned as float32 all the same)."""
        return self.model.dtype

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (states (B, L, D) float32, mask (B, L) bool)."""
        # no_grad rather than inference_mode: the states feed a generator in training (see PromptEncoder.forward)
        if isinstance(prompts, str):
            prompts = [prompts]
        batch = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # an encoder-decoder loaded whole (e.g. BART through AutoModel) is read through its encoder
        encoder = self.model.get_encoder() if self.model.config.is_encoder_decoder else self.model
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.word_embeddings:
            words = self.model.get_input_embeddings()(ids).float()
            states = torch.cat([states, F.layer_norm(words, words.shape[-1:])], dim=-1)
        return states, mask.bool()


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment may have been set since
    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return flag or is_offline_mode()


def _unavailable(name: str, reason: str) -> OSError:
    return OSError(
        f"could not load the text encoder {name!r}: it is not a local folder, not in the Hugging Face cache, and "
        f"{reason}; {OFFLINE_ALTERNATIVES.format(name=repr(name))}"
    )


def _from_hub(name: str, **options) -> HFTextEncoder:
    """A hub model: from the local cache if it is there, else downloaded; unreachable, a clear error at once."""
    try:
        return HFTextEncoder.from_pretrained(name, local_files_only=True, **options)
    except OSError:  # not (wholly) in the cache
        pass
    if _hub_offline():
        raise _unavailable(name, "HF_HUB_OFFLINE is set")
    try:  # one request without retries: offline it fails in under a second, transformers retries for ~30 s
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=10)
    except Exception as err:  # no network, no such repo, a gated one...: the cause is chained
        raise _unavailable(name, f"the hub cannot provide it ({type(err).__name__}: {err})") from err
    return HFTextEncoder.from_pretrained(name, **options)


def load_prompt_encoder(
    name_or_path: str | os.PathLike,
    *,
    word_embeddings: bool | None = None,
    dtype: torch.dtype | str | None = None,
    max_length: int | None = None,
) -> PromptEncoder | HFTextEncoder:
    """The frozen prompt encoder that ``name_or_path`` names; every form returns ``encoder(prompts) -> (states
    (B, L, D) float32, mask (B, L) bool)`` with ``.dim`` and ``.max_length``.

    - a folder written by :meth:`PromptEncoder.save_pretrained` or a project CLIP folder (e.g.
      ``assets/pipeline/prompt_encoder``, a pipeline's ``prompt_encoder/``): a :class:`PromptEncoder`;
    - a folder with a transformers ``config.json`` (one written by :meth:`HFTextEncoder.save_pretrained`, or any
      transformers checkpoint folder that holds its tokenizer: CLIP, T5, BERT, ...): an :class:`HFTextEncoder`;
    - ``open_clip:NAME:TAG`` (e.g. ``open_clip:ViT-B-32:laion2b_s34b_b79k``) or open_clip's own ``hf-hub:ORG/NAME``
      and ``local-dir:PATH``: a :class:`PromptEncoder` over that open_clip model (see :func:`load_clip`);
    - anything else is a Hugging Face hub model id (``google/flan-t5-xl``, ``openai/clip-vit-large-patch14``): an
      :class:`HFTextEncoder` from the local cache, else downloaded. Without hub access (``HF_HUB_OFFLINE=1`` or no
      network) this raises an OSError within about a second that names the model and the offline alternatives.

    Options left None take a saved folder's choice. ``word_embeddings`` appends the input word embeddings to the
    states; ``dtype`` (e.g. ``torch.bfloat16`` or ``"bfloat16"``) is the dtype the encoder computes in;
    ``max_length`` pads / truncates transformers encoders (default: the model's limit, at most 120) and must equal
    the context length of a CLIP, whose length is fixed.
    """
    name = os.fspath(name_or_path)
    options = {"word_embeddings": word_embeddings, "dtype": dtype, "max_length": max_length}
    if Path(name).is_dir():
        config = Path(name) / "config.json"
        if config.is_file() and "model_type" in json.loads(config.read_text()):
            return HFTextEncoder.from_pretrained(name, **options)
        encoder = PromptEncoder.from_pretrained(name, word_embeddings, as_dtype(dtype))
    elif name.startswith(OPEN_CLIP_PREFIXES):
        model, tag = name, ""  # open_clip's schemes name the model whole
        if name.startswith("open_clip:"):
            model, _, tag = name.removeprefix("open_clip:").partition(":")
        encoder = PromptEncoder.from_clip(model, tag or None, bool(word_embeddings), as_dtype(dtype))
    else:
        return _from_hub(name, **options)
    if max_length not in (None, encoder.max_length):
        raise ValueError(f"{name!r} is a CLIP with a fixed context length of {encoder.max_length}, not {max_length}")
    return encoder
