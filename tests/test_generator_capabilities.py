"""Generator families and pipeline capabilities: what the training loop, the pipelines and generate.py read."""

from __future__ import annotations

import inspect

import pytest

from generators import PRESETS, SAMPLING_KEYS, TextToImagePipeline, TextToVideoPipeline, create_generator
from generators.family import GeneratorFamily
from generators.pipeline import RUN_DEFAULTS
from generators.registry import GENERATOR_CLASSES, generator_families

CLASSES = list(GENERATOR_CLASSES.values())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_generator_declares_its_family(cls):
    family = cls.family
    assert isinstance(family, GeneratorFamily)
    assert family.default_preset in family.presets
    assert all(PRESETS[name] == (cls, kwargs) for name, kwargs in family.presets.items())
    generate = inspect.signature(cls.generate).parameters
    # the pipelines pass these to every generator (the re-ranking settings they use themselves)
    assert set(RUN_DEFAULTS) - {"num_candidates", "rerank"} <= set(generate)
    assert set(family.sampling_keys) <= set(generate)
    assert set(family.run_defaults) <= set(inspect.signature(cls.__init__).parameters)
    assert family.regresses_codes == hasattr(cls, "set_codebook")


def test_families_cover_the_presets_and_the_sampling_keys():
    families = generator_families()
    assert list(families) == ["next-token", "next-x"]
    assert sorted(PRESETS) == sorted(name for f in families.values() for name in f.presets)
    family_keys = [key for f in families.values() for key in f.sampling_keys]
    assert sorted(SAMPLING_KEYS) == sorted([*RUN_DEFAULTS, *family_keys])


@pytest.mark.parametrize("preset", ["nt-tiny", "nx-tiny"])
def test_takes_videos_matches_what_the_model_builds(preset):
    cls = PRESETS[preset][0]
    build = lambda: create_generator(preset, codebook_size=16, grid_size=(2, 4, 4))  # noqa: E731
    if cls.family.takes_videos:
        assert tuple(build().config.grid_size) == (2, 4, 4)
    else:
        with pytest.raises(ValueError, match="grid_size"):
            build()


def test_pipelines_declare_what_they_produce():
    assert not TextToImagePipeline.produces_video and TextToVideoPipeline.produces_video
    assert TextToVideoPipeline.run_defaults == TextToImagePipeline.run_defaults == RUN_DEFAULTS
