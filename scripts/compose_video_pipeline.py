"""Factorized text-to-video: give a trained text-to-video pipeline over an assembled tokenizer (first-frame tokens,
then motion tokens) a text-to-image pipeline that draws each clip's first frame; its generator then samples only the
motion tokens after that frame.

    python scripts/compose_video_pipeline.py --pipeline runs/video/generator/pipeline --first-frame assets/pipeline \\
        --frame-captions moving-shapes --output-dir runs/video/composed

Writes the pipeline with the text-to-image one in its ``first_frame/`` sub-folder (weights stored in ``--dtype``)
and keeps the video pipeline's ``training.json``. ``--frame-captions`` names how a video prompt becomes the first
and last frames' captions (``generators.video.FRAME_CAPTIONS``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from generators import TextToImagePipeline, TextToVideoPipeline
from generators.video import FRAME_CAPTIONS


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", type=Path, required=True, help="saved TextToVideoPipeline (anchored tokenizer)")
    p.add_argument("--first-frame", type=Path, required=True, help="saved TextToImagePipeline")
    p.add_argument("--frame-captions", default="same", choices=sorted(FRAME_CAPTIONS))
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="of the saved weights")
    args = p.parse_args(argv)
    video = TextToVideoPipeline.from_pretrained(args.pipeline)
    pipe = TextToVideoPipeline(
        video.tokenizer,
        video.generator,
        video.prompt_encoder,
        video.defaults,
        first_frame_pipeline=TextToImagePipeline.from_pretrained(args.first_frame),
        frame_captions=args.frame_captions,
    )
    dtype = getattr(torch, args.dtype)
    pipe.save_pretrained(args.output_dir, generator_dtype=dtype, tokenizer_dtype=dtype)
    if (args.pipeline / "training.json").is_file():
        shutil.copy2(args.pipeline / "training.json", args.output_dir / "training.json")
    print(f"wrote {args.output_dir}")
    return args.output_dir


if __name__ == "__main__":
    main()
