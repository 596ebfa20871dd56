"""Video, 1D and dual-codebook tokenizers, semantic teachers and the moving-shape videos, on tiny configs."""

from __future__ import annotations

import pytest
import torch

from tokenizers_vis import create_tokenizer
from tokenizers_vis.clip import CLIPEncoder
from tokenizers_vis.data.language import DIRECTIONS
from tokenizers_vis.data.videos import MovingShapes
from tokenizers_vis.dual_tokenizer import DualTokenizer
from tokenizers_vis.teacher import SemanticTeacher, _from_clip
from tokenizers_vis.titok import OneDTokenizer
from tokenizers_vis.video_tokenizer import VideoTokenizer

TINY_VIDEO = dict(channels=(16, 32, 32), norm_groups=8, embed_dim=8, codebook_size=64)


def tiny_teacher() -> SemanticTeacher:
    torch.manual_seed(0)
    clip = CLIPEncoder.create(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1)
    return _from_clip(clip, "tiny")


# ---- moving shapes -----------------------------------------------------------------------------------------------


def test_moving_shapes_move_as_captioned():
    data = MovingShapes(16, frames=9, seed=3, textured_prob=0.0)  # plain backgrounds: exact centroids
    assert data[0]["video"].shape == (9, 3, 64, 64)
    for i in range(len(data)):
        clip = data.describe(i)
        obj = clip["objects"][0]
        assert clip["caption"].endswith(f"moving {obj['direction']}")
        dx, dy = DIRECTIONS[obj["direction"]]
        moved = (obj["end"][0] - obj["start"][0], obj["end"][1] - obj["start"][1])
        assert moved == pytest.approx((0.4 * dx, 0.4 * dy))
        # the object's colour centroid follows the motion in the rendered pixels
        video = data[i]["video"]
        centres = []
        for t in (0, -1):
            frame = video[t]
            mask = (frame - frame.mean((1, 2), keepdim=True)).abs().sum(0) > 0.8
            ys, xs = torch.nonzero(mask, as_tuple=True)
            centres.append((xs.float().mean() / 64, ys.float().mean() / 64))
        for axis, step in enumerate((dx, dy)):
            delta = float(centres[1][axis] - centres[0][axis])
            assert delta == pytest.approx(0.4 * step, abs=0.06), (clip["caption"], axis, delta)
    again = MovingShapes(16, frames=9, seed=3, textured_prob=0.0)
    assert torch.equal(again[5]["video"], data[5]["video"])


def test_moving_shapes_refuse_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        MovingShapes(split="test")
    with pytest.raises(ValueError, match="travel"):
        MovingShapes(travel=0.9)


# ---- video tokenizer ---------------------------------------------------------------------------------------------


def test_video_tokenizer_shapes_and_images_as_one_frame():
    model = VideoTokenizer(**TINY_VIDEO).eval()
    video = torch.rand(2, 9, 3, 32, 32) * 2 - 1
    indices = model.encode(video)
    assert indices.shape == (2, 3, 4, 4)
    assert model.decode(indices).shape == (2, 9, 3, 32, 32)
    image = video[:, 0]
    assert model.encode(image).shape == (2, 1, 4, 4)
    # the first frame is coded alone: its tokens are the image's tokens
    assert torch.equal(model.encode(image)[:, 0], indices[:, 0])
    with pytest.raises(ValueError, match="1 \\+ 4"):
        model.encode(torch.zeros(1, 8, 3, 32, 32))


def test_video_f4_preset_keeps_four_times_finer_grids():
    model = create_tokenizer("video-f4t4").eval()
    with torch.no_grad():
        indices = model.encode(torch.zeros(1, 9, 3, 64, 64))
    assert indices.shape == (1, 3, 16, 16)  # 9 frames of 64x64 -> 3 latent frames of 16 x 16
    f4 = VideoTokenizer(**{**TINY_VIDEO, "channels": (16, 32)}, spatial_factor=4).eval()
    assert f4.decode(f4.encode(torch.zeros(2, 5, 3, 32, 32))).shape == (2, 5, 3, 32, 32)
    with pytest.raises(ValueError, match="needs 2 channel levels"):
        VideoTokenizer(**TINY_VIDEO, spatial_factor=4)


def test_video_encoder_is_causal():
    torch.manual_seed(0)
    model = VideoTokenizer(**TINY_VIDEO).eval()
    video = torch.rand(1, 13, 3, 32, 32) * 2 - 1
    changed = video.clone()
    changed[:, 5:] = torch.rand_like(changed[:, 5:])  # frames after latent frame 1 (input frames 1..4)
    a, b = model.encode(video), model.encode(changed)
    assert torch.equal(a[:, :2], b[:, :2])
    with torch.no_grad():
        za, zb = model.encoder(model._as_video(video)), model.encoder(model._as_video(changed))
    assert torch.equal(za[:, :, :2], zb[:, :, :2]) and not torch.equal(za[:, :, 2:], zb[:, :, 2:])


def test_video_tokenizer_learns_and_round_trips(tmp_path, fit_tokenizer):
    torch.manual_seed(0)
    model = VideoTokenizer(**TINY_VIDEO)
    videos = torch.stack([MovingShapes(4, resolution=32, frames=5)[i]["video"] for i in range(4)])
    losses = fit_tokenizer(model, videos)
    assert losses[-1] < 0.5 * losses[0]
    model.save_pretrained(tmp_path)
    loaded = VideoTokenizer.from_pretrained(tmp_path).eval()
    model.eval()
    assert torch.equal(loaded.encode(videos), model.encode(videos))


# ---- 1D tokenizer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cnn_channels", "raster_prior"), [(None, False), ((16, 32, 32), False), (None, True)])
def test_1d_tokenizer_token_count_is_independent_of_resolution(cnn_channels, raster_prior):
    for size in (32, 64):
        model = OneDTokenizer(
            image_size=size,
            num_tokens=8,
            width=32,
            encoder_depth=1,
            decoder_depth=1,
            heads=2,
            cnn_channels=cnn_channels,
            norm_groups=8,
            raster_prior=raster_prior,
        )
        images = torch.rand(2, 3, size, size) * 2 - 1
        indices = model.eval().encode(images)
        assert indices.shape == (2, 8)
        assert model.decode(indices).shape == (2, 3, size, size)
    with pytest.raises(ValueError, match="expected images"):
        model.encode(torch.zeros(1, 3, 48, 48))


# ---- dual codebook -----------------------------------------------------------------------------------------------


def test_dual_tokenizer_returns_both_grids_and_aligns():
    torch.manual_seed(0)
    model = DualTokenizer(
        channels=(16, 32, 32),
        norm_groups=8,
        embed_dim=8,
        pixel_codebook_size=32,
        semantic_codebook_size=16,
        semantic_dim=32,
    )
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    semantic, pixel = model.eval().encode(images)
    assert semantic.shape == pixel.shape == (2, 4, 4)
    assert semantic.max() < 16 and pixel.max() < 32
    assert model.decode(semantic, pixel).shape == (2, 3, 32, 32)
    teacher = tiny_teacher()
    target = teacher(images)
    model.train()
    _, losses = model(images, semantic_target=target)
    assert "semantic" in losses and 0 <= losses["semantic"] <= 2
    losses["loss"].backward()
    assert model.semantic_proj[0].weight.grad is not None
