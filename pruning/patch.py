"""``apply_pruning``: plug a pruning method into one model instance with forward pre-hooks, undone by ``remove()``.

How it works (no class or global patching; only hooks on this instance's modules):

- A pre-hook on the outer multimodal model records where the visual placeholder tokens are (from ``input_ids``).
- A pre-hook on the decoder (``language_model``) sees the merged ``inputs_embeds``, the 2D ``attention_mask`` and the
  position ids of the *full* sequence (M-RoPE for Qwen, computed by the model before anything is removed). At prefill
  it selects visual tokens per sample, drops the others together with any padding, re-pads on the left and gathers
  embeddings, mask and position ids, so every kept token keeps its original position.
- Pre-hooks on decoder layers ``layer..end`` (ToDRE, FastV) apply the method's in-decoder decision, made from one
  layer's attention recomputed from its Q/K (``layer``; FastV: the layer before it), and remove the visual tokens it
  drops (and so their KV) from that layer on.
- For a [CLS] pivot (``todre``), hooks on the vision tower record the [CLS] attention (``pruning.pivot``).
- While decoding on the same cache, callers keep passing full-length masks and positions (as ``generate()`` does);
  the hooks translate the mask to the shorter cache, and positions the model would infer from the cache length are
  shifted by the number of removed tokens. For Qwen the model's ``rope_deltas`` stay those of the full sequence, and a
  missing decode mask is replaced by a full-length one so that positions continue from the full prompt.
- Family data (``pruning.adapters.FAMILIES``) covers the rest: decoder inputs with one row per visual token (Qwen3-VL's
  DeepStack features) lose the rows of pruned tokens, and where the outer model builds the decoder's mask itself
  (Gemma 3, bidirectional inside images) the outer hook takes the 2D mask away from it and the decoder hook builds
  the family's mask for the shortened sequence.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from . import compat
from .adapters import FAMILIES, Adapter, adapter_for
from .methods import PruningMethod
from .pivot import ClsAttention


@dataclass
class PruneRecord:
    """What the last prefill kept (for inspection and tests).

    Attributes:
        kept_index: ``(B, L_kept)`` column of each kept token in the original sequence, -1 for new left padding.
        attention_mask: ``(B, L_kept)`` mask of the shortened sequence.
        position_ids: position ids handed to the decoder for the shortened sequence (same layout as the model's).
        visual_tokens: ``(B,)`` visual tokens per sample before pruning.
        kept_before_llm: ``(B,)`` visual tokens per sample at the decoder input.
        kept_in_decoder: ``(B,)`` visual tokens per sample after the in-decoder stage, or None without one.
        kept_in_decoder_index: ``(B, L_layer)`` column in the decoder's input (``kept_index``'s columns) of each token
            kept from the in-decoder stage's layer on, -1 for new left padding; None without that stage.
    """

    kept_index: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    visual_tokens: torch.Tensor
    kept_before_llm: torch.Tensor
    kept_in_decoder: torch.Tensor | None = None
    kept_in_decoder_index: torch.Tensor | None = None


@dataclass
class _Session:
    """State of one pruned prefill, valid while decoding continues on the same cache."""

    cache: weakref.ref | None
    full_len: int  # original (padded) prompt length
    pruned_len: int  # prompt length at the decoder input (cache length of the layers before `layer`)
    decoded: int  # tokens appended to the cache after the prefill
    mask: torch.Tensor  # (B, pruned_len)
    visual: torch.Tensor  # (B, pruned_len) visual-token flags of the shortened sequence
    layer_mask: torch.Tensor | None = None  # (B, L2) prompt mask from the in-decoder layer on


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned gather plan. keep ``(B, L)`` bool -> source columns ``(B, L')`` and validity ``(B, L')``, with each
    row's kept columns in original order, right-aligned (left padding), ``L' = max kept``."""
    counts = keep.sum(1)
    width = int(counts.max())
    first = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept columns first, in order
    col = torch.arange(width, device=keep.device)[None] - (width - counts)[:, None]
    valid = col >= 0
    return first.gather(1, col.clamp(min=0)), valid


