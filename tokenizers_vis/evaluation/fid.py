"""Fréchet distances on user data: FID of a pipeline's images against a reference folder, and reconstruction FID
(rFID) with PSNR / SSIM of a tokenizer on a folder.

Two feature spaces, one implementation (torchmetrics' ``FrechetInceptionDistance``):

- "inception": the standard FID features, torch-fidelity's Inception-v3 (2048-d pool). Needs the ``torch-fidelity``
  package and its weights file, which it downloads once; without them :class:`InceptionUnavailableError` says so.
- "clip": the L2-normalised image embeddings of a CLIP (default: the project's, shipped in ``assets/``) as the
  metric's ``feature`` module. Works offline; its values are not FID values and compare only with each other.

Either way numbers depend on the number of images: compare runs of similar size. Images are ``(B, 3, H, W)`` in
[0, 1] wherever the metric sees them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..clip import DEFAULT_CLIP, CLIPEncoder, load_clip
from ..data import ClassImageFolder, ImageFolderDataset, collate_readable
from .frechet import CLIPImageFeatures
from .reconstruction import reconstruct

if TYPE_CHECKING:  # imported where used: torchmetrics is slow to import and the sampling scripts never need it
    from torchmetrics.image.fid import FrechetInceptionDistance

FID_KINDS = ("inception", "clip")
# torch-fidelity's Inception-v3 weights (the TF FID graph ported to PyTorch), fetched through torch.hub's cache
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
DEFAULT_RESOLUTION = 64  # the resolution the project's tokenizers train at


class InceptionUnavailableError(RuntimeError):
    """Inception FID cannot run here: torch-fidelity is missing, or its weights are neither cached nor downloadable."""


def inception_weights_path() -> Path:
    """Where torch-fidelity looks for (and downloads) the Inception weights: torch.hub's checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[1]


def inception_available(weights: str | os.PathLike | None = None) -> bool:
    """True when Inception FID runs without a download: torch-fidelity is installed and the weights file is
    ``weights`` (or, if None, in torch.hub's cache)."""
    path = Path(weights) if weights is not None else inception_weights_path()
    return importlib.util.find_spec("torch_fidelity") is not None and path.is_file()


def _inception_help(reason: str, error: BaseException) -> str:
    return (
        f"Inception FID is unavailable: {reason}. It needs the torch-fidelity package (`pip install torch-fidelity`, "
        f"or `pip install 'torchmetrics[image]'`) and the weights file {INCEPTION_WEIGHTS_URL.rsplit('/', 1)[1]}, "
        f"which torch-fidelity downloads once from {INCEPTION_WEIGHTS_URL} to {inception_weights_path()}; on an "
        "offline machine copy that file there or pass its path (inception_weights= / --inception-weights). "
        "Offline alternative: the Fréchet distance in the project CLIP's image space, kind='clip' "
        f"(scripts/evaluate.py --fid clip). Cause: {type(error).__name__}: {error}"
    )


