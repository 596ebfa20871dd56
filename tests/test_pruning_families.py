"""apply_pruning on the families added as rows of pruning.adapters.FAMILIES: tiny random Qwen3-VL and its MoE sibling
(DeepStack features), Gemma 3 (bidirectional image blocks, sliding-window layers), LLaVA-NeXT and LLaVA-OneVision
(AnyRes tiles with image-newline tokens), InternVL, Idefics3, SmolVLM (tiles) and Mistral 3 (Pixtral, native aspect
ratio), with images; and video mixed with images for Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision, with whole-clip and
per-frame budgets. Batches of 2 with different image sizes, aspect ratios, counts or frame counts, and left padding.

Each family is checked the same way: keep_ratio=1.0 is the identity, remove() restores bit-identical outputs, SDPA
stays on, and pruned generate() equals the unpatched model run on the hand-pruned sequence (embeddings, mask,
original positions and whatever else the family indexes by position, gathered by hand here).
"""

import functools
import inspect

import pytest
import torch
import transformers
from test_pruning_models import PAD, TEXT, V_END, V_START, VIDEO, left_pad, tiny_qwen
from transformers import DynamicCache

from pruning import PruneRecord, adapter_for, apply_pruning, compat

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


TIMESTAMP = 30  # the text token a Qwen3-VL prompt has before each video frame ("<t seconds>")


def qwen_video_batch(model, frames_apart: bool = False):
    """Sample 0: a video of 2 frames (temporal patches) of 8x8 patches (16 tokens each), then a 4x8 image (8 tokens);
    sample 1: a video of 3 frames of 4x8 patches (8 tokens each). Qwen3-VL prompts write each frame as a vision block
    of its own after a timestamp (``frames_apart``), Qwen2/2.5-VL one block per video. Qwen2.5-VL frames are one
    temporal position apart (``second_per_grid_ts``): at the default spacing (4) the last frame's temporal position
    passes that of the text after the video, and transformers' own cached decoding and recomputation then disagree on
    the next position, pruned or not."""
    videos, images = torch.tensor([[2, 8, 8], [3, 4, 8]]), torch.tensor([[1, 4, 8]])

    def video(t, h, w):
        frame = [VIDEO] * (h * w // 4)
        if frames_apart:
            return [x for f in range(t) for x in (TIMESTAMP + f, V_START, *frame, V_END)]
        return [V_START, *frame * t, V_END]

    rows = [[1, 5, *video(*videos[0].tolist()), 6, V_START, *[IMAGE] * 8, V_END, 7, 8]]
    rows.append([1, 10, *video(*videos[1].tolist()), 11, 12])
    ids, mask = left_pad(rows)
    g = torch.Generator().manual_seed(1)
    timing = (
        {}
        if frames_apart
        else {"second_per_grid_ts": torch.full((2,), 1 / model.config.vision_config.tokens_per_second)}
    )
    return dict(
        **timing,
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(int(images.prod(-1).sum()), 3 * 2 * 4 * 4, generator=g),
        image_grid_thw=images,
        pixel_values_videos=torch.randn(int(videos.prod(-1).sum()), 3 * 2 * 4 * 4, generator=g),
        video_grid_thw=videos,
        mm_token_type_ids=((ids == IMAGE).int() + 2 * (ids == VIDEO).int()),
    )


def tiny_anyres(family: str):
    """LLaVA-NeXT / LLaVA-OneVision: 32x32 CLIP tiles (16 tokens each) and AnyRes grids up to 2x2 tiles; OneVision
    pools each 32x32 video frame to 2x2 tokens."""
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
        **({"video_token_index": VIDEO} if family == "llava_onevision" else {}),
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


ONEVISION_FRAME_TOKENS = 4  # a 32x32 frame: 4x4 patches pooled to 2x2


def onevision_video_batch(model):
    """Sample 0: a wide image (AnyRes tiles), then a video; sample 1: a video. The videos are 3 frames of 32x32 and
    one image-newline token; the frame count is one for the batch (a single pixel_values_videos tensor)."""
    sizes = torch.tensor([[32, 64]])
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 5, 3, 32, 32, generator=g)
    with torch.no_grad():
        count = len(model.model.get_image_features(pixels, sizes).pooler_output[0])
    video = [VIDEO] * (3 * ONEVISION_FRAME_TOKENS + 1)
    rows = [[1, 5, *[IMAGE] * count, 6, *video, 7, 8], [1, 10, *video, 11, 12]]
    ids, mask = left_pad(rows)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        image_sizes=sizes,
        pixel_values_videos=torch.randn(2, 3, 3, 32, 32, generator=g),
    )