def _gather_tokens(x: torch.Tensor, src: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
    """Gather along the token axis (the dim after ``batch_dim``), broadcasting a batch of one. src ``(B, L')``."""
    shape = list(x.shape)
    shape[batch_dim] = src.shape[0]
    x = x.expand(shape)
    index = src.view(*([1] * batch_dim), *src.shape, *([1] * (x.dim() - batch_dim - 2)))
    index = index.expand(*shape[:batch_dim], *src.shape, *shape[batch_dim + 2 :])
    return x.gather(batch_dim + 1, index)


def _gather_positions(position_ids: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Position ids ``(B|1, L)`` or ``(R, B|1, L)`` (M-RoPE) gathered to ``(…, B, L')``."""
    return _gather_tokens(position_ids, src, batch_dim=position_ids.dim() - 2)


class PruningHandle:
    """Returned by ``apply_pruning``; ``remove()`` detaches every hook and leaves the model exactly as it was."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, method: PruningMethod) -> None:
        self.model = model
        self.adapter = adapter
        self.method = method
        self.layer = method.decoder_layer(len(adapter.layers)) if method.prunes_in_decoder else None
        self.last: PruneRecord | None = None
        self._session: _Session | None = None
        self._visual: torch.Tensor | None = None  # visual flags of the current outer call
        self._video: torch.Tensor | None = None  # video-token flags of the current outer call (per_frame)
        self._outer_cache = None  # the cache the current outer call received; the decoder must receive it too
        self._outer_mask: tuple | None = None  # (2D mask, mask inputs) taken from an outer model that builds masks
        self._step: dict | None = None  # per-forward state shared by the layer hooks
        types = getattr(adapter.text_config, "layer_types", None) or ["full_attention"] * len(adapter.layers)
        self._layer_types: tuple[str, ...] = tuple(types)
        self._hooks = []
        model._pruning_handle = self  # marks the instance so that a second patch is refused
        if method.active:
            self._hooks.append(adapter.outer.register_forward_pre_hook(self._outer_hook, with_kwargs=True))
            self._hooks.append(adapter.language_model.register_forward_pre_hook(self._decoder_hook, with_kwargs=True))
        if self.layer is not None:
            for idx in range(self.layer, len(adapter.layers)):
                hook = self._make_layer_hook(idx)
                self._hooks.append(adapter.layers[idx].register_forward_pre_hook(hook, with_kwargs=True))
            scoring = method.scoring_layer(len(adapter.layers))
            if scoring < self.layer:  # FastV: layer K-1's attention ranks the tokens removed at the input of layer K
                hook = adapter.layers[scoring].register_forward_pre_hook(self._score_early, with_kwargs=True)
                self._hooks.append(hook)
        self._cls = ClsAttention.attach(adapter.outer) if method.needs_cls_attention else None
        if self._cls is not None:
            self._hooks.extend(self._cls.hooks)

    def remove(self) -> None:
        """Detach all hooks and drop the pruning state."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._cls = None
        self._session = self._visual = self._video = self._step = self._outer_cache = self._outer_mask = None
        if getattr(self.model, "_pruning_handle", None) is self:
            del self.model._pruning_handle

    def __enter__(self) -> PruningHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ---- decoding continuation -------------------------------------------------------------------------------

    def _continuing(self, cache) -> bool:
        s = self._session
        return (
            s is not None
            and cache is not None
            and s.cache is not None
            and s.cache() is cache
            and cache.get_seq_length() > 0
        )

    def _full_past(self) -> int:
        """Tokens seen so far in the original coordinates (the cache is shorter by the removed tokens)."""
        s = self._session
        return s.full_len + s.decoded

    def _outer_hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        cache = compat.cache_from(kwargs)
        self._visual = self._video = self._outer_mask = None
        self._outer_cache = cache
        if self._continuing(cache):
            if kwargs.get("attention_mask") is None:
                # a missing mask means "no padding" in original coordinates; make that explicit so the model
                # (Qwen: mask cumsum + rope_deltas) continues positions from the full prompt length
                new = (input_ids if input_ids is not None else embeds).shape[:2]
                kwargs["attention_mask"] = torch.ones(
                    new[0], self._full_past() + new[1], dtype=torch.long, device=self._session.mask.device
                )
            self._take_outer_mask(kwargs, {})
        elif cache is None or cache.get_seq_length() == 0:
            self._visual = self.adapter.visual_mask(input_ids, embeds)
            if self.method.per_frame:
                self._video = self.adapter.visual_mask(input_ids, embeds, (self.adapter.video_token_id,))
            if self._visual.any():
                self._take_outer_mask(kwargs, {name: kwargs.get(name) for name in self.adapter.family.mask_inputs})
        return args, kwargs

    def _take_outer_mask(self, kwargs: dict, inputs: dict) -> None:
        """Where the outer model builds the decoder's mask, it would build it for the full sequence: keep its 2D mask
        (and the inputs the mask depends on) for the decoder hook and let it build a throwaway causal one."""
        mask = kwargs.get("attention_mask")
        if self.adapter.family.mask_builder is None or not (mask is None or isinstance(mask, torch.Tensor)):
            return  # a prepared (dict / 4D) mask reaches the decoder hook, which refuses it
        self._outer_mask = (mask, inputs)
        kwargs["attention_mask"] = None

    def _decoder_hook(self, module, args, kwargs):
        cache = compat.cache_from(kwargs)
        self._step = None
        outer, self._outer_cache = self._outer_cache, None
        taken, self._outer_mask = self._outer_mask, None
        if outer is not None and cache is not outer:
            raise compat.TransformersCompatibilityError(
                "the outer model received a KV cache but its decoder received none or another one"
            )
        if taken is not None:
            kwargs["attention_mask"] = taken[0]
        if self._continuing(cache):
            kwargs, mask_inputs = self._continue(kwargs, cache), {}
        else:
            (visual, video), self._visual, self._video = (self._visual, self._video), None, None
            if visual is None or not visual.any():
                self._session = None
                return args, kwargs
            kwargs, mask_inputs = self._prefill(kwargs, visual, video, cache, taken[1] if taken is not None else {})
        if taken is not None:
            kwargs["attention_mask"] = self.adapter.decoder_mask(
                kwargs["inputs_embeds"], kwargs["attention_mask"], cache, kwargs.get("position_ids"), mask_inputs
            )
        return args, kwargs

    def _continue(self, kwargs: dict, cache) -> dict:
        s = self._session
        if cache.get_seq_length() != s.pruned_len + s.decoded:
            # the cache was not extended by exactly the decoded tokens: masks and positions would be misaligned
            raise compat.TransformersCompatibilityError(
                f"the KV cache holds {cache.get_seq_length()} tokens where the pruned prefill ({s.pruned_len}) plus "
                f"the decoded tokens ({s.decoded}) make {s.pruned_len + s.decoded}"
            )
        embeds = kwargs["inputs_embeds"]
        b, q = embeds.shape[:2]
        full_past = self._full_past()
        s.decoded += q
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(b, full_past + q, dtype=s.mask.dtype, device=embeds.device)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] != full_past + q:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                "after pruning, decoding steps need a 2D attention_mask over the full (unpruned) sequence "
                f"of length {full_past + q}, or none; got {got}"
            )
        new = mask[:, s.full_len :].to(s.mask.dtype)
        kwargs["attention_mask"] = torch.cat([s.mask, new], dim=1)
        positions = kwargs.get("position_ids")
        if positions is None:
            # what the model would infer from an unpruned cache
            kwargs["position_ids"] = (torch.arange(q, device=embeds.device) + full_past).unsqueeze(0).expand(b, -1)
        elif positions.shape[-1] != q:
            # Qwen2-VL derives decode positions from the whole mask's cumsum without keeping the new columns only
            kwargs["position_ids"] = positions[..., -q:]
        if self.layer is not None:
            self._step = {"new_mask": new}
        return kwargs

    # ---- prefill ---------------------------------------------------------------------------------------------

    def _prefill(
        self, kwargs: dict, visual: torch.Tensor, video: torch.Tensor | None, cache, mask_inputs: dict
    ) -> tuple[dict, dict]:
        """Shorten the decoder's inputs; returns them and ``mask_inputs`` gathered the same way. ``video``: the
        video-token flags ``(B, L)`` when budgets are per frame."""
        embeds = kwargs["inputs_embeds"]
        b, n = embeds.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.long, device=embeds.device)
        elif not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError("pruning needs a 2D attention_mask (batch, sequence) or none; 4D/dict masks are refused")
        real = mask.bool()
        visual = visual.to(embeds.device) & real
        positions = kwargs.get("position_ids")
        if positions is None:
            # the decoder's own default, made explicit before the sequence gets shorter
            positions = torch.arange(n, device=embeds.device).unsqueeze(0).expand(b, -1)

        keep = real.clone()
        frames = None
        if video is not None and video.any():
            frames = self.adapter.video_frames(video.to(embeds.device), kwargs.get("position_ids"))
        if self.method.prunes_before_llm:
            keep &= ~visual | self._select_visual(embeds, visual, real, frames)
        src, valid = _compact(keep)
        new_mask = valid.to(mask.dtype)
        kwargs["inputs_embeds"] = _gather_tokens(embeds, src)
        kwargs["attention_mask"] = new_mask
        kwargs["position_ids"] = _gather_positions(positions, src)
        kept_visual = visual.gather(1, src) & valid
        self._gather_visual_rows(kwargs, src, valid)
        mask_inputs = {k: torch.where(valid, v.gather(1, src), 0) for k, v in mask_inputs.items() if v is not None}

        self._session = _Session(
            cache=weakref.ref(cache) if cache is not None else None,
            full_len=n,
            pruned_len=src.shape[1],
            decoded=0,
            mask=new_mask,
            visual=kept_visual,
        )
        self.last = PruneRecord(
            kept_index=torch.where(valid, src, -1),
            attention_mask=new_mask,
            position_ids=kwargs["position_ids"],
            visual_tokens=visual.sum(1),
            kept_before_llm=kept_visual.sum(1),
        )
        if self.layer is not None:
            self._step = {"prefill": True, "mask_inputs": mask_inputs}
        return kwargs, mask_inputs

    def _gather_visual_rows(self, kwargs: dict, src: torch.Tensor, valid: torch.Tensor) -> None:
        """Decoder inputs with one row per visual token (``Family.visual_rows``) keep the rows of kept tokens."""
        for rows_name, where_name in self.adapter.family.visual_rows:
            where, rows = kwargs.get(where_name), kwargs.get(rows_name)
            if where is None or rows is None:
                continue
            where = where.to(src.device).bool()
            rank = (where.flatten().cumsum(0) - 1).view_as(where)  # row of each visual position
            kept = where.gather(1, src) & valid
            index = rank.gather(1, src)[kept]
            if isinstance(rows, torch.Tensor):
                kwargs[rows_name] = rows[index.to(rows.device)]
            else:
                kwargs[rows_name] = [r[index.to(r.device)] for r in rows]
            kwargs[where_name] = kept

    def _select_visual(
        self, embeds: torch.Tensor, visual: torch.Tensor, real: torch.Tensor, frames: torch.Tensor | None
    ) -> torch.Tensor:
        """Stage 1 on each sample's visual embeddings or, with ``frames`` ``(B, L)`` (per_frame), on each video frame
        and on each sample's other visual tokens; returns the kept visual positions ``(B, L)`` bool."""
        b, n = visual.shape
        group = torch.arange(b, device=visual.device)[:, None].expand(b, n)  # one selection per sample
        if frames is not None:
            frames = frames.to(visual.device)
            group = torch.where(frames >= 0, frames + b, group)  # one per frame; the rest of a sample stays one
        flat = torch.where(visual, group, -1).flatten()
        pos = (flat >= 0).nonzero().squeeze(1)  # visual tokens in row-major order
        _, group = torch.unique(flat[pos], return_inverse=True)  # groups numbered 0..G-1
        order = torch.argsort(group, stable=True)
        pos, group = pos[order], group[order]
        counts = torch.bincount(group)
        slot = torch.arange(len(pos), device=pos.device) - (counts.cumsum(0) - counts)[group]
        src = torch.full((len(counts), int(counts.max())), -1, dtype=torch.long, device=pos.device)
        src[group, slot] = pos  # each group's tokens in original order, padding at the end: (G, N)
        valid = src >= 0
        features = embeds.flatten(0, 1)[src.clamp(min=0)]
        text = None
        if self.method.importance == "text":
            prompt = (real & ~visual).unsqueeze(-1).to(embeds.dtype)
            text = ((embeds * prompt).sum(1) / prompt.sum(1).clamp(min=1))[src[:, 0] // n]
        cls = self._cls.scores(features, valid) if self._cls is not None else None
        picked = self.method.select_before_llm(features, valid, text, cls)  # (G, K) into each group's tokens
        columns = src.gather(1, picked.clamp(min=0))[picked >= 0]
        keep = torch.zeros(b * n, dtype=torch.bool, device=visual.device)
        keep[columns] = True
        return keep.view(b, n)

    # ---- in-decoder stage ------------------------------------------------------------------------------------

    def _make_layer_hook(self, idx: int):
        def hook(module, args, kwargs):
            step = self._step
            if step is None:
                return args, kwargs
            compat.check_layer_call(idx, kwargs)
            if idx == self.layer:
                if step.get("prefill"):
                    args, kwargs = self._prune_at_layer(module, args, kwargs)
                else:
                    hidden = args[0] if args else kwargs["hidden_states"]
                    mask2d = torch.cat([self._session.layer_mask, step["new_mask"]], dim=1)
                    step["masks"] = self._layer_masks(hidden, mask2d, compat.cache_from(kwargs))
            kwargs["attention_mask"] = step["masks"][self._layer_types[idx]]
            if "src" in step:  # prefill: this layer's rotary embeddings (one pair per layer type) of the kept tokens
                cos, sin = kwargs["position_embeddings"]
                kwargs["position_embeddings"] = (_gather_tokens(cos, step["src"]), _gather_tokens(sin, step["src"]))
            if "position_ids" in step:
                kwargs["position_ids"] = step["position_ids"]
            return args, kwargs

        return hook

    def _score_early(self, module, args, kwargs):
        """At prefill, the in-decoder stage's decision from this (earlier) layer's attention, applied at ``layer``."""
        if self._step is not None and self._step.get("prefill"):
            compat.check_layer_call(self.layer - 1, kwargs)
            hidden = args[0] if args else kwargs["hidden_states"]
            s = self._session
            self._step["keep"] = self.method.keep_in_decoder(
                module, hidden, kwargs["position_embeddings"], s.mask.bool(), s.visual
            )

    def _prune_at_layer(self, layer, args, kwargs):
        s = self._session
        step = self._step
        hidden = args[0] if args else kwargs.pop("hidden_states")
        real = s.mask.bool()
        visual = s.visual
        kept = step.pop("keep", None)
        if kept is None:
            kept = self.method.keep_in_decoder(layer, hidden, kwargs["position_embeddings"], real, visual)
        src, valid = _compact(real & (~visual | kept))
        hidden = _gather_tokens(hidden, src)
        step["src"] = src
        if kwargs.get("position_ids") is not None:
            step["position_ids"] = _gather_positions(kwargs["position_ids"], src)
        s.layer_mask = valid.to(s.mask.dtype)
        inputs = {k: torch.where(valid, v.gather(1, src), 0) for k, v in step["mask_inputs"].items()}
        cache = compat.cache_from(kwargs)
        step["masks"] = self._layer_masks(hidden, s.layer_mask, cache, step.get("position_ids"), inputs)
        self.last.kept_in_decoder = (visual.gather(1, src) & valid).sum(1)
        self.last.kept_in_decoder_index = torch.where(valid, src, -1)
        return (hidden, *args[1:]), kwargs

    def _layer_masks(
        self,
        hidden: torch.Tensor,
        mask2d: torch.Tensor,
        cache,
        position_ids: torch.Tensor | None = None,
        mask_inputs: dict | None = None,
    ) -> dict:
        """The masks of layers ``layer..end`` for their (shorter) keys, by layer type, in the attention
        implementation's form. Each is sized by the cache of the first such layer of its type (layers before
        ``layer`` cache more tokens). At prefill, a family that builds its own masks (Gemma 3's bidirectional image
        blocks) builds them from the kept tokens' ``mask_inputs``, with no cache: these layers have cached nothing."""
        if mask_inputs is not None and self.adapter.family.mask_builder is not None:
            return self.adapter.decoder_mask(hidden, mask2d, None, position_ids, mask_inputs)
        first: dict[str, int] = {}
        for idx in range(self.layer, len(self._layer_types)):
            first.setdefault(self._layer_types[idx], idx)
        config = self.adapter.text_config
        return {kind: compat.causal_mask(config, hidden, mask2d, cache, idx, kind) for kind, idx in first.items()}


def apply_pruning(model: torch.nn.Module, method: str = "idpruner", keep_ratio: float = 0.25, **method_kwargs):
    """Prune visual tokens of a Hugging Face VLM in place; returns a handle whose ``remove()`` undoes it.

    Args:
        model: a model of a supported family (``pruning.SUPPORTED_MODELS``: LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
            Gemma 3, …; the ``*ForConditionalGeneration`` or the bare ``*Model``).
        method: one of ``pruning.METHODS``: ``"todre"``, ``"todre-maxmin"``, ``"idpruner"``, ``"random"``,
            ``"importance"``, ``"divprune"``, ``"fastv"``.
        keep_ratio: fraction of visual tokens kept, in (0, 1]; 1.0 leaves the model's outputs unchanged.
        **method_kwargs: options of ``pruning.PruningMethod`` (``importance``, ``pivot``, ``mmr_lambda``, ``diversity``,
            ``layer``, ``relevance_keep``, ``relevance_threshold``, ``seed``, ``per_frame``: one budget per video
            frame).

    Returns:
        ``PruningHandle``; ``handle.last`` describes the latest pruned prefill.

    Notes:
        Works with batches (different numbers of images or visual tokens per sample: each sample is pruned on its
        own and re-padded on the left), SDPA/eager attention and ``generate()`` with a ``DynamicCache``. In-decoder
        stages (``todre``, ``todre-maxmin``, ``fastv``) recompute one layer's attention from Q/K, so they need no
        eager attention, but they need a cache whose layers may hold different lengths (``DynamicCache``). Outputs
        (logits, hidden states) cover the shortened sequence; the pruned model is meant for inference, not for
        training with ``labels``.
    """
    spec = PruningMethod.create(method, keep_ratio, **method_kwargs)
    adapter = adapter_for(model)
    compat.check_version()
    compat.check_interfaces(adapter.language_model, adapter.layers if spec.prunes_in_decoder else None)
    if getattr(model, "_pruning_handle", None) is not None:
        raise ValueError("this model is already patched; call remove() on its current handle first")
    if spec.per_frame and spec.row.before_llm is None:
        raise ValueError(f"per_frame sets the budgets of the selection before the LLM, which {method!r} does not have")
    if spec.per_frame and adapter.family.video_frames is None:
        with_video = sorted(f.name for f in FAMILIES if f.video_frames is not None)
        raise ValueError(
            f"per_frame needs a family whose videos split into frames ({', '.join(with_video)}), not "
            f"{adapter.family.name}"
        )
    if spec.prunes_in_decoder:
        types = set(getattr(adapter.text_config, "layer_types", None) or ()) - set(compat.LAYER_MASKS)
        if types:
            # the layer hooks rebuild each layer type's mask for the shortened sequence
            raise ValueError(
                f"{method!r} prunes inside the decoder, which supports layers of types {', '.join(compat.LAYER_MASKS)}"
                f", not {', '.join(sorted(types))}"
            )
        layer, depth = spec.decoder_layer(len(adapter.layers)), adapter.rows_depth()
        if layer < depth:
            raise ValueError(
                f"{method!r} at layer {layer}: {adapter.family.name} adds visual features to the outputs of its first "
                f"{depth} decoder layers, so an in-decoder stage must start at layer {depth} or later"
            )
    return PruningHandle(model, adapter, spec)
