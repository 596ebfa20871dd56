"""Discrete visual tokenizers: quantizers, image tokenizers, data, training and metrics."""

from .image_tokenizer import ImageTokenizer
from .metrics import evaluate_tokenizer
from .quantizers import QUANTIZERS, Quantizer, QuantizerOutput, build_quantizer
from .registry import PRESETS, create_tokenizer, list_tokenizers, load_tokenizer
from .training import TrainConfig, train_tokenizer

__all__ = [
    "PRESETS",
    "QUANTIZERS",
    "ImageTokenizer",
    "Quantizer",
    "QuantizerOutput",
    "TrainConfig",
    "build_quantizer",
    "create_tokenizer",
    "evaluate_tokenizer",
    "list_tokenizers",
    "load_tokenizer",
    "train_tokenizer",
]
