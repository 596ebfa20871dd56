"""apply_pruning on the families added as rows of pruning.adapters.FAMILIES, images only: tiny random Qwen3-VL and
its MoE sibling (DeepStack features), Gemma 3 (bidirectional image blocks, sliding-window layers), LLaVA-NeXT and
LLaVA-OneVision (AnyRes tiles with image-newline tokens), InternVL, Idefics3, SmolVLM (tiles) and Mistral 3 (Pixtral,
native aspect ratio). Batches of 2 with different image sizes, aspect ratios or counts, and left padding.

Each family is checked the same way: keep_ratio=1.0 is the identity, remove() restores bit-identical outputs, SDPA
stays on, and pruned generate() equals the unpatched model run on the hand-pruned sequence (embeddings, mask,
original positions and whatever else the family indexes by position, gathered by hand here).
"""

import inspect

import pytest
import torch
import transformers
from test_pruning_models import PAD, TEXT, V_END, V_START, VIDEO, left_pad
from transformers import DynamicCache

from pruning import adapter_for, apply_pruning, compat

IMAGE = 99


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)


def qwen_rows(grids: list[list[int]], per_sample: list[list[int]], merge: int = 2) -> tuple[list, torch.Tensor]:
    """Prompts with images of the given ``(t, h, w)`` patch grids (``per_sample``: image indices of each sample)."""

    def image(n):
        return [V_START, *[IMAGE] * n, V_END]

    sizes = [t * h * w // merge**2 for t, h, w in grids]
    rows = []
    for b, images in enumerate(per_sample):
        row = [1, 5 + b]
        for i in images:
            row += [*image(sizes[i]), 20 + i]
        rows.append(row + [7, 8])
    return rows, torch.tensor(grids)


def tiny_qwen3_vl(moe: bool = False):
    torch.manual_seed(0)
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=32,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    text = dict(TEXT, head_dim=8, rope_parameters=rope)
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        config_cls, cls = transformers.Qwen3VLMoeConfig, transformers.Qwen3VLMoeForConditionalGeneration
    else:
        config_cls, cls = transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration
    config = config_cls(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
        attn_implementation="sdpa",
    )
    return cls(config).eval()


def qwen3_batch(model=None):
    """Sample 0: a square 8x8 and a wide 4x12 patch grid (16 + 12 tokens); sample 1: one tall 12x4 image."""
    rows, grids = qwen_rows([[1, 8, 8], [1, 4, 12], [1, 12, 4]], [[0, 1], [2]])
    ids, mask = left_pad(rows)
    g = torch.Generator().manual_seed(1)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(int(grids.prod(-1).sum()), 3 * 2 * 4 * 4, generator=g),
        image_grid_thw=grids,
        mm_token_type_ids=(ids == IMAGE).int(),
    )


BOI, EOI = 97, 96


def tiny_gemma3():
    """Sliding-window and full layers, a window shorter than the prompts, 2x2 pooled tokens per 32x32 image."""
    torch.manual_seed(0)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = dict(TEXT, head_dim=8, query_pre_attn_scalar=8, sliding_window=12)
    text["layer_types"] = ["sliding_attention", "full_attention"] * 2
    config = transformers.Gemma3Config(
        vision_config=vision,
        text_config=transformers.Gemma3TextConfig(**text),
        mm_tokens_per_image=4,
        image_token_index=IMAGE,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        attn_implementation="sdpa",
    )
    return transformers.Gemma3ForConditionalGeneration(config).eval()


def gemma3_batch(model=None):
    """Sample 0: two images; sample 1: one image (Gemma 3 resizes every image to one size), left padded."""

    def image():
        return [BOI, *[IMAGE] * 4, EOI]

    rows = [[2, 5, *image(), 6, *image(), 7, 8, 9], [2, 10, *image(), 11, 12]]
    ids, mask = left_pad(rows)
    g = torch.Generator().manual_seed(1)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=(ids == IMAGE).long(),
        pixel_values=torch.randn(3, 3, 32, 32, generator=g),
    )


def tiny_anyres(family: str):
    """LLaVA-NeXT / LLaVA-OneVision: 32x32 CLIP tiles (16 tokens each) and AnyRes grids up to 2x2 tiles."""
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    config_cls, cls = {
        "llava_next": (transformers.LlavaNextConfig, transformers.LlavaNextForConditionalGeneration),
        "llava_onevision": (transformers.LlavaOnevisionConfig, transformers.LlavaOnevisionForConditionalGeneration),
    }[family]
    config = config_cls(
        vision_config=vision,
        text_config=transformers.LlamaConfig(**TEXT),
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        image_token_index=IMAGE,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        attn_implementation="sdpa",
    )
    return cls(config).eval()


