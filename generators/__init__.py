"""Autoregressive generators over discrete visual tokens: the shared transformer, next-token and next-X (xAR)
generation with prompt or class conditioning and classifier-free guidance, the text-to-image pipeline, training
and grading."""

from .entities import ENTITIES, make_entity
from .grading import AttributeGrader, grade, load_grader, parse_prompt
from .next_token import NextTokenGenerator
from .next_x import NextXGenerator
from .pipeline import SAMPLING_KEYS, PipelineOutput, TextToImagePipeline, save_grid
from .prompt_encoder import PromptEncoder
from .registry import PRESETS, create_generator, list_generators, load_generator, preset_class
from .sampling import guidance_at, sample_logits, top_k_filter, top_p_filter
from .training import GeneratorTrainConfig, train_generator
from .transformer import KVCache, Transformer
from .video import TextToVideoPipeline, VideoPipelineOutput, grade_videos, is_video_pipeline, parse_video_prompt

__all__ = [
    "TextToVideoPipeline",
    "VideoPipelineOutput",
    "grade_videos",
    "is_video_pipeline",
    "parse_video_prompt",
    "ENTITIES",
    "NextXGenerator",
    "make_entity",
    "preset_class",
    "PRESETS",
    "SAMPLING_KEYS",
    "AttributeGrader",
    "GeneratorTrainConfig",
    "KVCache",
    "NextTokenGenerator",
    "PipelineOutput",
    "PromptEncoder",
    "TextToImagePipeline",
    "Transformer",
    "create_generator",
    "grade",
    "guidance_at",
    "list_generators",
    "load_generator",
    "load_grader",
    "parse_prompt",
    "sample_logits",
    "save_grid",
    "top_k_filter",
    "top_p_filter",
    "train_generator",
]
