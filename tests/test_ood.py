"""The out-of-distribution test sets: disjoint from every tokenizer run's training data by construction, and
measured by the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenizers_vis import TrainConfig, create_tokenizer, evaluate_tokenizer
from tokenizers_vis.data import (
    FLAT_KINDS,
    PHOTO_SPLITS,
    SHAPES,
    FlatShapes,
    PhotoPatches,
    SyntheticScenes,
    render_flat_scene,
)
from tokenizers_vis.data.flat_shapes import MAX_ASPECT
from tokenizers_vis.data.scenes import _UNIT_POLYGONS
from tokenizers_vis.evaluation import evaluate_ood, ood_images, reconstruction_psnr
from tokenizers_vis.training import training_sets


def _aspect(polygon: np.ndarray) -> float:
    """Narrowest over widest extent of a convex polygon (directions every degree): a flat shape's ``aspect`` bounds
    it from above (equal for ellipses, smaller for rectangles)."""
    angles = np.deg2rad(np.arange(180))
    extents = [np.ptp(polygon @ np.array([np.cos(a), np.sin(a)])) for a in angles]
    return min(extents) / max(extents)


def test_ood_scenes_use_shapes_the_scene_renderer_cannot_draw():
    # The scene renderer draws only SHAPES: circles (aspect 1) and unit polygons, all wider than any flat shape
    assert min(_aspect(p) for p in _UNIT_POLYGONS.values()) > MAX_ASPECT
    assert set(_UNIT_POLYGONS) | {"circle"} == set(SHAPES) and not set(FLAT_KINDS) & set(SHAPES)
    for palette in ("classic", "wide"):
        scenes = SyntheticScenes(100, 16, "train", palette=palette)
        assert all(
            o["shape"] in SHAPES and -10 <= o.get("angle", 0) <= 10
            for i in range(100)
            for o in scenes.describe(i)["objects"]
        )
    flat = FlatShapes(100, 16, seed=0)
    for i in range(100):
        objects = flat.describe(i)["objects"]
        assert 1 <= len(objects) <= 4
        assert all(o["kind"] in FLAT_KINDS and o["aspect"] <= MAX_ASPECT for o in objects)
    assert torch.equal(FlatShapes(3, 16, seed=0)[2]["image"], flat[2]["image"])  # deterministic in (seed, index)
    assert not torch.equal(FlatShapes(3, 16, seed=1)[2]["image"], flat[2]["image"])


def test_render_flat_scene_paints_objects_over_a_plain_background():
    obj = {"kind": "rectangle", "color": (250, 250, 0), "center": (0.5, 0.5), "length": 0.5, "aspect": 0.5, "angle": 0}
    image = render_flat_scene((0, 0, 90), [obj], 32)
    assert tuple(image[16, 16]) == (250, 250, 0) and tuple(image[2, 2]) == (0, 0, 90)
    assert tuple(image[16 + 6, 16]) == (0, 0, 90)  # 8 px half-length, 4 px half-width: y + 6 is outside


def test_training_photos_and_ood_photos_come_from_different_photographs():
    cfg = TrainConfig(output_dir="", train_samples=40, photo_fraction=0.25, resolution=16)
    scenes, photos = training_sets(cfg)
    assert isinstance(scenes, SyntheticScenes) and scenes.palette == "wide" and len(scenes) == 30
    assert isinstance(photos, PhotoPatches) and photos.split == "train" and len(photos) == 10
    ood = PhotoPatches(10, 16, "heldout")
    assert set(photos.sources) <= set(PHOTO_SPLITS["train"]) and not set(photos.sources) & set(ood.sources)
    assert [type(d) for d in training_sets(TrainConfig(output_dir="", photo_fraction=0.0))] == [SyntheticScenes]
    assert training_sets(TrainConfig(output_dir="", data="photos", train_samples=8))[0].split == "train"


def test_evaluate_ood_on_every_family():
    sets = ood_images(4, 32, seed=0)
    assert set(sets) == {"ood_scenes", "ood_photos"} and sets["ood_scenes"].shape == (4, 3, 32, 32)
    torch.manual_seed(0)
    for preset in ("vq-f8-tiny", "video-tiny", "dual-f8-tiny"):
        scores = evaluate_ood(create_tokenizer(preset), sets)
        assert set(scores) == {"psnr_ood_scenes", "psnr_ood_photos"} and all(np.isfinite(list(scores.values())))
    model = create_tokenizer("vq-f8-tiny")
    assert reconstruction_psnr(model, sets["ood_photos"]) == pytest.approx(
        evaluate_tokenizer(model, sets["ood_photos"])["psnr"], abs=1e-4
    )


def test_reconstruction_grid_shows_heldout_then_each_ood_set(tmp_path):
    from PIL import Image

    from tokenizers_vis.visuals import save_reconstructions

    sets, heldout = ood_images(16, 16, seed=0), torch.rand(64, 3, 16, 16) * 2 - 1
    save_reconstructions(create_tokenizer("vq-f8-tiny"), heldout, tmp_path, sets)
    grid = np.asarray(Image.open(tmp_path / "reconstructions.png"), dtype=np.int16)
    assert grid.shape[0] == 1 + 16 * 17  # 8 rows of originals, each above its reconstructions

    def tile(row: int, col: int) -> np.ndarray:
        return grid[1 + 17 * row : 17 * (row + 1), 1 + 17 * col : 17 * (col + 1)]

    def pixels(image: torch.Tensor) -> np.ndarray:
        return (image.permute(1, 2, 0).numpy() * 127.5 + 127.5).round()

    # rows of originals: held-out 0, 2, 4, 6; flat-shape scenes 8, 10; held-out photos 12, 14
    assert np.abs(tile(6, 7) - pixels(heldout[31])).max() <= 1
    assert np.abs(tile(10, 3) - pixels(sets["ood_scenes"][11])).max() <= 1
    assert np.abs(tile(14, 0) - pixels(sets["ood_photos"][8])).max() <= 1