def frechet_metric(
    kind: str = "inception",
    clip: str | os.PathLike | CLIPEncoder = DEFAULT_CLIP,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> FrechetInceptionDistance:
    """An empty torchmetrics ``FrechetInceptionDistance`` taking float images ``(B, 3, H, W)`` in [0, 1]:
    ``update(images, real=True / False)``, then ``compute()``.

    ``kind`` "inception" runs on ``device``; a missing torch-fidelity or a failed weights download raises
    :class:`InceptionUnavailableError` (within a second where DNS fails fast; torch.hub sets no timeout, so a network
    that silently drops connections can make the download attempt hang).
    ``kind`` "clip" embeds with ``clip`` (a CLIPEncoder used where it is, or a folder / open_clip name for
    :func:`~tokenizers_vis.clip.load_clip`, loaded onto ``device``); its states stay on the CPU, where
    :class:`CLIPImageFeatures` returns the embeddings, so pass images on any device and do not move the metric.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if kind == "inception":
        weights = None if inception_weights is None else str(inception_weights)
        try:
            metric = FrechetInceptionDistance(
                feature=2048, normalize=True, feature_extractor_weights_path=weights, sync_on_compute=False
            )
        except ImportError as error:  # torchmetrics raises ModuleNotFoundError without torch-fidelity
            raise InceptionUnavailableError(_inception_help("torch-fidelity is not installed", error)) from error
        except OSError as error:  # URLError / timeout of the download, or a missing inception_weights file
            reason = (
                "downloading its weights failed" if weights is None else f"its weights file {weights} is unreadable"
            )
            raise InceptionUnavailableError(_inception_help(reason, error)) from error
        return metric.to(device) if device is not None else metric
    if kind == "clip":
        if not isinstance(clip, CLIPEncoder):
            clip = load_clip(clip).to(device or "cpu").freeze()
        # evaluation is local to one process: no cross-rank sync of the feature sums
        return FrechetInceptionDistance(feature=CLIPImageFeatures(clip), normalize=True, sync_on_compute=False)
    raise ValueError(f"unknown Fréchet feature space {kind!r}; expected one of {FID_KINDS}")


def _update(metric: FrechetInceptionDistance, images: torch.Tensor, real: bool) -> None:
    metric.update(images.float().to(metric.device), real=real)


@dataclass
class FolderEvaluation:
    """What an evaluation measured, and a few image pairs to look at."""

    metrics: dict[str, Any]
    real: torch.Tensor  # (K, 3, H, W) in [0, 1]: the first reference images (originals)
    fake: torch.Tensor  # (K, 3, H, W) in [0, 1]: the first generated images (their reconstructions)


def _readable_batches(
    dataset: Dataset, batch_size: int, num_workers: int, max_images: int | None, desc: str, progress: bool
) -> Iterator[dict[str, Any]]:
    """Batches of ``dataset`` (built with ``on_error="drop"``) holding only readable images, at most ``max_images``
    in all; each carries ``skipped``, the unreadable files it met, and has no ``image`` if all of them were."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_readable)
    limit, taken = len(dataset) if max_images is None else max_images, 0
    for batch in tqdm(loader, desc=desc, disable=not progress):
        if "image" in batch:
            batch = {k: v if k == "skipped" else v[: limit - taken] for k, v in batch.items()}
            taken += len(batch["image"])
        yield batch
        if taken >= limit:
            return


@torch.no_grad()
def reconstruction_metrics_on_folder(
    tokenizer: torch.nn.Module,
    folder: str | os.PathLike,
    resolution: int | None = None,
    split: str = "all",
    batch_size: int = 32,
    max_images: int | None = None,
    metric: FrechetInceptionDistance | None = None,
    num_workers: int = 0,
    keep: int = 8,
    progress: bool = True,
) -> FolderEvaluation:
    """rFID (Fréchet distance between the folder's images and their reconstructions), PSNR and SSIM (over all
    pixels, in [0, 1]) of any project tokenizer on an image folder, streamed in batches on the tokenizer's device.

    ``resolution`` (short side resized, centre crop) defaults to the tokenizer's fixed input size if it has one (1D
    tokenizers), else 64. ``split`` "train" / "heldout" selects the folder's deterministic 95 % / 5 % (see
    :class:`~tokenizers_vis.data.ImageFolderDataset`). ``metric`` defaults to :func:`frechet_metric` ("clip").
    Metrics: ``rfid``, ``psnr``, ``ssim``, ``images`` (evaluated), ``skipped`` (unreadable files met), ``resolution``.
    """
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    if resolution is None:
        resolution = tokenizer.config.get("image_size", DEFAULT_RESOLUTION)
    dataset = ImageFolderDataset(folder, resolution, split=split, on_error="drop")
    metric = metric if metric is not None else frechet_metric("clip", device=device)
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False).to(device)
    count = skipped = 0
    real, fake = [], []
    for batch in _readable_batches(dataset, batch_size, num_workers, max_images, "reconstruct", progress):
        skipped += batch["skipped"]
        if "image" not in batch:
            continue
        x = batch["image"].to(device)
        recon = reconstruct(tokenizer, x).float().clamp(-1, 1)
        recon = (recon.reshape(x.shape) + 1) / 2  # video tokenizers give one-frame clips (B, 1, 3, H, W)
        x = (x + 1) / 2
        psnr.update(recon, x)
        ssim.update(recon, x)
        _update(metric, x, real=True)
        _update(metric, recon, real=False)
        count += len(x)
        if len(real) < keep:
            real += list(x[: keep - len(real)].cpu())
            fake += list(recon[: keep - len(fake)].cpu())
    if count < 2:
        raise ValueError(f"{count} readable image(s) in {folder} (split {split!r}): a Fréchet distance needs >= 2")
    metrics = {
        "rfid": float(metric.compute()),
        "psnr": float(psnr.compute()),
        "ssim": float(ssim.compute()),
        "images": count,
        "skipped": skipped,
        "resolution": resolution,
    }
    return FolderEvaluation(metrics, torch.stack(real), torch.stack(fake))


