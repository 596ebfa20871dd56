"""Tests for tokenizers_vis.data: synthetic scenes, photo patches, image folders, shards and the factory."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader
from user_images import write_shard

from tokenizers_vis.data import (
    COLORS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    ImageFolderDataset,
    PhotoPatches,
    SyntheticScenes,
    WebDatasetShards,
    build_dataset,
    collate_images,
    render_scene,
)


def _pairs(labels: torch.Tensor) -> set[tuple[str, str]]:
    return {(SHAPES[s], COLORS[c]) for s, c, _, _ in labels.tolist() if s >= 0}


def _skip_warnings(recorded) -> list:
    return [w for w in recorded if "skip" in str(w.message)]


# ----------------------------------------------------------------------------------------------- scenes


def test_scenes_deterministic_and_seed_dependent():
    a, b = SyntheticScenes(20, seed=0), SyntheticScenes(20, seed=0)
    for i in (0, 7, 19):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
        assert torch.equal(a[i]["image"], x["image"])
    other = SyntheticScenes(20, seed=1)
    assert any(other[i]["caption"] != a[i]["caption"] for i in range(5))
    assert not torch.equal(other[0]["image"], a[0]["image"])


@pytest.mark.parametrize("resolution", [32, 96])
def test_scenes_shape_range_and_labels(resolution):
    ds = SyntheticScenes(40, resolution=resolution, max_objects=3)
    for i in range(len(ds)):
        item = ds[i]
        image, labels, caption = item["image"], item["labels"], item["caption"]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert labels.shape == (3, 4) and labels.dtype == torch.long
        n = item["num_objects"]
        assert 1 <= n <= 3 and (labels[n:] == -1).all() and (labels[:n] >= 0).all()
        assert labels[:n, 3].tolist() == sorted(set(labels[:n, 3].tolist()))  # distinct cells, reading order
        phrases = [
            f"a {SIZES[z]} {COLORS[c]} {SHAPES[s]} at the {POSITIONS[cell]}" for s, c, z, cell in labels[:n].tolist()
        ]
        assert all(p in caption for p in phrases)
        # Phrases appear in label order and nothing else is described.
        assert [caption.index(p) for p in phrases] == sorted(caption.index(p) for p in phrases)
        assert caption.count(" at the ") == n


def test_scene_splits_respect_heldout_pairs():
    train, heldout = SyntheticScenes(300, 16, "train"), SyntheticScenes(300, 16, "heldout")
    novel = SyntheticScenes(150, 16, "novel")
    for ds in (train, heldout):
        for i in range(len(ds)):
            pairs = {(o["shape"], o["color"]) for o in ds.describe(i)["objects"]}
            assert not pairs & HELDOUT_PAIRS
    for i in range(len(novel)):
        assert {(o["shape"], o["color"]) for o in novel.describe(i)["objects"]} & HELDOUT_PAIRS
    assert _pairs(novel[0]["labels"]) & HELDOUT_PAIRS and not _pairs(train[0]["labels"]) & HELDOUT_PAIRS
    assert sum(train.describe(i)["caption"] != heldout.describe(i)["caption"] for i in range(50)) > 40
    assert not torch.equal(train[0]["image"], heldout[0]["image"])


def test_render_scene_from_minimal_description_is_antialiased():
    objects = [{"shape": "circle", "color": "red", "size": "large", "cell": 4}]
    image = render_scene(objects, None, 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert tuple(image[24, 24]) == (230, 25, 25)  # centre of the centre cell is the object colour
    assert tuple(image[2, 2]) != (230, 25, 25)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 4  # blended edge pixels exist


def test_scenes_work_with_dataloader_workers():
    ds = SyntheticScenes(16, 32)
    assert pickle.loads(pickle.dumps(ds))[3]["caption"] == ds[3]["caption"]
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_images)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[1]
    assert batch["image"].shape == (8, 3, 32, 32) and batch["labels"].shape == (8, 3, 4)
    assert batch["caption"] == [ds[i]["caption"] for i in range(8, 16)]
    assert torch.equal(batch["image"][0], ds[8]["image"])


# ----------------------------------------------------------------------------------------------- photos


def test_photo_patches():
    train, heldout = PhotoPatches(30, 48, "train"), PhotoPatches(30, 48, "heldout")
    assert not set(train.sources) & set(heldout.sources)
    for ds in (train, heldout):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 48, 48) and item["caption"] == ""
            assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
            assert item["source"] in ds.sources
    again = PhotoPatches(30, 48, "train")
    assert torch.equal(again[5]["image"], train[5]["image"]) and again[5]["source"] == train[5]["source"]
    assert not torch.equal(PhotoPatches(30, 48, "train", seed=3)[5]["image"], train[5]["image"])


# ----------------------------------------------------------------------------------------------- folders


def _save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _noise(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def messy_folder(tmp_path: Path) -> tuple[Path, set[str]]:
    root = tmp_path / "images"
    _save(_noise(), root / "a.png")
    _save(_noise(seed=1), root / "b.jpg", quality=90)
    if features.check("webp"):
        _save(_noise(seed=2), root / "c.webp")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (5, 5, 15, 15))
    _save(rgba, root / "sub" / "d.png")
    (root / "sub" / "d.txt").write_text("a blue square on white\n")
    _save(_noise(seed=3), root / "sub" / "deeper" / "e.bmp")
    # Valid but unusual modes.
    _save(Image.fromarray(np.full((16, 24), 32768, dtype=np.uint16)), root / "gray16.png")
    _save(_noise(seed=4).convert("P"), root / "palette.png")
    _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), root / "cmyk.jpg")
    # Bad files.
    (root / "empty.png").write_bytes(b"")
    data = io.BytesIO()
    _noise((64, 64), seed=5).save(data, format="JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (root / "sub" / "notes.png").write_text("this is not an image")
    (root / "README.md").write_text("ignored: not an image extension")
    bad = {str(root / "empty.png"), str(root / "truncated.jpg"), str(root / "sub" / "notes.png")}
    return root, bad


def test_folder_skips_bad_files_and_warns_once(messy_folder, recwarn):
    root, bad = messy_folder
    ds = ImageFolderDataset(root, resolution=24)
    good = len(ds) - len(bad)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 24, 24)
        assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
        assert item["path"] not in bad
        seen.add(item["path"])
    assert len(seen) == good
    assert ds.skipped == 3 and set(ds.skipped_paths) == bad
    assert len(_skip_warnings(recwarn)) == 1
    by_name = {Path(ds[i]["path"]).name: ds[i] for i in range(len(ds))}
    assert len(_skip_warnings(recwarn)) == 1  # known-bad files are skipped silently afterwards
    assert by_name["d.png"]["caption"] == "a blue square on white" and by_name["a.png"]["caption"] == ""
    assert by_name["d.png"]["image"][:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparency -> white
    gray = by_name["gray16.png"]["image"]
    assert gray.abs().max() < 0.02  # 16-bit mid-grey maps to mid-grey, not saturated white
    cmyk = by_name["cmyk.jpg"]["image"].mean(dim=(1, 2))
    assert cmyk[0] > 0.5 and cmyk[1] < -0.5 and cmyk[2] < -0.5  # CMYK (0, 255, 255, 0) is red


def test_folder_scan_counts_exactly(messy_folder, recwarn):
    root, bad = messy_folder
    ds = ImageFolderDataset(root, resolution=16)
    total = len(ds)
    good, skipped = ds.scan()
    assert good == total - 3 == len(ds) and set(skipped) == bad
    assert len(_skip_warnings(recwarn)) == 1
    assert all(ds[i]["path"] not in bad for i in range(len(ds)))
    assert len(_skip_warnings(recwarn)) == 1


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"accepted extensions"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="could be read"):
        ds[0]


def test_folder_non_recursive_and_holdout_split(tmp_path):
    for i in range(60):
        _save(Image.new("RGB", (8, 8), (i, 0, 0)), tmp_path / f"img{i:03d}.png")
    _save(Image.new("RGB", (8, 8)), tmp_path / "nested" / "x.png")
    assert len(ImageFolderDataset(tmp_path, recursive=False)) == 60
    train, heldout = build_dataset(str(tmp_path), "train", 8), build_dataset(str(tmp_path), "heldout", 8)
    assert isinstance(train, ImageFolderDataset)
    assert set(train.files).isdisjoint(heldout.files) and len(train) + len(heldout) == 61
    assert 0 < len(heldout) < 12
    assert build_dataset(str(tmp_path), "heldout", 8).files == heldout.files


# ----------------------------------------------------------------------------------------------- shards


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (20, 12), color).save(data, format="PNG")
    return data.getvalue()


def _color(k: int) -> tuple[int, int, int]:
    return (40 * k, 255 - 40 * k, 120)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    write_shard(
        tmp_path / "shard-000.tar",
        [
            ("s0.png", _png_bytes(_color(0))),
            ("s0.txt", b"caption 0"),
            ("s1.png", _png_bytes(_color(1))),
            ("s1.txt", b"caption 1"),
            ("s2.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
            ("s2.txt", b"caption 2"),
        ],
    )
    write_shard(
        tmp_path / "shard-001.tar",
        [
            ("s3.caption", "caption 3 é".encode()),
            ("s3.png", _png_bytes(_color(3))),
            ("s4.png", _png_bytes(_color(4))),
            ("s4.txt", b"caption 4"),
            ("sub/s5.json", b"{}"),
        ],
    )
    return tmp_path


def _check_pairs(samples: list[dict]) -> None:
    for sample in samples:
        k = int(sample["key"].removeprefix("s"))
        assert sample["caption"].startswith(f"caption {k}")
        expected = torch.tensor(_color(k), dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(sample["image"].mean(dim=(1, 2)), expected, atol=0.02)


def test_shards_read_pair_and_skip(shards, recwarn):
    ds = WebDatasetShards(str(shards), resolution=12)
    samples = list(ds)
    assert sorted(s["key"] for s in samples) == ["s0", "s1", "s3", "s4"]
    assert next(s for s in samples if s["key"] == "s3")["caption"] == "caption 3 é"
    _check_pairs(samples)
    assert ds.skipped == 2  # the corrupt jpg and the sample without an image
    assert any("s2.jpg" in p for p in ds.skipped_paths) and any("sub/s5" in p for p in ds.skipped_paths)
    assert len(_skip_warnings(recwarn)) == 1
    glob_ds = WebDatasetShards(str(shards / "shard-*.tar"), resolution=12)
    listed = WebDatasetShards([shards / "shard-000.tar", shards / "shard-001.tar"], resolution=12)
    assert glob_ds.shards == listed.shards == ds.shards


@pytest.mark.filterwarnings("ignore:skipping unreadable input")  # raised inside the worker processes
def test_shards_split_over_ranks_and_workers(shards):
    rank1 = WebDatasetShards(str(shards), resolution=12, rank=1, world_size=2)
    assert sorted(s["key"] for s in rank1) == ["s3", "s4"]
    loader = DataLoader(WebDatasetShards(str(shards), 12), batch_size=None, num_workers=2)
    samples = list(loader)
    assert sorted(s["key"] for s in samples) == ["s0", "s1", "s3", "s4"]
    _check_pairs(samples)


# ----------------------------------------------------------------------------------------------- factory


def test_build_dataset(shards):
    assert isinstance(build_dataset("scenes", num_samples=5, resolution=16), SyntheticScenes)
    assert len(build_dataset("scenes", "novel", num_samples=5)) == 5
    assert isinstance(build_dataset(str(shards)), WebDatasetShards)
    assert isinstance(build_dataset(str(shards / "*.tar")), WebDatasetShards)
    with pytest.raises(ValueError, match="unknown dataset source.*scenes.*photos"):
        build_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        build_dataset("scenes", split="validation")


def test_photo_color_augment_permutes_channels_only():
    plain = PhotoPatches(20, 32, "train", seed=1, color_augment=False)
    augmented = PhotoPatches(20, 32, "train", seed=1)
    pairs = [(plain[i]["image"], augmented[i]["image"]) for i in range(20)]
    for p, a in pairs:  # same crop and flip; per pixel, the same three values in another order
        assert torch.equal(p.sort(0).values, a.sort(0).values)
    assert sum(not torch.equal(p, a) for p, a in pairs) >= 5  # grey photos and the identity order stay equal
    assert not PhotoPatches(5, 32, "heldout").color_augment


# ----------------------------------------------------------------------------------------------- palettes


def test_wide_palette_recolours_the_same_scenes_over_the_whole_range():
    import colorsys

    from tokenizers_vis.data.scenes import _MIN_CONTRAST, BACKGROUND_RGB, COLOR_RGB

    classic, wide = SyntheticScenes(200, 16, "train", seed=2), SyntheticScenes(200, 16, "train", seed=2, palette="wide")
    assert SyntheticScenes(5, 16).palette == "classic"  # the generators' world stays the default
    values = []
    for i in range(200):
        a, b = classic.describe(i), wide.describe(i)
        assert a["caption"] == b["caption"]  # same layout, names and caption: only colours change
        assert [{k: v for k, v in o.items() if k != "rgb"} for o in b["objects"]] == a["objects"]
        assert torch.equal(classic[i]["labels"], wide[i]["labels"])
        assert "rgb" not in a["background"] and all("rgb" not in o for o in a["objects"])
        background = b["background"]["rgb"]
        values.append(max(background) / 255)
        for obj in b["objects"]:
            assert np.linalg.norm(np.subtract(obj["rgb"], background)) >= _MIN_CONTRAST  # every object stands out
            h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in obj["rgb"]))
            h0, s0, v0 = colorsys.rgb_to_hsv(*(c / 255 for c in COLOR_RGB[obj["color"]]))
            if obj["color"] == "white":
                assert s < 0.05 and v >= 0.8
            else:  # the shade varies, the colour name still holds
                assert min(abs(h - h0), 1 - abs(h - h0)) <= 10 / 360 + 1e-3 and 0.55 * v0 <= v <= v0 + 1e-3
    classic_max = max(max(rgb) for rgb in BACKGROUND_RGB.values()) / 255
    assert classic_max < 0.4  # why classic-only tokenizers fail on light images
    assert np.mean(np.array(values) > 0.6) > 0.3 and np.mean(np.array(values) < 0.3) > 0.1  # light and dark


def test_wide_palette_clips_keep_their_captions():
    from tokenizers_vis.data import MovingShapes

    classic, wide = MovingShapes(20, 16, 3, seed=1), MovingShapes(20, 16, 3, seed=1, palette="wide")
    for i in range(20):
        assert classic.describe(i)["caption"] == wide.describe(i)["caption"]
        assert "rgb" in wide.describe(i)["background"]
    assert wide[0]["video"].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="palette"):
        SyntheticScenes(5, palette="neon")