def anyres_batch(model):
    """Sample 0: a wide (32x64) and a tall (64x32) image; sample 1: one square 48x48 image (2x2 tiles), so the
    images have different tile grids and token counts; pixel tiles padded to the batch's most, as processors do."""
    sizes = torch.tensor([[32, 64], [64, 32], [48, 48]])
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 5, 3, 32, 32, generator=g)
    with torch.no_grad():
        counts = [len(f) for f in model.model.get_image_features(pixels, sizes).pooler_output]
    rows = [[1, 5, *[IMAGE] * counts[0], 6, *[IMAGE] * counts[1], 7, 8], [1, 10, *[IMAGE] * counts[2], 11, 12]]
    ids, mask = left_pad(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_sizes=sizes)


def tiny_internvl():
    """32x32 tiles of 4x4 patches, pixel-shuffled to 2x2 = 4 tokens per tile."""
    torch.manual_seed(0)
    vision = transformers.InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = transformers.InternVLConfig(
        vision_config=vision,
        text_config=transformers.Qwen2Config(**TEXT),
        image_token_id=IMAGE,
        image_seq_length=4,
        attn_implementation="sdpa",
    )
    return transformers.InternVLForConditionalGeneration(config).eval()


def tiled_batch(model, tiles_per_image=(2, 1, 3), tile_tokens=4):
    """Sample 0: a wide image in 2 tiles and a square one in 1; sample 1: a tall image in 3 tiles (InternVL /
    Idefics3 split an image into tiles by its aspect ratio, each tile a fixed number of tokens)."""
    counts = [t * tile_tokens for t in tiles_per_image]
    rows = [[1, 5, V_START, *[IMAGE] * counts[0], V_END, 6, V_START, *[IMAGE] * counts[1], V_END, 7, 8]]
    rows.append([1, 10, V_START, *[IMAGE] * counts[2], V_END, 11, 12])
    ids, mask = left_pad(rows)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(sum(tiles_per_image), 3, 32, 32, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)


def tiny_idefics(family: str):
    """Idefics3 / SmolVLM: 32x32 tiles of 4x4 patches, shuffled by 2 to 4 tokens per tile."""
    torch.manual_seed(0)
    names = {
        "idefics3": ("Idefics3VisionConfig", "Idefics3Config", "Idefics3ForConditionalGeneration"),
        "smolvlm": ("SmolVLMVisionConfig", "SmolVLMConfig", "SmolVLMForConditionalGeneration"),
    }[family]
    vision_cls, config_cls, cls = (getattr(transformers, name) for name in names)
    vision = vision_cls(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = config_cls(
        vision_config=vision,
        text_config=transformers.LlamaConfig(**TEXT),
        image_token_id=IMAGE,
        scale_factor=2,
        attn_implementation="sdpa",
    )
    return cls(config).eval()


def idefics_batch(model):
    """As ``tiled_batch`` with a 2-tile image in sample 1, the tiles as (batch, tiles, C, H, W): sample 1's third
    slot is an all-zero padding tile, which the model skips."""
    batch = tiled_batch(model, (2, 1, 2))
    tiles = batch.pop("pixel_values")
    pixels = torch.zeros(2, 3, 3, 32, 32)
    pixels[0], pixels[1, :2] = tiles[:3], tiles[3:]
    return dict(batch, pixel_values=pixels)


def tiny_mistral3():
    """Pixtral vision (native aspect ratio, 8-pixel patches) merged 2x2: an H x W image gives (H/16) x (W/16) tokens."""
    torch.manual_seed(0)
    vision = transformers.PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=64, patch_size=8
    )
    config = transformers.Mistral3Config(
        vision_config=vision,
        text_config=transformers.MistralConfig(**TEXT, head_dim=8),
        image_token_index=IMAGE,
        spatial_merge_size=2,
        attn_implementation="sdpa",
    )
    return transformers.Mistral3ForConditionalGeneration(config).eval()


