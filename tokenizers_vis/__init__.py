"""Discrete visual tokenizers: quantizers, image / dual-codebook / 1D / video tokenizers, data, training, evaluation."""

from .anchored_video import AnchoredVideoTokenizer
from .dual_tokenizer import DualTokenizer
from .evaluation import evaluate_tokenizer
from .image_tokenizer import ImageTokenizer
from .llamagen import convert_llamagen_vq
from .quantizers import QUANTIZERS, Quantizer, QuantizerOutput, build_quantizer
from .registry import PRESETS, create_tokenizer, list_tokenizers, load_tokenizer
from .titok import OneDTokenizer
from .training import TrainConfig, train_tokenizer
from .video1d import Video1DTokenizer
from .video_tokenizer import VideoTokenizer

__all__ = [
    "PRESETS",
    "QUANTIZERS",
    "AnchoredVideoTokenizer",
    "DualTokenizer",
    "ImageTokenizer",
    "OneDTokenizer",
    "Quantizer",
    "QuantizerOutput",
    "TrainConfig",
    "Video1DTokenizer",
    "VideoTokenizer",
    "build_quantizer",
    "convert_llamagen_vq",
    "create_tokenizer",
    "evaluate_tokenizer",
    "list_tokenizers",
    "load_tokenizer",
    "train_tokenizer",
]
