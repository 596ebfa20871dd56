"""Train an image tokenizer.

    accelerate launch scripts/train_tokenizer.py                       # default preset on synthetic scenes
    accelerate launch scripts/train_tokenizer.py --tokenizer vq1d      # 32 1D tokens (TiTok style)
    accelerate launch scripts/train_tokenizer.py --tokenizer dual      # semantic + pixel codebooks, CLIP teacher
    accelerate launch scripts/train_tokenizer.py --tokenizer video     # causal 3D, 17-frame moving-shape clips
    accelerate launch scripts/train_tokenizer.py --tokenizer video1d   # 32 deep tokens per 9-frame clip
    accelerate launch scripts/train_tokenizer.py --data photos --output-dir runs/photos
    accelerate launch scripts/train_tokenizer.py --config my_run.yaml --steps 500
    accelerate launch scripts/train_tokenizer.py --semantic-teacher clip --semantic-weight 0.5   # GigaTok-style
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_tokenizer.py   # 2 CPU procs

A run killed mid-way continues from its last checkpoint with the same command plus ``--resume``.
"""

from __future__ import annotations

import json

from tokenizers_vis import train_tokenizer
from tokenizers_vis.cli import parse_train_args


def main() -> None:
    metrics = train_tokenizer(parse_train_args(description=__doc__))
    if metrics:
        keys = ("psnr", "ssim", "codebook_usage", "perplexity", "steps", "wall_seconds")
        print(json.dumps({k: metrics[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