def mistral3_batch(model):
    """Sample 0: a wide 32x64 and a tall 64x32 image; sample 1: a 48x48 one. Each row of image tokens ends in a
    break token and the image in an end token (text tokens), as Pixtral prompts do; pixels padded to 64x64."""
    sizes = [(32, 64), (64, 32), (48, 48)]

    def image(h, w):
        rows = [[IMAGE] * (w // 16) + [V_START] for _ in range(h // 16)]
        return [t for row in rows for t in row][:-1] + [V_END]

    rows = [[1, 5, *image(*sizes[0]), 6, *image(*sizes[1]), 7, 8], [1, 10, *image(*sizes[2]), 11, 12]]
    ids, mask = left_pad(rows)
    g = torch.Generator().manual_seed(1)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(3, 3, 64, 64, generator=g),
        image_sizes=torch.tensor(sizes),
    )


# family -> (build the tiny model, its batch 2)
FAMILY_CASES = {
    "qwen3_vl": (tiny_qwen3_vl, qwen3_batch),
    "qwen3_vl_moe": (lambda: tiny_qwen3_vl(moe=True), qwen3_batch),
    "gemma3": (tiny_gemma3, gemma3_batch),
    "llava_next": (lambda: tiny_anyres("llava_next"), anyres_batch),
    "llava_onevision": (lambda: tiny_anyres("llava_onevision"), anyres_batch),
    "internvl": (tiny_internvl, tiled_batch),
    "idefics3": (lambda: tiny_idefics("idefics3"), idefics_batch),
    "smolvlm": (lambda: tiny_idefics("smolvlm"), idefics_batch),
    "mistral3": (tiny_mistral3, mistral3_batch),
}
# todre with relevance_keep=1 runs its in-decoder hooks but keeps every token there, so a hand-pruned run matches
HAND_PRUNABLE = {
    "idpruner": {},
    "random": {"seed": 3},
    "importance": {"importance": "text"},
    "divprune": {},
    "todre": {"layer": 2, "relevance_keep": 1.0},
}
IN_DECODER = {"todre", "fastv"}


def accepts_in_decoder(family: str) -> bool:
    return family != "gemma3"


def stepwise_greedy(model, inputs_embeds, attention_mask, position_ids, steps: int = 4, **extra) -> torch.Tensor:
    """``greedy`` for models whose ``generate()`` takes no ``inputs_embeds`` (e.g. Gemma 3): a cached loop with explicit
    positions, padded after EOS as ``generate()`` does."""
    cache_arg = compat.cache_parameter(model.forward)
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_arg: DynamicCache()},
        **extra,
    )
    tokens = []
    for step in range(steps):
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
        if step + 1 < steps:
            attention_mask = torch.cat([attention_mask, torch.ones_like(tokens[-1])], 1)
            position_ids = position_ids[..., -1:] + 1
            cache = getattr(out, cache_arg)
            out = model(
                input_ids=tokens[-1], attention_mask=attention_mask, position_ids=position_ids, **{cache_arg: cache}
            )
    tokens = torch.cat(tokens, 1)
    done = (tokens == TEXT["eos_token_id"]).cumsum(1) - (tokens == TEXT["eos_token_id"]).long() > 0
    return tokens.masked_fill(done, PAD)


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def case(request):
    build, batch = FAMILY_CASES[request.param]
    model = build()
    return request.param, model, batch(model)


@torch.no_grad()
@pytest.mark.parametrize("method", ["idpruner", "todre", "fastv"])
def test_keep_all_is_identity_and_remove_restores(case, method):
    family, model, batch = case
    before = model(**batch).logits
    with apply_pruning(model, method=method, keep_ratio=1.0):
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-5, rtol=0)
    if method in IN_DECODER and not accepts_in_decoder(family):
        with pytest.raises(ValueError, match="prunes inside the decoder"):
            apply_pruning(model, method=method, keep_ratio=0.5)
    else:
        with apply_pruning(model, method=method, keep_ratio=0.5, layer=2):
            assert model(**batch).logits.shape[1] < before.shape[1]
            assert model.config.text_config._attn_implementation == "sdpa"
    assert torch.equal(model(**batch).logits, before)


@torch.no_grad()
def test_greedy_generation_unchanged_at_keep_all(case):
    _, model, batch = case
    expected = greedy(model, **batch)
    with apply_pruning(model, method="idpruner", keep_ratio=1.0):
        assert torch.equal(greedy(model, **batch), expected)


def capture_decoder_inputs(model):
    """Record what the decoder receives (registered before apply_pruning, so it sees it unpruned)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(dict(kwargs))

    return seen, adapter_for(model).language_model.register_forward_pre_hook(hook, with_kwargs=True)


def hand_pruned_deepstack(full: dict, kept: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Qwen3-VL: the visual mask and the DeepStack rows of the kept tokens, sample by sample."""
    where = full["visual_pos_masks"]
    new_where = torch.zeros(kept.shape, dtype=torch.bool)
    rows, offset = [], 0
    for b in range(kept.shape[0]):
        order = torch.cumsum(where[b].long(), 0) - 1 + offset  # row of each visual column of sample b
        for j, col in enumerate(kept[b].tolist()):
            if col >= 0 and where[b, col]:
                new_where[b, j] = True
                rows.append(int(order[col]))
        offset += int(where[b].sum())
    return new_where, [feature[rows] for feature in full["deepstack_visual_embeds"]]