@torch.no_grad()
def pipeline_resolution(pipeline: Any) -> int:
    """Side of the images a text-to-image pipeline makes: its tokenizer's decoding of one token grid."""
    grid = tuple(pipeline.generator.config.grid_size)
    return pipeline.tokenizer.decode(torch.zeros(1, *grid, dtype=torch.long, device=pipeline.device)).shape[-1]


@torch.no_grad()
def generation_fid(
    pipeline: Any,
    reference: str | os.PathLike,
    num_samples: int | None = None,
    prompts: Sequence[str] | None = None,
    split: str = "all",
    max_reference: int | None = None,
    metric: FrechetInceptionDistance | None = None,
    batch_size: int = 16,
    seed: int = 0,
    num_workers: int = 0,
    keep: int = 8,
    progress: bool = True,
    **sampling: Any,
) -> FolderEvaluation:
    """FID of ``num_samples`` images of ``pipeline`` (a ``generators.TextToImagePipeline`` or alike) against the
    images of the ``reference`` folder, read at the pipeline's output size.

    Conditions follow the pipeline's generator: prompt-conditioned samples take the reference images' own captions
    (``metadata.jsonl`` / ``.csv`` or ``.txt`` sidecars; every image needs one) unless ``prompts`` are given;
    class-conditioned ones take the reference images' classes (the folder holds ``<class name>/<image>``; names
    when the pipeline knows its ``class_names``, else the sorted sub-folder's index); unconditional ones take none.
    Sample ``i`` gets condition ``i`` modulo their number, sampled in runs of ``batch_size`` seeded ``seed + i``.
    ``num_samples`` defaults to the number of readable reference images (at most ``max_reference``). ``sampling``
    keywords go to the pipeline (e.g. ``guidance_scale``). ``metric`` defaults to :func:`frechet_metric` ("clip").
    Metrics: ``fid``, ``reference_images``, ``generated_images``, ``skipped`` (unreadable reference files),
    ``resolution``.
    """
    condition = pipeline.generator.config.condition
    if prompts is not None and condition != "prompt":
        raise ValueError(f"prompts were given for a pipeline whose generator is {condition!r}-conditioned")
    resolution = pipeline_resolution(pipeline)
    folder_class = ClassImageFolder if condition == "class" else ImageFolderDataset
    dataset = folder_class(reference, resolution, split=split, on_error="drop")
    metric = metric if metric is not None else frechet_metric("clip", device=pipeline.device)
    by_name = bool(getattr(pipeline, "class_names", None))
    conditions: list = []
    real: list[torch.Tensor] = []
    count = skipped = 0
    for batch in _readable_batches(dataset, batch_size, num_workers, max_reference, "reference", progress):
        skipped += batch["skipped"]
        if "image" not in batch:
            continue
        images = (batch["image"] + 1) / 2
        _update(metric, images, real=True)
        count += len(images)
        if condition == "class":
            conditions += batch["caption"] if by_name else batch["label"].tolist()
        elif condition == "prompt":
            conditions += batch["caption"]
        real += list(images[: keep - len(real)])
    if prompts is not None:
        conditions = list(prompts)
    elif condition == "prompt" and not all(conditions):
        missing = sum(1 for c in conditions if not c)
        raise ValueError(
            f"{missing} of {len(conditions)} reference images in {reference} have no caption (metadata.jsonl / .csv "
            "or a .txt sidecar), which a prompt-conditioned pipeline samples with; pass prompts= (--prompt) instead"
        )
    num_samples = count if num_samples is None else num_samples
    if min(count, num_samples) < 2:
        raise ValueError(f"{count} reference and {num_samples} generated image(s): a Fréchet distance needs >= 2 each")
    key = {"prompt": "prompt", "class": "class_labels"}.get(condition)
    fake: list[torch.Tensor] = []
    for start in tqdm(range(0, num_samples, batch_size), desc="generate", disable=not progress):
        size = min(batch_size, num_samples - start)
        if key is None:  # unconditional
            request = {"num_images_per_prompt": size}
        else:
            request = {key: [conditions[(start + i) % len(conditions)] for i in range(size)]}
        images = pipeline(**request, seed=seed + start, **sampling).pixels
        _update(metric, images, real=False)
        fake += list(images[: keep - len(fake)])
    metrics = {"fid": float(metric.compute()), "reference_images": count, "generated_images": num_samples}
    metrics |= {"skipped": skipped, "resolution": resolution}
    return FolderEvaluation(metrics, torch.stack(real), torch.stack(fake))