def frames_by_hand(batch: dict) -> torch.Tensor:
    """Frame of each video token ``(B, L)`` (numbered over the batch), -1 elsewhere: Qwen's ``video_grid_thw`` (t, h,
    w) gives t frames of h*w/4 tokens; a OneVision video is its frames' pooled tokens and a newline of no frame."""
    if "video_grid_thw" in batch:
        sizes = [h * w // 4 for t, h, w in batch["video_grid_thw"].tolist() for _ in range(t)]
        order = [f for f, n in enumerate(sizes) for _ in range(n)]
    else:
        videos, frames = batch["pixel_values_videos"].shape[:2]
        one = [f for f in range(frames) for _ in range(ONEVISION_FRAME_TOKENS)]
        order = [f + v * frames if f >= 0 else -1 for v in range(videos) for f in [*one, -1]]
    where = batch["input_ids"] == VIDEO
    out = torch.full(where.shape, -1)
    out[where] = torch.tensor(order)
    return out


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
    # video mixed with images
    "qwen2_5_vl_video": (
        lambda: tiny_qwen(transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig),
        qwen_video_batch,
    ),
    "qwen3_vl_video": (tiny_qwen3_vl, lambda model: qwen_video_batch(model, frames_apart=True)),
    "llava_onevision_video": (lambda: tiny_anyres("llava_onevision"), onevision_video_batch),
}
VIDEO_CASES = [name for name in FAMILY_CASES if name.endswith("_video")]
# todre with τ = 0 and todre-maxmin with relevance_keep=1 run their in-decoder hooks but keep every token there, so a
# hand-pruned run matches
HAND_PRUNABLE = {
    "idpruner": {},
    "random": {"seed": 3},
    "importance": {"importance": "text"},
    "divprune": {},
    "todre": {"layer": 2, "relevance_threshold": 0.0},
    "todre-maxmin": {"layer": 2, "relevance_keep": 1.0},
}
# τ > 1 makes todre's in-decoder stage independent of the last token (every visual token goes), so recomputation can
# reproduce it
DETERMINISTIC = {"idpruner": {}, "todre": {"layer": 2, "relevance_threshold": 1.01}}


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


@functools.cache
def built(name: str) -> tuple[torch.nn.Module, dict]:
    build, batch = FAMILY_CASES[name]
    model = build()
    return model, batch(model)


@pytest.fixture(params=list(FAMILY_CASES))
def case(request):
    return request.param, *built(request.param)


@torch.no_grad()
@pytest.mark.parametrize("method", ["idpruner", "todre", "fastv"])
def test_keep_all_is_identity_and_remove_restores(case, method):
    _, model, batch = case
    before = model(**batch).logits
    with apply_pruning(model, method=method, keep_ratio=1.0):
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-5, rtol=0)
    with apply_pruning(model, method=method, keep_ratio=0.5, layer=2) as handle:
        assert model(**batch).logits.shape[1] < before.shape[1]
        assert model.config.text_config._attn_implementation == "sdpa"
    if method == "fastv":  # the in-decoder stage ran (todre's may keep every token: all or nothing)
        assert (handle.last.kept_in_decoder < handle.last.kept_before_llm).all()
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


def check_against_hand_pruned(model, batch: dict, method: str, **options) -> PruneRecord:
    """Pruned greedy tokens and last logits equal the unpatched model's on the sequence pruned by hand (the kept
    tokens' embeddings, mask and original positions, and what else the family indexes by position); returns what
    the prefill kept."""
    seen, capture = capture_decoder_inputs(model)
    with apply_pruning(model, method=method, keep_ratio=0.5, **options) as handle:
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
    return record


@torch.no_grad()
@pytest.mark.parametrize("method", list(HAND_PRUNABLE))
def test_generate_equals_unpruned_model_on_hand_pruned_sequence(case, method):
    _, model, batch = case
    check_against_hand_pruned(model, batch, method, **HAND_PRUNABLE[method])


