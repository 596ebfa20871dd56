"""CLIP for the project: a word tokenizer for the scene captions, a small CLIP built from open_clip's own classes,
and one wrapper (:class:`CLIPEncoder`) that hides whether the CLIP inside is the project's or an open_clip
pretrained model.

The project's CLIP is ``open_clip.CLIP`` (the same class as the pretrained ViT-B/32 and friends) with a tiny ViT for
64x64 images and a 3-layer text transformer over a word-level vocabulary. It is trained by
``python scripts/train_clip.py`` and shipped as the prompt encoder of the
text-to-image pipeline, ``assets/pipeline/prompt_encoder`` (:data:`DEFAULT_CLIP`). :func:`load_clip` loads that
folder, or any open_clip model name with a pretrained tag where the Hugging Face hub can be reached.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .data.language import caption_words

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<sot>", "<eot>"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
DEFAULT_CLIP = "assets/pipeline/prompt_encoder"  # the shipped CLIP: prompt encoder, teacher, feature space
OFFLINE_HINT = (
    f"a local folder saved by the project works offline, e.g. load_clip({DEFAULT_CLIP!r}) "
    "(made by `python scripts/train_clip.py`)"
)
_WORD_RE = re.compile(r"[^\W_]+|[^\w\s]")  # runs of letters/digits, or one punctuation character


def _unique(words: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(words))


class WordTokenizer:
    """Word-level tokenizer for the caption grammar, callable like an open_clip tokenizer.

    Ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<sot>`` = 2, the words, then ``<eot>`` as the largest id, so open_clip's
    default ``argmax`` text pooling picks the end-of-text position. Text is lower-cased and split into words and
    single punctuation characters ("left," -> "left", ","); words outside the vocabulary map to ``<unk>``.
    """

    def __init__(self, words: Sequence[str] | None = None, context_length: int = 32) -> None:
        words = _unique(caption_words() if words is None else [w.lower() for w in words])
        if {PAD, UNK, SOT, EOT} & set(words):
            raise ValueError("words must not contain the special tokens")
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for <sot> and <eot>), got {context_length}")
        self.vocab: list[str] = [PAD, UNK, SOT, *words, EOT]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length

    pad_id, unk_id, sot_id = 0, 1, 2

    @property
    def eot_id(self) -> int:
        return len(self.vocab) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Word ids of one text, without ``<sot>``/``<eot>``."""
        return [self.index.get(w, self.unk_id) for w in self.split(text)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids (with or without specials and padding) back to text; stops at ``<eot>``."""
        words = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == self.eot_id:
                break
            if i not in (self.pad_id, self.sot_id):
                words.append(self.vocab[i])
        return " ".join(words).replace(" ,", ",")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Texts -> (B, context_length) int64: ``<sot>``, words, ``<eot>``, zero padding. Texts too long keep their
        first ``context_length - 2`` words and still end with ``<eot>``."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)[: length - 2], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": "WordTokenizer", "vocab": self.vocab, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        vocab = list(data["vocab"])
        if vocab[:3] != [PAD, UNK, SOT] or vocab[-1] != EOT:
            raise ValueError("not a WordTokenizer vocabulary: expected <pad>, <unk>, <sot> first and <eot> last")
        return cls(vocab[3:-1], context_length=int(data["context_length"]))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class SmallCLIPConfig:
    """Sizes of the project's CLIP; :meth:`to_open_clip` gives the open_clip model cfg (``CLIP(**cfg)``).

    Defaults: ViT 64x64 / patch 8, width 128, 4 layers, 4 heads, fixed 2D sin-cos position embedding; text width
    128, 3 layers, 4 heads, 32 tokens;
    embed_dim 128. About 1.47 M parameters (5.9 MB in float32).
    """

    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    # Fixed 2D sin-cos position embedding: with open_clip's small learnable init the tiny ViT learned to ignore
    # absolute position (all four corners embedded alike, only the patch phase told corner/edge/centre apart).
    vision_pos_embed: str = "sin_cos_2d"
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = len(WordTokenizer())

    def to_open_clip(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.vision_width,
                "layers": self.vision_layers,
                "head_width": self.vision_head_width,
                "pos_embed_type": self.vision_pos_embed,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


def _project_preprocess_cfg(image_size: int) -> dict[str, Any]:
    # mean = std = 0.5 maps [0, 1] back to [-1, 1]: the project's CLIP reads the project's images unchanged.
    return {
        "size": image_size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }


def _build_open_clip(model_cfg: dict[str, Any]) -> nn.Module:
    cfg = dict(model_cfg)
    custom = cfg.pop("custom_text", False) or bool(cfg.get("text_cfg", {}).get("hf_model_name"))
    cfg.pop("multimodal_cfg", None)
    return open_clip.CustomTextCLIP(**cfg) if custom else open_clip.CLIP(**cfg)


class CLIPEncoder(nn.Module):
    """One interface over the project's small CLIP and open_clip pretrained CLIPs.

    Images are (B, 3, H, W) in [-1, 1] (the project's convention); each model's own resize and mean/std are
    applied inside. Text is a list of strings; the matching tokenizer is applied inside.

    Args:
        model: an ``open_clip.CLIP`` / ``open_clip.CustomTextCLIP``.
        tokenizer: ``texts -> (B, context_length)`` ids (a :class:`WordTokenizer` or an open_clip tokenizer).
        preprocess_cfg: open_clip preprocess dict (``size``, ``mean``, ``std``, ``interpolation``,
            ``resize_mode``).
        model_cfg: the open_clip model cfg the model was built from (project models; saved in config.json).
        source: for open_clip pretrained models, ``{"name": ..., "pretrained": ...}``.

    For frozen use call :meth:`freeze` (eval mode, no parameter requires grad). The encode methods follow the
    caller's grad mode, so the same object is trained by ``scripts/train_clip.py``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        preprocess_cfg: dict[str, Any],
        model_cfg: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_cfg = dict(preprocess_cfg)
        self.model_cfg = model_cfg
        self.source = source
        self.register_buffer("image_mean", torch.tensor(self.preprocess_cfg["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(self.preprocess_cfg["std"]).view(1, 3, 1, 1), False)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, config: SmallCLIPConfig | None = None, tokenizer: WordTokenizer | None = None, **overrides: Any
    ) -> CLIPEncoder:
        """A freshly initialised project CLIP. ``overrides`` are :class:`SmallCLIPConfig` fields; the vocabulary
        size and context length are taken from ``tokenizer`` (default: :class:`WordTokenizer` over the grammar)."""
        config = config or SmallCLIPConfig()
        if overrides:
            config = SmallCLIPConfig(**{**asdict(config), **overrides})
        tokenizer = tokenizer or WordTokenizer(context_length=config.context_length)
        config = SmallCLIPConfig(
            **{**asdict(config), "vocab_size": tokenizer.vocab_size, "context_length": tokenizer.context_length}
        )
        model_cfg = config.to_open_clip()
        return cls(_build_open_clip(model_cfg), tokenizer, _project_preprocess_cfg(config.image_size), model_cfg)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int | tuple[int, int]:
        size = self.preprocess_cfg["size"]
        if isinstance(size, (tuple, list)):
            return int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
        return int(size)

    @property
    def _text_tower(self) -> nn.Module:
        # open_clip.CLIP keeps the text tower's modules on the model itself; CustomTextCLIP has them under .text.
        return getattr(self.model, "text", self.model)

    @property
    def text_width(self) -> int:
        """Width W of the per-token text states (the text transformer's width)."""
        return int(self._text_tower.ln_final.normalized_shape[0])

    @property
    def embed_dim(self) -> int:
        """Size E of the joint image-text embedding."""
        if self.model_cfg is not None:
            return int(self.model_cfg["embed_dim"])
        proj = self._text_tower.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    # -- encoding -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Texts -> (B, context_length) int64 ids on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts), context_length=self.context_length).to(self.device)

    def _ids(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        return texts.to(self.device) if isinstance(texts, torch.Tensor) else self.tokenize(texts)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the model's input: resized ("squash": straight to size; otherwise shortest
        side to size and a centre crop, as open_clip's eval transform) and normalised with its mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        param = next(self.model.parameters())
        x = images.to(param.device, torch.float32)
        size = self.image_size
        th, tw = (size, size) if isinstance(size, int) else size
        if x.shape[-2:] != (th, tw):
            mode = self.preprocess_cfg.get("interpolation", "bicubic")
            mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
            if self.preprocess_cfg.get("resize_mode", "shortest") == "squash":
                x = F.interpolate(x, size=(th, tw), mode=mode, antialias=True, align_corners=False)
            else:
                h, w = x.shape[-2:]
                scale = max(th / h, tw / w)
                nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
                x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
                top, left = (nh - th) // 2, (nw - tw) // 2
                x = x[..., top : top + th, left : left + tw]
        x = ((x + 1.0) * 0.5 - self.image_mean) / self.image_std
        return x.to(param.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> L2-normalised (B, E) float32."""
        return self.model.encode_image(self.preprocess(images), normalize=True).float()

    def encode_text(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """List of B strings (or (B, L) ids from :meth:`tokenize`) -> L2-normalised (B, E) float32."""
        return self.model.encode_text(self._ids(texts), normalize=True).float()

    def word_embeddings(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """The text tower's input word embeddings (B, L, W), before positions and attention: one fixed vector per
        vocabulary entry, so two words stay apart however similar the contrastive objective made their states."""
        tower = self._text_tower
        if not hasattr(tower, "token_embedding"):
            raise ValueError(
                f"{type(tower).__name__} has no token_embedding table; word embeddings need an open_clip text tower"
            )
        return tower.token_embedding(self._ids(texts))

    def text_states(self, texts: Sequence[str] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text states: (states (B, L, W), mask (B, L) bool), L = context_length, W = text_width.

        ``states`` are the outputs of the last text transformer block after the final LayerNorm (``ln_final``),
        i.e. exactly the tokens ``encode_text`` pools (at ``<eot>``) and projects. They are taken with open_clip's
        ``forward_intermediates(text_indices=1, normalize_intermediates=True)``, so the attention mask (causal for
        CLIP text towers) is the one the model was trained with. ``mask`` is True on the real tokens: ``<sot>``
        through ``<eot>`` for argmax/eos pooling, non-padding ids otherwise.
        """
        ids = self._ids(texts)
        out = self.model.forward_intermediates(
            text=ids, text_indices=1, normalize_intermediates=True, intermediates_only=True
        )
        states = out["text_intermediates"][-1]
        tower = self._text_tower
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        positions = torch.arange(ids.shape[1], device=ids.device)
        if pool == "argmax":
            mask = positions[None, :] <= ids.argmax(dim=-1, keepdim=True)
        elif pool == "eos":
            eos = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
            mask = positions[None, :] <= (ids == eos).int().argmax(dim=-1, keepdim=True)
        else:
            mask = ids != getattr(tower, "pad_id", 0)
        return states, mask

    def forward(
        self, images: torch.Tensor, texts: Sequence[str] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training view: (image features (B, E), text features (B, E), exp(logit_scale)); features normalised."""
        return self.encode_image(images), self.encode_text(texts), self.model.logit_scale.exp()

    def freeze(self) -> CLIPEncoder:
        """Eval mode and no gradients for any parameter (for frozen use as a teacher or prompt encoder)."""
        self.eval()
        self.requires_grad_(False)
        return self

    # -- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Project models: ``config.json`` (open_clip model cfg, preprocess cfg), ``tokenizer.json`` (vocabulary)
        and ``model.safetensors``. open_clip pretrained models are saved as a reference (name + tag) that
        :meth:`from_pretrained` resolves through :func:`load_clip` again (from the local cache or the hub)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.source is not None:
            config = {"format": "open_clip-reference", **self.source}
            (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
            return
        if not isinstance(self.tokenizer, WordTokenizer) or self.model_cfg is None:
            raise TypeError("save_pretrained needs a project CLIP (open_clip model cfg + WordTokenizer)")
        config = {
            "format": "discrete-visual-tokens/clip",
            "model_cfg": self.model_cfg,
            "preprocess_cfg": self.preprocess_cfg,
            "tokenizer": TOKENIZER_NAME,
        }
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        self.tokenizer.save(folder / TOKENIZER_NAME)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> CLIPEncoder:
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no CLIP folder at {str(folder)!r} (missing {CONFIG_NAME}); {OFFLINE_HINT}")
        config = json.loads((folder / CONFIG_NAME).read_text())
        if config.get("format") == "open_clip-reference":
            return load_clip(config["name"], config.get("pretrained")).to(device)
        tokenizer = WordTokenizer.load(folder / config.get("tokenizer", TOKENIZER_NAME))
        model = _build_open_clip(config["model_cfg"])
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return cls(model, tokenizer, config["preprocess_cfg"], config["model_cfg"]).to(device)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
    text_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over normalised features; ``logit_scale`` is already exponentiated.

    ``image_features`` (B, E) pair with the first B rows of ``text_features`` (B + N, E); the N extra rows are
    additional negatives (e.g. hard-negative captions) for the image->text direction only.

    ``groups`` (B,) ints mark pairs that share a caption (different scenes can have the same caption: same objects
    on another background), ``text_groups`` (B + N,) the same for every text row (needed when N > 0, so a
    hard negative that happens to equal another scene's caption counts as that scene's positive). The target of
    image row i is uniform over all text rows with its group, so no scene is pushed away from a caption that
    describes it; with all groups distinct and N = 0 this is the usual CLIP loss.
    Note: when shared captions also have *identical* text features (a deterministic text tower, no dropout or
    text augmentation), one-hot targets already give exactly the same loss and gradients: the duplicate columns of
    each image row carry equal logits, and the duplicate text rows are equal rows whose one-hot targets sum to the
    shared target. The soft target states the intent and stays correct if that changes.
    """
    b = image_features.shape[0]
    logits = logit_scale * image_features.float() @ text_features.float().T  # (B, B + N)
    if groups is None:
        targets = torch.arange(b, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits[:, :b].T, targets))
    if text_groups is None:
        if text_features.shape[0] != b:
            raise ValueError("text_groups is needed when there are extra (negative) text rows")
        text_groups = groups
    same = (groups[:, None] == text_groups[None, :]).float()  # (B, B + N)
    image_to_text = same / same.sum(dim=1, keepdim=True)
    text_to_image = same[:, :b].T / same[:, :b].T.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, image_to_text) + F.cross_entropy(logits[:, :b].T, text_to_image))


def _load_open_clip(name: str, pretrained: str | None) -> CLIPEncoder:
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained is None or (pretrained not in tags and not os.path.isfile(pretrained)):
            raise ValueError(
                f"open_clip model {name!r} needs a pretrained tag (or a checkpoint file), one of {tags}; "
                f"got {pretrained!r}"
            )
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None if has_schema else pretrained)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError) as err:
        raise RuntimeError(
            f"could not load open_clip model {name!r} with pretrained weights {pretrained!r}: this machine has "
            f"no Hugging Face hub access (offline) and the weights are not in the local cache; {OFFLINE_HINT}. "
            f"Cause: {err}"
        ) from err
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    return CLIPEncoder(model, tokenizer, preprocess_cfg, source={"name": name, "pretrained": pretrained})


def load_clip(name_or_path: str | os.PathLike, pretrained: str | None = None) -> CLIPEncoder:
    """A CLIP by folder or by open_clip name.

    - a folder written by :meth:`CLIPEncoder.save_pretrained` (e.g. :data:`DEFAULT_CLIP`): the project's CLIP, offline;
    - an open_clip model name with a pretrained tag (``load_clip("ViT-B-32", "laion2b_s34b_b79k")``) or an
      ``hf-hub:`` name: ``open_clip.create_model_and_transforms`` + ``open_clip.get_tokenizer``. Without hub
      access (and no cached weights) this raises a RuntimeError naming the model and tag.

    Returns a trainable :class:`CLIPEncoder` on the CPU; call ``.freeze()`` for frozen use.
    """
    name = os.fspath(name_or_path)
    if Path(name).is_dir():
        return CLIPEncoder.from_pretrained(name)
    if name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models():
        return _load_open_clip(name, pretrained)
    raise FileNotFoundError(f"{name!r} is neither a CLIP folder nor an open_clip model name; {OFFLINE_HINT}")
