"""The tokenizer registry: each family declares its capabilities on its class and registers its presets beside it;
the builders, the training CLI and the training loop read them, so a new family is picked up everywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from tokenizers_vis import (
    DualTokenizer,
    ImageTokenizer,
    OneDTokenizer,
    TrainConfig,
    Video1DTokenizer,
    VideoTokenizer,
    create_tokenizer,
    list_tokenizers,
    load_tokenizer,
    registry,
)
from tokenizers_vis.baselines import DiffusersVQTokenizer
from tokenizers_vis.cli import parse_train_args
from tokenizers_vis.registry import (
    KINDS,
    TokenizerFamily,
    family_of,
    preset_class,
    preset_kind,
    register_family,
    register_preset,
    tokenizer_families,
)
from tokenizers_vis.training import check_model_and_data

ROOT = Path(__file__).resolve().parents[1]


class ToyTokenizer(ModelMixin, ConfigMixin):
    """The smallest loadable tokenizer class, for a family registered by a test."""

    family = TokenizerFamily(
        kind="toy", default_preset="toy-a", takes_videos=True, run_defaults={"data": "videos", "batch_size": 3}
    )

    @register_to_config
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)


@pytest.fixture
def toy_family(monkeypatch):
    """ToyTokenizer and its presets toy-a and toy-b, registered in a copy of the registry that the test discards."""
    monkeypatch.setattr(registry, "PRESETS", dict(registry.PRESETS))
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    register_family(ToyTokenizer)
    register_preset("toy-a", ToyTokenizer)
    register_preset("toy-b", ToyTokenizer, channels=5)
    return ToyTokenizer


def test_every_family_declares_its_capabilities_and_owns_its_presets():
    run_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for kind, family in tokenizer_families().items():
        cls = preset_class(family.default_preset)
        assert family.kind == kind and cls.family is family and family_of(cls) is family
        assert KINDS[kind] == (cls, family.default_preset)
        assert set(family.run_defaults) <= run_fields
    assert {preset_kind(name) for name in list_tokenizers()} == set(tokenizer_families())


def test_builtin_families_equal_the_tables_and_checks_they_replaced():
    families = tokenizer_families()
    # registry.KINDS and scripts/train_tokenizer.py's KIND_DEFAULTS, in the command line's order
    assert KINDS == {
        "vq2d": (ImageTokenizer, "vq-f4"),
        "vq1d": (OneDTokenizer, "vq1d-32-prior"),
        "dual": (DualTokenizer, "dual-f8"),
        "video": (VideoTokenizer, "video-f8t4"),
        "video1d": (Video1DTokenizer, "video1d-32"),
    }
    assert list(families) == ["vq2d", "vq1d", "dual", "video", "video1d"]
    assert {kind: f.run_defaults for kind, f in families.items() if f.run_defaults} == {
        "video": {
            "data": "videos",
            "train_samples": 4000,
            "batch_size": 8,
            "image_batch_size": 16,
            "eval_samples": 128,
        },
        "video1d": {
            "data": "videos",
            "train_samples": 4000,
            "batch_size": 8,
            "image_batch_size": 16,
            "eval_samples": 128,
            "eval_frames": 9,
        },
        "dual": {"semantic_teacher": "clip"},
    }
    # the training loop's isinstance checks
    assert [kind for kind, f in families.items() if f.takes_videos] == ["video", "video1d"]
    assert [kind for kind, f in families.items() if f.accepts_teacher] == ["vq2d", "dual", "video1d"]
    assert [kind for kind, f in families.items() if f.supports_gan] == ["vq2d"]
    assert [kind for kind, f in families.items() if f.decodes_any_length] == ["video1d"]


def test_subclasses_inherit_their_family_and_other_models_are_plain_image_tokenizers():
    class Wider(ImageTokenizer):
        pass

    assert family_of(Wider) is ImageTokenizer.family
    peer = family_of(DiffusersVQTokenizer)
    assert not (peer.takes_videos or peer.accepts_teacher or peer.supports_gan)
    check_model_and_data(DiffusersVQTokenizer, TrainConfig())
    with pytest.raises(
        ValueError, match=r"needs a video tokenizer \(--tokenizer video \| video1d\); got a DiffusersVQ"
    ):
        check_model_and_data(DiffusersVQTokenizer, TrainConfig(data="videos"))
    with pytest.raises(ValueError, match="works with vq2d, dual, video1d tokenizers, not DiffusersVQTokenizer"):
        check_model_and_data(DiffusersVQTokenizer, TrainConfig(semantic_teacher="clip"))
    with pytest.raises(ValueError, match="implemented for vq2d tokenizers only"):
        check_model_and_data(DiffusersVQTokenizer, TrainConfig(gan_weight=0.1))


def test_a_new_family_is_picked_up_by_builders_cli_and_training_checks(toy_family, tmp_path):
    assert {"toy-a", "toy-b"} <= set(list_tokenizers())
    assert list(tokenizer_families())[-1] == "toy"  # after the built-in families
    model = create_tokenizer("toy-b")
    assert isinstance(model, toy_family) and model.config.channels == 5 and preset_kind("toy-b") == "toy"
    model.save_pretrained(tmp_path / "toy")
    assert isinstance(load_tokenizer(tmp_path / "toy"), toy_family)

    cfg = parse_train_args(["--tokenizer", "toy"])
    assert (cfg.preset, cfg.data, cfg.batch_size) == ("toy-a", "videos", 3)
    cfg = parse_train_args(["--tokenizer", "toy", "--preset", "toy-b", "--batch-size", "7"])
    assert (cfg.preset, cfg.data, cfg.batch_size) == ("toy-b", "videos", 7)

    check_model_and_data(toy_family, TrainConfig(data="videos"))
    with pytest.raises(ValueError, match=r"--tokenizer video \| video1d \| toy"):
        check_model_and_data(ImageTokenizer, TrainConfig(data="videos"))


def test_taken_kinds_and_preset_names_are_refused(toy_family):
    with pytest.raises(ValueError, match="kind 'toy' is already registered by ToyTokenizer"):
        register_family(toy_family)
    with pytest.raises(ValueError, match="preset 'vq-f8' is already registered"):
        register_preset("vq-f8", toy_family)


def test_the_shipped_tokenizer_still_loads():
    model = load_tokenizer(ROOT / "assets" / "pipeline" / "tokenizer")
    assert isinstance(model, ImageTokenizer) and family_of(type(model)).kind == "vq2d"
