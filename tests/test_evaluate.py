"""Evaluation on user folders: rFID / PSNR / SSIM of a tokenizer, FID of a pipeline's samples against a reference
folder (tokenizers_vis.evaluation.fid), the Inception path offline, and scripts/evaluate.py end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import runpy
from pathlib import Path
from socket import gaierror
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchmetrics.image.fid
from PIL import Image
from torch import nn

from generators import TextToImagePipeline, create_generator
from tokenizers_vis import create_tokenizer
from tokenizers_vis.data import SyntheticScenes
from tokenizers_vis.evaluation import (
    InceptionUnavailableError,
    frechet_metric,
    generation_fid,
    inception_available,
    reconstruction_metrics_on_folder,
)
from tokenizers_vis.evaluation import fid as fid_module

ROOT = Path(__file__).resolve().parent.parent
# the corrupt file is skipped with a warning by every dataset that meets it; the tests check the counts instead
pytestmark = pytest.mark.filterwarnings("ignore:skipping unreadable input")
SIDE = 32
COUNT = 16


def colour_blocks(count: int, seed: int) -> torch.Tensor:
    """``count`` images (N, 3, SIDE, SIDE) in [-1, 1] of 2x2 blocks, each block one uniformly random colour."""
    blocks = torch.rand(count, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    return blocks.repeat_interleave(SIDE // 2, -1).repeat_interleave(SIDE // 2, -2) * 2 - 1


def save_png(image: torch.Tensor, path: Path) -> None:
    array = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """16 colour-block PNGs with captions, and one corrupt PNG that must be skipped and counted."""
    root = tmp_path_factory.mktemp("blocks")
    for i, image in enumerate(colour_blocks(COUNT, seed=0)):
        save_png(image, root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"caption {i:02d}")
    (root / "00_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


class FunctionTokenizer(nn.Module):
    """A stand-in tokenizer whose reconstruction is ``fn(images)``."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_reconstruction_metrics_on_folder(folder, clip_folder):
    def evaluate(fn, **kwargs):
        metric = frechet_metric("clip", clip_folder)
        result = reconstruction_metrics_on_folder(
            FunctionTokenizer(fn), folder, SIDE, batch_size=8, metric=metric, progress=False, **kwargs
        )
        return result.metrics, result

    noise, seeds = torch.Generator().manual_seed(1), iter(range(100, 200))
    exact, result = evaluate(lambda x: x)
    slight, _ = evaluate(lambda x: x + 0.03 * torch.randn(x.shape, generator=noise))
    fresh, _ = evaluate(lambda x: colour_blocks(len(x), next(seeds)))  # new images of the same distribution
    shifted, _ = evaluate(lambda x: torch.rand(x.shape, generator=noise) * 2 - 1)  # another distribution

    assert exact["images"] == COUNT and exact["skipped"] == 1 and exact["resolution"] == SIDE
    assert abs(exact["rfid"]) < 1e-4 and math.isinf(exact["psnr"]) and exact["ssim"] == pytest.approx(1.0, abs=1e-3)
    assert result.real.shape == result.fake.shape == (8, 3, SIDE, SIDE) and torch.equal(result.real, result.fake)
    assert 0 <= result.real.min() and result.real.max() <= 1
    assert slight["psnr"] > 28 and slight["ssim"] > 0.8
    assert shifted["psnr"] < 10 < slight["psnr"] - 15 and shifted["ssim"] < 0.2
    # a distribution shift costs more than drawing other images of the same distribution
    assert slight["rfid"] < fresh["rfid"] < shifted["rfid"] / 2
    # max_images stops mid-batch; the corrupt file sorts second, so it is met and counted
    few, _ = evaluate(lambda x: x, max_images=5)
    assert few["images"] == 5 and few["skipped"] == 1


def test_real_tokenizer_resolution_default_and_too_few_images(tmp_path, folder, clip_folder):
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny").eval()
    metric = frechet_metric("clip", clip_folder)
    metrics = reconstruction_metrics_on_folder(tokenizer, folder, max_images=4, metric=metric, progress=False).metrics
    assert metrics["resolution"] == 64 and metrics["images"] == 4 and math.isfinite(metrics["rfid"])
    (tmp_path / "one").mkdir()
    save_png(colour_blocks(1, seed=3)[0], tmp_path / "one" / "a.png")
    with pytest.raises(ValueError, match="needs >= 2"):
        reconstruction_metrics_on_folder(tokenizer, tmp_path / "one", SIDE, metric=metric, progress=False)


