"""Evaluation of tokenizers and of generated images and clips: reconstruction and codebook metrics, the linear probe
of scene attributes, Fréchet distance and CLIP score in a CLIP image space, and the attribute grader that checks
scenes and clips against their prompts."""

from .fid import (
    FID_KINDS,
    FolderEvaluation,
    InceptionUnavailableError,
    frechet_metric,
    generation_fid,
    inception_available,
    inception_weights_path,
    pipeline_resolution,
    reconstruction_metrics_on_folder,
)
from .frechet import CLIPImageFeatures, clip_score, frechet_distance
from .grader import DEFAULT_GRADER, GRID, AttributeGrader, grade, load_grader
from .ood import OOD_SETS, evaluate_ood, ood_images
from .probe import cell_features, cell_targets, linear_probe, probe_latents
from .reconstruction import (
    code_streams,
    codebook_sizes,
    evaluate_tokenizer,
    items_per_second,
    reconstruct,
    reconstruction_psnr,
    token_budget,
)
from .video import grade_videos, object_centroids

__all__ = [
    "DEFAULT_GRADER",
    "GRID",
    "OOD_SETS",
    "AttributeGrader",
    "CLIPImageFeatures",
    "cell_features",
    "cell_targets",
    "clip_score",
    "code_streams",
    "codebook_sizes",
    "evaluate_ood",
    "evaluate_tokenizer",
    "frechet_distance",
    "grade",
    "grade_videos",
    "items_per_second",
    "linear_probe",
    "load_grader",
    "object_centroids",
    "ood_images",
    "probe_latents",
    "reconstruct",
    "reconstruction_psnr",
    "token_budget",
    "FID_KINDS",
    "FolderEvaluation",
    "InceptionUnavailableError",
    "frechet_metric",
    "generation_fid",
    "inception_available",
    "inception_weights_path",
    "pipeline_resolution",
    "reconstruction_metrics_on_folder",
]
