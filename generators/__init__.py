"""Autoregressive generators over discrete visual tokens: the shared transformer, next-token and next-X (xAR)
generation with prompt or class conditioning and classifier-free guidance, the text-to-image and text-to-video
pipelines and training. Grading lives in :mod:`tokenizers_vis.evaluation`."""

from .entities import ENTITIES, make_entity
from .llamagen import convert_llamagen_gpt, convert_llamagen_pipeline
from .next_token import NextTokenGenerator
from .next_x import NextXGenerator
from .pipeline import RERANKERS, SAMPLING_KEYS, PipelineOutput, TextToImagePipeline, save_grid
from .prompt_encoder import PromptEncoder
from .registry import PRESETS, create_generator, list_generators, load_generator, preset_class
from .sampling import guidance_at, sample_logits, top_k_filter, top_p_filter
from .text_encoders import HFTextEncoder, load_prompt_encoder
from .training import GeneratorTrainConfig, train_generator
from .transformer import KVCache, Transformer
from .video import TextToVideoPipeline, VideoPipelineOutput, is_video_pipeline

__all__ = [
    "TextToVideoPipeline",
    "VideoPipelineOutput",
    "is_video_pipeline",
    "ENTITIES",
    "NextXGenerator",
    "make_entity",
    "preset_class",
    "PRESETS",
    "RERANKERS",
    "SAMPLING_KEYS",
    "GeneratorTrainConfig",
    "KVCache",
    "NextTokenGenerator",
    "PipelineOutput",
    "PromptEncoder",
    "HFTextEncoder",
    "load_prompt_encoder",
    "TextToImagePipeline",
    "Transformer",
    "convert_llamagen_gpt",
    "convert_llamagen_pipeline",
    "create_generator",
    "guidance_at",
    "list_generators",
    "load_generator",
    "sample_logits",
    "save_grid",
    "top_k_filter",
    "top_p_filter",
    "train_generator",
]