def test_inception_without_torch_fidelity_is_explained():
    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed: a real call could start a download")
    assert not inception_available()
    with pytest.raises(InceptionUnavailableError) as error:
        frechet_metric("inception")
    message = str(error.value)
    assert "torch-fidelity is not installed" in message and "pip install torch-fidelity" in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "--fid clip" in message
    assert isinstance(error.value.__cause__, ModuleNotFoundError)


def test_inception_download_failure_is_explained(monkeypatch):
    # what torch-fidelity's first use raises offline, from torch.hub.load_state_dict_from_url (measured: < 1 s)
    offline = URLError(gaierror(-2, "Name or service not known"))

    def no_network(*args, **kwargs):
        raise offline

    # frechet_metric imports the class when called, so it is replaced where it is defined
    monkeypatch.setattr(torchmetrics.image.fid, "FrechetInceptionDistance", no_network)
    with pytest.raises(InceptionUnavailableError) as error:
        frechet_metric("inception")
    message = str(error.value)
    assert "downloading its weights failed" in message and str(fid_module.inception_weights_path()) in message
    assert fid_module.INCEPTION_WEIGHTS_URL in message and "--fid clip" in message
    assert error.value.__cause__ is offline
    with pytest.raises(ValueError, match="unknown Fréchet feature space"):
        frechet_metric("dino")


