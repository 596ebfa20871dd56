"""Train a generator (next-token or next-X) on tokens of a trained tokenizer: text-, class- or unconditional.

    accelerate launch scripts/train_generator.py                                   # shipped tokenizer + CLIP
    accelerate launch scripts/train_generator.py --tokenizer runs/tok/model --steps 500 --output-dir runs/gen
    accelerate launch scripts/train_generator.py --config my_run.yaml --resume
    accelerate launch scripts/train_generator.py --preset nx-small --entity cell --k 2   # next-X (xAR)
    accelerate launch scripts/train_generator.py --objectives next=0.6,random=0.2,next_all=0.2 --num-predict 4
    accelerate launch scripts/train_generator.py --data my_photos/ --text-encoder google/flan-t5-base  # captioned
    accelerate launch scripts/train_generator.py --data imagenet/train --condition class --preset gpt-b \
        --tokenizer runs/vq16/model --resolution 256                             # class sub-folders
    accelerate launch scripts/train_generator.py --data videos --frames 9 --tokenizer runs/tok_video/model \
        --train-samples 12000 --output-dir runs/video_gen                       # text-to-video (GIF samples)
    accelerate launch scripts/train_generator.py --data videos --tokenizer runs/anchored/model \
        --first-frame-given --output-dir runs/motion_gen              # motion tokens after a given first frame

The data is tokenized once into token shards on disk (``--cache-dir``; a killed tokenization continues where it
stopped); a killed run continues with the same command plus ``--resume``. Sample grids (``samples_*.png``) are
written every ``--sample-every`` steps; the final pipeline folder (tokenizer + generator + text encoder, or the
class names) lands in ``<output-dir>/pipeline`` for ``scripts/generate.py``.
"""

from __future__ import annotations

import argparse
import json

from generators import ENTITIES, GeneratorTrainConfig, list_generators, train_generator

MODEL_FLAGS = ("entity", "k", "noisy_context", "num_predict", "objectives", "context_tokens")
SAMPLING_FLAGS = {"guidance_scale": float, "guidance_schedule": str, "temperature": float, "top_k": int, "top_p": float}


def ratios(text: str) -> dict[str, float]:
    """ "next=0.6,random=0.4" -> {"next": 0.6, "random": 0.4}."""
    try:
        return {name: float(value) for name, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected name=ratio pairs joined by commas, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> GeneratorTrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON or YAML file with GeneratorTrainConfig fields; flags override it")
    p.add_argument("--preset", choices=list_generators(), help="nt-*: next-token, nx-*: next-X (xAR)")
    # generator options, stored in model_overrides
    p.add_argument("--entity", choices=ENTITIES, help="next-X entity")
    p.add_argument("--k", type=int, help="next-X cell / subsample side")
    p.add_argument("--no-noisy-context", dest="noisy_context", action="store_false", default=None)
    p.add_argument("--num-predict", type=int, help="next-token: tokens predicted per slot (multi-token heads)")
    p.add_argument(
        "--objectives", type=ratios, help="next-token TokenUnify mixture, e.g. next=0.6,random=0.2,next_all=0.2"
    )
    p.add_argument(
        "--first-frame-given",
        dest="context_tokens",
        action="store_const",
        const="first-frame",
        help="videos over an anchored tokenizer: learn only the motion tokens after the first frame's, which "
        "sampling is always given (image-to-video, or factorized text-to-video through compose_video_pipeline.py)",
    )
    p.add_argument("--tokenizer", help="saved tokenizer folder")
    p.add_argument(
        "--text-encoder",
        "--prompt-encoder",
        dest="prompt_encoder",
        help="frozen text encoder: a project CLIP folder, a transformers CLIP / T5 / AutoModel text encoder (folder "
        "or hub name) or open_clip:NAME[:TAG]",
    )
    p.add_argument(
        "--no-prompt-words",
        dest="prompt_word_embeddings",
        action="store_false",
        default=None,
        help="condition on the CLIP text states only, without the word embeddings (see PromptEncoder)",
    )
    p.add_argument(
        "--data",
        help="scenes | videos (built-in, captioned; videos need a video tokenizer) | a folder of images (captions from "
        ".txt sidecars or metadata.jsonl/.csv) | a folder of class sub-folders | WebDataset .tar shards",
    )
    p.add_argument("--condition", choices=("auto", "text", "class", "none"), help="auto: by the data")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="also train on mirrored images (default: on for class / none, off for captions that may say left/right)",
    )
    p.add_argument("--num-workers", type=int, dest="num_workers", help="DataLoader workers while tokenizing")
    for name in ("resolution", "frames", "steps", "batch_size", "train_samples", "eval_samples", "save_every"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    for name in ("sample_every", "seed", "warmup_steps", "cpu_threads", "max_nonfinite_skips"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    for name in ("lr", "weight_decay"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, dest=name)
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"))
    p.add_argument("--pipeline-dtype", choices=("float32", "bfloat16"), help="generator weights in pipeline/")
    p.add_argument("--pipeline-tokenizer-dtype", choices=("float32", "bfloat16"), help="tokenizer weights there")
    # sampling defaults stored in the pipeline (scripts/generate.py and pipe(...) use them unless overridden)
    for name, kind in SAMPLING_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name, help="sampling default")
    p.add_argument("--output-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    args = vars(p.parse_args(argv))
    sampling = {k: v for k in SAMPLING_FLAGS if (v := args.pop(k)) is not None}
    model = {k: v for k in MODEL_FLAGS if (v := args.pop(k)) is not None}
    overrides = {k: v for k, v in args.items() if v is not None and k != "config"}
    if args["config"]:
        cfg = GeneratorTrainConfig.from_file(args["config"], **overrides)
    else:
        cfg = GeneratorTrainConfig(**overrides)
    cfg.sampling_defaults = {**cfg.sampling_defaults, **sampling}
    cfg.model_overrides = {**cfg.model_overrides, **model}
    return cfg


def main() -> None:
    metrics = train_generator(parse_args())
    if metrics:
        keys = ("heldout_loss", "heldout_token_accuracy", "steps", "wall_seconds", "params")
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


if __name__ == "__main__":
    main()