@torch.no_grad()
@pytest.mark.parametrize("method", list(HAND_PRUNABLE))
def test_generate_equals_unpruned_model_on_hand_pruned_sequence(case, method):
    family, model, batch = case
    if method in IN_DECODER and not accepts_in_decoder(family):
        pytest.skip(f"{family} refuses in-decoder stages (tested above)")
    seen, capture = capture_decoder_inputs(model)
    with apply_pruning(model, method=method, keep_ratio=0.5, **HAND_PRUNABLE[method]) as handle:
        tokens = greedy(model, **batch)
        record = handle.last
        last_logits = model(**batch).logits[:, -1]
    capture.remove()
    full, kept = seen[0], handle.last.kept_index
    assert (record.kept_before_llm < record.visual_tokens).all()
    src = kept.clamp(min=0)
    embeds = full["inputs_embeds"].gather(1, src.unsqueeze(-1).expand(-1, -1, full["inputs_embeds"].shape[-1]))
    mask = (kept >= 0).long()
    n = batch["input_ids"].shape[1]
    positions = full.get("position_ids")
    if positions is None:
        positions = torch.arange(n).expand(2, n)
    lead = positions.dim() - 2
    positions = positions.gather(lead + 1, src.expand(*positions.shape[:lead], -1, -1))
    torch.testing.assert_close(record.position_ids, positions, atol=0, rtol=0)
    reference = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    if "token_type_ids" in batch:
        # Gemma 3 builds its bidirectional image blocks from these
        reference["token_type_ids"] = torch.where(kept >= 0, batch["token_type_ids"].gather(1, src), 0)

    inject = None
    if "deepstack_visual_embeds" in full:
        where, rows = hand_pruned_deepstack(full, kept)

        def add_deepstack(module, args, kwargs):
            # the unpatched outer model gets no pixels here, so hand the decoder the hand-pruned DeepStack rows
            if kwargs["inputs_embeds"].shape[1] == kept.shape[1]:
                kwargs.update(visual_pos_masks=where, deepstack_visual_embeds=rows)
            return args, kwargs

        inject = adapter_for(model).language_model.register_forward_pre_hook(add_deepstack, with_kwargs=True)
    try:
        takes_embeds = "inputs_embeds" in inspect.signature(model.prepare_inputs_for_generation).parameters
        expected = (greedy if takes_embeds else stepwise_greedy)(model, **reference)
        torch.testing.assert_close(last_logits, model(**reference).logits[:, -1], atol=1e-5, rtol=0)
    finally:
        if inject is not None:
            inject.remove()
    assert torch.equal(tokens[:, n:], expected)


@torch.no_grad()
def test_cached_generation_matches_recomputation(case):
    _, model, batch = case
    with apply_pruning(model, method="idpruner", keep_ratio=0.5):
        assert torch.equal(greedy(model, **batch), greedy(model, **batch, use_cache=False))


@torch.no_grad()
def test_manual_decode_step_continues_positions_and_mask(case):
    """A hand-written decode step (full-length mask, no positions) matches recomputing the extended prompt."""
    _, model, batch = case
    cache_arg = compat.cache_parameter(model.forward)
    with apply_pruning(model, method="idpruner", keep_ratio=0.5):
        prefill = model(**batch, **{cache_arg: DynamicCache()}, use_cache=True)
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        step = model(input_ids=token, attention_mask=mask, **{cache_arg: getattr(prefill, cache_arg)})
        extended = dict(batch, input_ids=torch.cat([batch["input_ids"], token], 1), attention_mask=mask)
        for name in ("mm_token_type_ids", "token_type_ids"):
            if name in batch:
                extended[name] = torch.cat([batch[name], torch.zeros_like(token).to(batch[name].dtype)], 1)
        reference = model(**extended).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], reference, atol=1e-5, rtol=1e-4)


def test_qwen3_vl_in_decoder_stage_must_follow_deepstack_layers():
    model = tiny_qwen3_vl()
    with pytest.raises(ValueError, match="first 2 decoder layers, so an in-decoder stage must start at layer 2"):
        apply_pruning(model, method="fastv", keep_ratio=0.5, layer=1)
    apply_pruning(model, method="fastv", keep_ratio=0.5, layer=2).remove()


def test_unsupported_model_lists_every_family():
    text_only = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT))
    with pytest.raises(ValueError, match="accepted models: .*Qwen3VLForConditionalGeneration.*Gemma3Model"):
        apply_pruning(text_only)
