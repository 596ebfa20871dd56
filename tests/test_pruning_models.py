"""apply_pruning on tiny random LLaVA and Qwen2-VL / Qwen2.5-VL models built from configs (no downloads)."""

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from pruning import METHODS, apply_pruning, compat
from pruning.compat import TransformersCompatibilityError, cache_parameter

IMAGE, VIDEO, V_START, V_END, PAD = 99, 98, 97, 96, 0
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)
TEXT.update(num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)


def tiny_llava(attn="sdpa"):
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_id=IMAGE, attn_implementation=attn
    )
    return LlavaForConditionalGeneration(config).eval()


def tiny_qwen(cls=Qwen2VLForConditionalGeneration, config_cls=Qwen2VLConfig, attn="sdpa"):
    torch.manual_seed(0)
    vision = dict(depth=1, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if cls is Qwen2VLForConditionalGeneration:
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32, fullatt_block_indexes=[0])
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    config = config_cls(
        vision_config=vision,
        text_config=dict(TEXT, rope_parameters=rope),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
        attn_implementation=attn,
    )
    return cls(config).eval()


def left_pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def llava_batch():
    """Sample 0: two images (2 x 16 visual tokens); sample 1: one image, so the prompts differ in length."""
    g = torch.Generator().manual_seed(1)
    rows = [[1, 5, *[IMAGE] * 16, 6, *[IMAGE] * 16, 7, 8, 9], [1, 10, *[IMAGE] * 16, 11, 12]]
    ids, mask = left_pad(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(3, 3, 32, 32, generator=g))


def qwen_batch():
    """Sample 0: images of 4x4 and 2x4 merged tokens (16 + 8); sample 1: one 4x4 image."""
    g = torch.Generator().manual_seed(1)
    grids = torch.tensor([[1, 8, 8], [1, 4, 8], [1, 8, 8]])
    patches = int(grids.prod(-1).sum())

    def image(n):
        return [V_START, *[IMAGE] * n, V_END]

    rows = [[1, 5, *image(16), 6, *image(8), 7, 8], [1, 10, *image(16), 11, 12, 13]]
    ids, mask = left_pad(rows)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(patches, 3 * 2 * 4 * 4, generator=g),
        image_grid_thw=grids,
        mm_token_type_ids=(ids == IMAGE).int(),
    )


