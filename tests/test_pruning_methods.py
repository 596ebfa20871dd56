"""Methods as their papers define them, on tiny random models: ToDRE's [CLS] pivot and all-or-nothing decoder stage,
FastV's layer K-1 ranking, checked against the attention maps of eager attention."""

import pytest
import torch
from test_pruning_families import anyres_batch, tiny_anyres
from test_pruning_models import IMAGE, greedy, llava_batch, tiny_llava

from pruning import apply_pruning, relevance


def spy(monkeypatch, module, name):
    """Record the return values of ``module.name``."""
    seen, original = [], getattr(module, name)

    def recorded(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, name, recorded)
    return seen


def visual_blocks(batch):
    """Per sample, the positions of its visual tokens in the prompt."""
    return [row.nonzero().squeeze(1) for row in batch["input_ids"] == IMAGE]


def hand_pruned(model, batch, kept_index, **extra):
    """The unpatched model on the stage-1 sequence (kept tokens' embeddings, original positions)."""
    embeds = model.get_input_embeddings()(batch["input_ids"])
    features = model.model.get_image_features(batch["pixel_values"]).pooler_output
    embeds = embeds.masked_scatter((batch["input_ids"] == IMAGE).unsqueeze(-1), torch.cat(list(features)))
    src = kept_index.clamp(min=0)
    positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0).gather(1, src)
    embeds = embeds.gather(1, src.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return dict(inputs_embeds=embeds, attention_mask=(kept_index >= 0).long(), position_ids=positions, **extra)


@torch.no_grad()
def test_todre_pivot_is_the_cls_attention_argmax():
    """LLaVA (CLIP tower, vision_feature_layer=-2 of 2 layers: layer 0's attention): the pivot is the patch with the
    highest [CLS] attention of eager attention, over all images of a sample; the model keeps SDPA."""
    model, batch = tiny_llava(), llava_batch()
    attn = tiny_llava("eager").model.vision_tower(batch["pixel_values"], output_attentions=True).attentions[0]
    cls = attn[:, :, 0, 1:].mean(1)  # (images, patches)
    images = [[0, 1], [2]]  # sample 0 holds two images, sample 1 one
    with apply_pruning(model, "todre", keep_ratio=0.25) as handle:
        seen = []
        scores = handle._cls.scores
        handle._cls.scores = lambda *a: seen.append(scores(*a)) or seen[-1]
        greedy(model, **batch)  # generate() encodes the images before the model's forward
        kept = handle.last.kept_index
    assert model.config.vision_config._attn_implementation == "sdpa"
    for b, blocks in enumerate(visual_blocks(batch)):
        per_image = cls[images[b]]
        value, flat = per_image.flatten().max(0)
        assert int(seen[0][b].argmax()) == int(flat)  # 16 tokens per image, in order
        torch.testing.assert_close(seen[0][b].max(), value)
        assert seen[0][b].isfinite().sum() == len(images[b])  # one mapped patch per image
        assert int(blocks[flat]) in kept[b].tolist()  # the pivot is kept


@torch.no_grad()
def test_todre_pivot_uses_the_anyres_thumbnail():
    """LLaVA-NeXT: each image's first crop (the global thumbnail) decides; its patches come first in the image's
    tokens."""
    model = tiny_anyres("llava_next")
    batch = anyres_batch(model)
    eager = tiny_anyres("llava_next")
    eager.model.vision_tower.config._attn_implementation = "eager"
    thumbs = batch["pixel_values"][:, 0]  # the first crop of each image
    cls = eager.model.vision_tower(thumbs, output_attentions=True).attentions[-1][:, :, 0, 1:].mean(1)
    counts = [len(f) for f in model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output]
    with apply_pruning(model, "todre", keep_ratio=0.25) as handle:
        seen = []
        scores = handle._cls.scores
        handle._cls.scores = lambda *a: seen.append(scores(*a)) or seen[-1]
        model(**batch)
    for b, images in enumerate([[0, 1], [2]]):
        offsets = [0, counts[0]] if b == 0 else [0]
        value, best = cls[images].max(1)
        i = int(value.argmax())
        assert int(seen[0][b].argmax()) == offsets[i] + int(best[i])
        torch.testing.assert_close(seen[0][b].max(), value[i])


def eager_shares(attn, kept_index, batch):
    """ToDRE's shares from an eager attention map (B, H, L, L) of the stage-1 sequence."""
    visual = (batch["input_ids"].gather(1, kept_index.clamp(min=0)) == IMAGE) & (kept_index >= 0)
    text = (kept_index >= 0) & ~visual
    probs = attn.mean(1)
    after = text & (visual.cumsum(1) > 0)
    tv = ((probs @ visual.float().unsqueeze(-1)).squeeze(-1) * after).sum(1) / after.sum(1)
    vt = ((probs @ text.float().unsqueeze(-1)).squeeze(-1) * visual).sum(1) / visual.sum(1)
    return tv, vt


@torch.no_grad()
def test_todre_drops_all_visual_tokens_exactly_when_both_shares_are_low(monkeypatch):
    model, batch = tiny_llava(), llava_batch()
    shares = spy(monkeypatch, relevance, "attention_shares")
    with apply_pruning(model, "todre", keep_ratio=0.5, layer=2, relevance_threshold=0.0) as handle:
        model(**batch)
        kept = handle.last.kept_index
    tv, vt = shares[0]
    eager = tiny_llava("eager")
    attn = eager(**hand_pruned(eager, batch, kept), output_attentions=True).attentions[2]
    expected = eager_shares(attn, kept, batch)
    torch.testing.assert_close((tv, vt), expected, atol=1e-5, rtol=1e-4)
    # τ between the larger shares of the two samples: the sample whose shares are both below τ drops all its visual
    # tokens, the other (one share above τ, the other below) keeps them all
    high = torch.maximum(tv, vt)
    tau = float(high.mean())
    low = int(high.argmin())
    assert torch.minimum(tv, vt)[1 - low] < tau < high[1 - low]
    with apply_pruning(model, "todre", keep_ratio=0.5, layer=2, relevance_threshold=tau) as handle:
        tokens = greedy(model, **batch)
        record = handle.last
    assert record.kept_in_decoder[low] == 0
    assert record.kept_in_decoder[1 - low] == record.kept_before_llm[1 - low]
    # the sample that keeps its tokens generates what the unpatched model generates on the stage-1 sequence
    reference = greedy(model, **hand_pruned(model, batch, record.kept_index))
    keep = 1 - low
    assert torch.equal(tokens[keep, batch["input_ids"].shape[1] :], reference[keep])


@torch.no_grad()
def test_fastv_ranks_by_the_attention_of_layer_k_minus_1():
    """FastV at layer K = 2 keeps the visual tokens the last token attends to most in layer 1's eager attention map
    (the model itself runs SDPA)."""
    model, batch = tiny_llava(), llava_batch()
    eager = tiny_llava("eager")
    attn = eager(**batch, output_attentions=True).attentions[1].mean(1)[:, -1]  # last token's row (left padding)
    with apply_pruning(model, "fastv", keep_ratio=0.25, layer=2) as handle:
        model(**batch)
        record = handle.last
    for b, blocks in enumerate(visual_blocks(batch)):
        k = int(record.kept_in_decoder[b])
        expected = blocks[attn[b, blocks].topk(k).indices].sort().values
        columns = record.kept_index[b].gather(0, record.kept_in_decoder_index[b].clamp(min=0))
        kept = columns[(record.kept_in_decoder_index[b] >= 0)]
        assert torch.equal(kept[torch.isin(kept, blocks)], expected)


def test_unknown_method_and_options_are_refused():
    model = tiny_llava()
    with pytest.raises(ValueError, match="accepted: todre, todre-maxmin, idpruner, random, importance, divprune"):
        apply_pruning(model, method="todre-v2")
    with pytest.raises(ValueError, match="accepted: diversity, importance, layer, mmr_lambda, .*pivot, relevance_keep"):
        apply_pruning(model, method="todre", tau=0.1)
    with pytest.raises(ValueError, match="unknown pivot"):
        apply_pruning(model, method="todre", pivot="first")
    assert not hasattr(model, "_pruning_handle")
