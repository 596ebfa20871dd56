"""Discrete visual tokenizers: quantizers, image / dual-codebook / 1D / video tokenizers, data, training, metrics."""

from .dual_tokenizer import DualTokenizer
from .image_tokenizer import ImageTokenizer
from .metrics import evaluate_tokenizer
from .quantizers import QUANTIZERS, Quantizer, QuantizerOutput, build_quantizer
from .registry import PRESETS, create_tokenizer, list_tokenizers, load_tokenizer
from .titok import OneDTokenizer
from .training import TrainConfig, train_tokenizer
from .video_tokenizer import VideoTokenizer

__all__ = [
    "PRESETS",
    "QUANTIZERS",
    "DualTokenizer",
    "ImageTokenizer",
    "OneDTokenizer",
    "Quantizer",
    "QuantizerOutput",
    "TrainConfig",
    "VideoTokenizer",
    "build_quantizer",
    "create_tokenizer",
    "evaluate_tokenizer",
    "list_tokenizers",
    "load_tokenizer",
    "train_tokenizer",
]