@torch.no_grad()
@pytest.mark.parametrize("family", VIDEO_CASES)
def test_per_frame_keeps_the_same_share_of_every_frame(family):
    model, batch = built(family)
    record = check_against_hand_pruned(model, batch, "idpruner", per_frame=True)
    kept = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for b in range(2):
        kept[b, record.kept_index[b][record.kept_index[b] >= 0]] = True
    frames = frames_by_hand(batch)
    sizes = torch.bincount(frames[frames >= 0])
    assert len(sizes) >= 5
    kept_per_frame = torch.bincount(frames[kept & (frames >= 0)], minlength=len(sizes))
    assert torch.equal(kept_per_frame, torch.round(sizes * 0.5).long())
    # the rest of each sample's visual tokens (its images; OneVision's video newline) keeps half of them together
    rest = record.visual_tokens - (frames >= 0).sum(1)
    rest_kept = record.kept_before_llm - (kept & (frames >= 0)).sum(1)
    assert torch.equal(rest_kept, torch.where(rest > 0, torch.round(rest * 0.5).long().clamp(min=1), 0))


def layer_inputs(layers, first: int) -> tuple[dict, list]:
    """Record the mask and rotary embeddings each layer from ``first`` on receives in its first call."""
    seen = {}

    def make(idx):
        def hook(module, args, kwargs):
            seen.setdefault(idx, (kwargs["attention_mask"], kwargs["position_embeddings"]))

        return hook

    return seen, [layers[i].register_forward_pre_hook(make(i), with_kwargs=True) for i in range(first, len(layers))]


@torch.no_grad()
def test_gemma3_layers_after_in_decoder_pruning_get_the_models_own_masks():
    """After todre-maxmin drops visual tokens at a sliding-window layer, each later layer (sliding and full) gets the
    mask and rotary embeddings of its type that Gemma 3 itself builds for the kept tokens: causal, windows counted in
    kept tokens, bidirectional within what is left of each image."""
    model, batch = built("gemma3")
    layers = adapter_for(model).layers
    with apply_pruning(model, method="todre-maxmin", keep_ratio=0.75, layer=2, relevance_keep=0.5) as handle:
        seen, hooks = layer_inputs(layers, 2)  # registered after pruning's hooks: sees what the layers get
        model(**batch)
        record = handle.last
    for hook in hooks:
        hook.remove()
    assert (record.kept_in_decoder < record.kept_before_llm).all() and (record.kept_in_decoder > 0).all()
    at_layer = record.kept_in_decoder_index
    valid = at_layer >= 0
    columns = record.kept_index.gather(1, at_layer.clamp(min=0))
    reference = dict(
        inputs_embeds=torch.zeros(*at_layer.shape, model.config.text_config.hidden_size),
        attention_mask=valid.long(),
        position_ids=record.position_ids.gather(1, at_layer.clamp(min=0)),
        token_type_ids=torch.where(valid, batch["token_type_ids"].gather(1, columns.clamp(min=0)), 0),
    )
    expected, hooks = layer_inputs(layers, 2)
    model.model(**reference)
    for hook in hooks:
        hook.remove()
    assert {model.config.text_config.layer_types[i] for i in seen} == {"sliding_attention", "full_attention"}
    for idx, (mask, (cos, sin)) in seen.items():
        want_mask, (want_cos, want_sin) = expected[idx]
        assert torch.equal(mask, want_mask), idx
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin), idx


@torch.no_grad()
@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_cached_generation_matches_recomputation(case, method):
    """KV-cache decoding continues positions and masks (of every layer type, from the in-decoder layer on too) as
    re-running every step uncached does."""
    _, model, batch = case
    with apply_pruning(model, method=method, keep_ratio=0.5, **DETERMINISTIC[method]):
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


def test_per_frame_needs_a_selection_before_the_llm_and_video_frames():
    model, _ = built("qwen2_5_vl_video")
    with pytest.raises(ValueError, match="per_frame sets the budgets of the selection before the LLM"):
        apply_pruning(model, method="fastv", keep_ratio=0.5, per_frame=True)
    model, _ = built("internvl")
    with pytest.raises(ValueError, match="per_frame needs a family whose videos split into frames .*qwen2_5_vl"):
        apply_pruning(model, method="idpruner", keep_ratio=0.5, per_frame=True)


def test_unsupported_model_lists_every_family():
    text_only = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT))
    with pytest.raises(ValueError, match="accepted models: .*Qwen3VLForConditionalGeneration.*Gemma3Model"):
        apply_pruning(text_only)