MODELS = {
    "llava": (tiny_llava, llava_batch),
    "qwen2_vl": (tiny_qwen, qwen_batch),
    "qwen2_5_vl": (lambda: tiny_qwen(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig), qwen_batch),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_batch(request):
    build, batch = MODELS[request.param]
    return request.param, build(), batch()


def capture_decoder_inputs(model):
    """Record the kwargs the decoder receives (registered before apply_pruning, so it sees them unpruned)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_keep_all_is_identity_and_remove_restores(model_and_batch, method):
    _, model, batch = model_and_batch
    before = model(**batch).logits
    handle = apply_pruning(model, method=method, keep_ratio=1.0)
    torch.testing.assert_close(model(**batch).logits, before, atol=1e-5, rtol=0)
    handle.remove()
    handle = apply_pruning(model, method=method, keep_ratio=0.5)
    pruned = model(**batch).logits
    assert pruned.shape[1] < before.shape[1]
    handle.remove()
    assert torch.equal(model(**batch).logits, before)


@torch.no_grad()
def test_greedy_generation_unchanged_at_keep_all(model_and_batch):
    _, model, batch = model_and_batch
    expected = greedy(model, **batch)
    with apply_pruning(model, method="todre", keep_ratio=1.0):
        assert torch.equal(greedy(model, **batch), expected)


# todre with τ = 0 and todre-maxmin with relevance_keep=1 run their in-decoder hooks (gather, mask rebuild) but keep
# every token there
HAND_PRUNABLE = {
    "idpruner": {},
    "divprune": {},
    "importance": {"importance": "text"},
    "random": {"seed": 3},
    "todre": {"layer": 2, "relevance_threshold": 0.0},
    "todre-maxmin": {"layer": 2, "relevance_keep": 1.0},
}


@torch.no_grad()
@pytest.mark.parametrize("method", list(HAND_PRUNABLE))
def test_generate_equals_unpruned_model_on_hand_pruned_sequence(model_and_batch, method):
    """Batch 2 with different image counts: the patched model's greedy tokens equal the unpatched model's on the
    same sequence with the same visual tokens removed by hand (embeddings, mask and original positions gathered)."""
    _, model, batch = model_and_batch
    seen, capture = capture_decoder_inputs(model)
    with apply_pruning(model, method=method, keep_ratio=0.5, **HAND_PRUNABLE[method]) as handle:
        tokens = greedy(model, **batch)
        record = handle.last
    capture.remove()
    full = seen[0]
    kept = record.kept_index
    src = kept.clamp(min=0)
    embeds = full["inputs_embeds"].gather(1, src.unsqueeze(-1).expand(-1, -1, full["inputs_embeds"].shape[-1]))
    positions = full["position_ids"]
    lead = positions.dim() - 2
    positions = positions.gather(lead + 1, src.expand(*positions.shape[:lead], -1, -1))
    torch.testing.assert_close(record.position_ids, positions, atol=0, rtol=0)
    mask = (kept >= 0).long()
    if positions.dim() == 3 and positions.shape[0] == 4:
        positions = positions[1:]  # generate's own text-position row is not needed for a hand-built input
    reference = greedy(model, inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    assert torch.equal(tokens[:, batch["input_ids"].shape[1] :], reference)


@torch.no_grad()
@pytest.mark.parametrize("method", ["todre-maxmin", "fastv"])
def test_in_decoder_stage_removes_tokens(model_and_batch, method):
    _, model, batch = model_and_batch
    with apply_pruning(model, method=method, keep_ratio=0.5, layer=2) as handle:
        greedy(model, **batch)
        record = handle.last
    assert (record.kept_in_decoder < record.kept_before_llm).all()
    assert (record.kept_before_llm < record.visual_tokens).all() == (method == "todre-maxmin")


# τ > 1 and relevance_keep=0 make the in-decoder stage independent of the last token (every visual token goes), so
# recomputation can reproduce it
DETERMINISTIC = {
    "idpruner": {},
    "todre": {"layer": 2, "relevance_threshold": 1.01},
    "todre-maxmin": {"layer": 2, "relevance_keep": 0.0},
}


@torch.no_grad()
@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_cached_generation_matches_recomputation(model_and_batch, method):
    """KV-cache decoding continues positions and masks correctly: same tokens as re-running every step uncached."""
    _, model, batch = model_and_batch
    with apply_pruning(model, method=method, keep_ratio=0.5, **DETERMINISTIC[method]):
        assert torch.equal(greedy(model, **batch), greedy(model, **batch, use_cache=False))


def first_sample(family, batch):
    """Sample 0 alone (it has no padding): two images."""
    out = {k: v[:1] for k, v in batch.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if family == "llava":
        out["pixel_values"] = batch["pixel_values"][:2]
    else:
        out["image_grid_thw"] = batch["image_grid_thw"][:2]
        out["pixel_values"] = batch["pixel_values"][: int(out["image_grid_thw"].prod(-1).sum())]
    return out


@torch.no_grad()
@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_manual_decode_step_continues_positions(model_and_batch, method, with_mask):
    """A hand-written decode step (mask over the full sequence, or no mask; no position ids) matches recomputing
    the whole extended prompt: Qwen's rope_deltas and LLaVA's cache-length positions account for removed tokens."""
    family, model, batch = model_and_batch
    if not with_mask:
        batch = first_sample(family, batch)
    cache_arg = cache_parameter(model.forward)  # the name the installed transformers takes without a warning
    with apply_pruning(model, method=method, keep_ratio=0.5, **DETERMINISTIC[method]):
        prefill = model(**batch, **{cache_arg: DynamicCache()}, use_cache=True)
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        step_mask = {"attention_mask": mask} if with_mask else {}
        step = model(input_ids=token, **{cache_arg: getattr(prefill, cache_arg)}, **step_mask)
        extended = dict(batch, input_ids=torch.cat([batch["input_ids"], token], 1), attention_mask=mask)
        if "mm_token_type_ids" in batch:
            extended["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(token)], 1).int()
        reference = model(**extended).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], reference, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_kept_tokens_keep_original_positions(model_and_batch):
    family, model, batch = model_and_batch
    seen, capture = capture_decoder_inputs(model)
    with apply_pruning(model, method="idpruner", keep_ratio=0.25) as handle:
        model(**batch)
        record = handle.last
    capture.remove()
    n = batch["input_ids"].shape[1]
    full = seen[0].get("position_ids", torch.arange(n).expand(2, n))  # LLaVA's decoder default
    if family != "llava":
        # M-RoPE ids computed on the full sequence by the model itself
        mrope, _ = model.model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
        torch.testing.assert_close(full[-3:], mrope, atol=0, rtol=0)
    for b in range(2):
        cols = record.kept_index[b][record.kept_index[b] >= 0]
        assert torch.equal(record.position_ids[..., b, -len(cols) :], full[..., b, cols])
        assert torch.equal(record.attention_mask[b], (record.kept_index[b] >= 0).long())
        assert cols.diff().gt(0).all()  # original order
    visual = batch["input_ids"] == IMAGE
    assert torch.equal(record.visual_tokens, visual.sum(1))
    expected = torch.round(visual.sum(1) * 0.25).long()
    assert torch.equal(record.kept_before_llm, expected)


@torch.no_grad()
def test_todre_layer_stage_with_eager_and_sdpa_match():
    batch = llava_batch()
    outs = []
    for attn in ("sdpa", "eager"):
        model = tiny_llava(attn)
        with apply_pruning(model, method="todre-maxmin", keep_ratio=0.5, layer=2, relevance_keep=0.5):
            outs.append((model(**batch).logits, greedy(model, **batch)))
    # padding rows differ between attention implementations by design; the last token is what generation uses
    torch.testing.assert_close(outs[0][0][:, -1], outs[1][0][:, -1], atol=1e-5, rtol=0)
    assert torch.equal(outs[0][1], outs[1][1])


@torch.no_grad()
def test_fastv_prunes_only_inside_the_decoder():
    model = tiny_llava()
    batch = llava_batch()
    with apply_pruning(model, method="fastv", keep_ratio=0.25, layer=2) as handle:
        logits = model(**batch).logits
        record = handle.last
    assert torch.equal(record.kept_before_llm, record.visual_tokens)
    assert torch.equal(record.kept_in_decoder, torch.round(record.visual_tokens * 0.25).long())
    assert logits.shape[1] < record.attention_mask.shape[1]


@torch.no_grad()
def test_relevance_threshold_drops_all_visual_tokens():
    model = tiny_llava()
    with apply_pruning(model, method="todre", keep_ratio=0.5, layer=2, relevance_threshold=1.01) as handle:
        greedy(model, **llava_batch())
        assert handle.last.kept_in_decoder.eq(0).all()


def test_bad_model_and_bad_options_are_refused():
    text_only = LlamaForCausalLM(LlamaConfig(**TEXT))
    with pytest.raises(ValueError, match="accepted models: .*LlavaForConditionalGeneration"):
        apply_pruning(text_only)
    model = tiny_llava()
    for ratio in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"keep_ratio must be a number in \(0, 1\]"):
            apply_pruning(model, keep_ratio=ratio)
    with pytest.raises(ValueError, match="accepted: todre, todre-maxmin, idpruner"):
        apply_pruning(model, method="tome")
    with pytest.raises(ValueError, match="accepted: .*mmr_lambda"):
        apply_pruning(model, method="idpruner", lam=0.3)
    with pytest.raises(ValueError, match=r"layer must be in \[1, 3\]"):
        apply_pruning(model, method="todre", layer=4)
    handle = apply_pruning(model, keep_ratio=0.5)
    with pytest.raises(ValueError, match="already patched"):
        apply_pruning(model, keep_ratio=0.5)
    handle.remove()
    apply_pruning(model, keep_ratio=0.5).remove()


# ---- transformers compatibility: a call that does not look as expected raises, never decodes on ----------------

SUPPORTED = "supports transformers " + compat.OLDEST_TESTED


@torch.no_grad()
def test_cache_under_an_unknown_name_raises(monkeypatch):
    """Fakes the 5.24 rename (past_key_values -> cache): pruning that knows only the other name must refuse to
    decode instead of treating every step as a new prompt."""
    model, batch = tiny_llava(), llava_batch()
    installed = cache_parameter(model.model.language_model.forward)
    with apply_pruning(model, method="idpruner", keep_ratio=0.5):
        monkeypatch.setattr(compat, "CACHE_NAMES", tuple(n for n in compat.CACHE_NAMES if n != installed))
        with pytest.raises(TransformersCompatibilityError, match=f"passed as '{installed}'.*{SUPPORTED}"):
            greedy(model, **batch)


def test_decoder_without_known_cache_argument_is_refused(monkeypatch):
    model = tiny_llava()
    installed = cache_parameter(model.model.language_model.forward)
    monkeypatch.setattr(compat, "CACHE_NAMES", tuple(n for n in compat.CACHE_NAMES if n != installed))
    with pytest.raises(TransformersCompatibilityError, match=f"takes no cache argument.*{SUPPORTED}"):
        apply_pruning(model, method="idpruner", keep_ratio=0.5)
    assert not hasattr(model, "_pruning_handle")


@torch.no_grad()
def test_cache_length_mismatch_raises():
    """A cache that did not grow by exactly the decoded tokens would misalign masks and positions."""
    model, batch = tiny_llava(), llava_batch()
    cache_arg = cache_parameter(model.forward)
    with apply_pruning(model, method="idpruner", keep_ratio=0.5):
        prefill = model(**batch, **{cache_arg: DynamicCache()}, use_cache=True)
        cache = getattr(prefill, cache_arg)
        text = model.config.text_config
        extra = torch.zeros(2, text.num_key_value_heads, 1, text.hidden_size // text.num_attention_heads)
        for layer in range(text.num_hidden_layers):
            cache.update(extra, extra, layer)  # a token the hooks never saw
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        with pytest.raises(TransformersCompatibilityError, match=f"cache holds .* tokens.*{SUPPORTED}"):
            model(input_ids=token, attention_mask=mask, **{cache_arg: cache})


@torch.no_grad()
@pytest.mark.parametrize("dropped", ["cache", "position_embeddings"])
def test_missing_argument_in_the_hooked_call_raises(dropped):
    """Fakes a release whose outer model stops handing its cache to the decoder, or whose decoder stops handing
    rotary embeddings to its layers: the hooks raise instead of decoding on."""
    model, batch = tiny_llava(), llava_batch()
    if dropped == "cache":
        module, names = model.model.language_model, compat.CACHE_NAMES
    else:
        module, names = model.model.language_model.layers[2], ("position_embeddings",)

    def drop(module, args, kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in names}

    with apply_pruning(model, method="todre", keep_ratio=0.5, layer=2):
        module.register_forward_pre_hook(drop, with_kwargs=True, prepend=True)
        with pytest.raises(TransformersCompatibilityError, match=SUPPORTED):
            greedy(model, **batch)


def test_untested_transformers_version_is_named(monkeypatch):
    # the module compat reads: importing some transformers submodules may replace sys.modules["transformers"]
    monkeypatch.setattr(compat.transformers, "__version__", "99.0.0")
    model = tiny_llava()
    with pytest.warns(UserWarning, match=f"tested with transformers {compat.OLDEST_TESTED} to {compat.NEWEST_TESTED}"):
        apply_pruning(model, keep_ratio=0.5).remove()