class StubPipeline:
    """Duck-typed text-to-image pipeline that records its requests and returns random images."""

    def __init__(self, condition: str, class_names: list[str] | None = None) -> None:
        self.generator = SimpleNamespace(config=SimpleNamespace(condition=condition, grid_size=(2, 2)))
        self.tokenizer = SimpleNamespace(decode=lambda tokens: torch.zeros(len(tokens), 3, SIDE, SIDE))
        self.device = torch.device("cpu")
        self.class_names = class_names
        self.requests: list[dict] = []

    def __call__(self, seed: int, **request):
        self.requests.append({"seed": seed, **request})
        count = len(request.get("prompt") or request.get("class_labels") or []) or request["num_images_per_prompt"]
        return SimpleNamespace(pixels=torch.rand(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    for name, seed in (("cat", 1), ("dog", 2)):
        (root / name).mkdir()
        for i, image in enumerate(colour_blocks(3, seed)):
            save_png(image, root / name / f"{i}.png")
    return root


def test_generation_fid_conditions(folder, class_folder, clip_folder):
    def run(pipe, reference, **kwargs):
        metric = frechet_metric("clip", clip_folder)
        return generation_fid(pipe, reference, metric=metric, batch_size=4, progress=False, **kwargs)

    pipe = StubPipeline("prompt")
    result = run(pipe, folder, num_samples=18)
    assert result.metrics["reference_images"] == COUNT and result.metrics["skipped"] == 1
    assert result.metrics["generated_images"] == 18 and result.metrics["fid"] > 0
    prompts = [p for r in pipe.requests for p in r["prompt"]]
    assert prompts == [f"caption {i % COUNT:02d}" for i in range(18)]  # the references' captions, in file order
    assert [r["seed"] for r in pipe.requests] == [0, 4, 8, 12, 16]
    assert result.real.shape == result.fake.shape == (8, 3, SIDE, SIDE)

    pipe = StubPipeline("prompt")
    run(pipe, folder, num_samples=3, prompts=["a", "b"])
    assert pipe.requests[0]["prompt"] == ["a", "b", "a"]
    with pytest.raises(ValueError, match="prompts were given for a pipeline whose generator is 'class'-conditioned"):
        run(StubPipeline("class"), class_folder, prompts=["a"])
    with pytest.raises(ValueError, match="6 of 6 reference images .* have no caption"):
        run(StubPipeline("prompt"), class_folder)

    named, numbered = StubPipeline("class", ["cat", "dog"]), StubPipeline("class")
    assert run(named, class_folder).metrics["generated_images"] == 6  # default: as many as the references
    run(numbered, class_folder)
    assert [x for r in named.requests for x in r["class_labels"]] == ["cat"] * 3 + ["dog"] * 3
    assert [x for r in numbered.requests for x in r["class_labels"]] == [0] * 3 + [1] * 3

    pipe = StubPipeline("none")
    run(pipe, folder, num_samples=6)
    assert [r["num_images_per_prompt"] for r in pipe.requests] == [4, 2]


def test_generation_fid_with_a_class_pipeline(class_folder, clip_folder):
    torch.manual_seed(0)
    tokenizer = create_tokenizer("vq-f8-tiny").eval()
    generator = create_generator(
        "nt-tiny", codebook_size=tokenizer.codebook_size, grid_size=(4, 4), condition="class", num_classes=2
    )
    pipe = TextToImagePipeline(tokenizer, generator, class_names=["cat", "dog"])
    metric = frechet_metric("clip", clip_folder)
    result = generation_fid(pipe, class_folder, num_samples=4, metric=metric, batch_size=4, progress=False)
    assert result.metrics["resolution"] == SIDE and result.metrics["generated_images"] == 4
    assert math.isfinite(result.metrics["fid"]) and result.fake.shape == (4, 3, SIDE, SIDE)


def test_cli_tokenizer(tmp_path, folder, clip_folder, run_script):
    torch.manual_seed(0)
    create_tokenizer("vq-f8-tiny").save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "eval" / "tok.json"
    args = ["--tokenizer", str(tmp_path / "tokenizer"), "--data", str(folder), "--resolution", str(SIDE)]
    args += ["--fid", "clip", "--clip", str(clip_folder), "--batch-size", "8", "--out", str(out)]
    proc = run_script("evaluate", "tokenizer", *args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert report["fid_features"] == "clip" and report["clip"] == str(clip_folder)
    assert report["images"] == COUNT and report["skipped"] == 1
    assert math.isfinite(report["rfid"]) and 0 < report["psnr"] < 40 and -1 <= report["ssim"] <= 1
    with Image.open(report["grid"]) as grid:  # originals above reconstructions, 8 each, 2 px apart
        assert grid.size == (8 * (SIDE + 2) + 2, 2 * (SIDE + 2) + 2)


@pytest.fixture(scope="module")
def evaluate_main():
    """scripts/evaluate.py's ``main(argv)``, run in this process: an interpreter start costs more than the rest of
    a CLI test here, so one test (test_cli_tokenizer) covers the subprocess and the others call ``main``."""
    return runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="evaluate_cli")["main"]


def test_cli_generator_on_the_shipped_pipeline(tmp_path, evaluate_main, capsys):
    scenes = SyntheticScenes(6, 64, split="heldout", seed=7)
    for i in range(len(scenes)):
        save_png(scenes[i]["image"], tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(scenes.describe(i)["caption"])
    out = tmp_path / "gen.json"
    evaluate_main(
        ["generator", "--reference", str(tmp_path), "--num-samples", "3", "--batch-size", "3", "--out", str(out)]
    )
    printed = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report == json.loads(printed.out)
    if not inception_available():  # the default feature space falls back to CLIP, and says so
        assert report["fid_features"] == "clip" and "notice: Inception FID needs torch-fidelity" in printed.err
    assert report["pipeline"].endswith("assets/pipeline") and report["clip"].endswith("assets/pipeline/prompt_encoder")
    assert report["reference_images"] == 6 and report["generated_images"] == 3 and report["resolution"] == 64
    assert report["fid"] > 0
    with Image.open(report["grid"]) as grid:  # 6 references above 3 samples (of the first three captions)
        assert grid.size == (6 * 66 + 2, 2 * 66 + 2)


def test_cli_inception_offline_fails_fast_with_the_fallback(tmp_path, evaluate_main):
    if inception_available():
        pytest.skip("Inception weights are on this machine")
    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed: a real call could start a download")
    # the error comes before any model or image is read, so the paths need not exist
    with pytest.raises(SystemExit, match="Inception FID is unavailable.*--fid clip"):
        evaluate_main(["tokenizer", "--tokenizer", str(tmp_path / "no"), "--data", str(tmp_path), "--fid", "inception"])
