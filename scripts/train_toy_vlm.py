"""Train the toy VLM that the pruning benchmark measures on, and ship it in ``assets/toy_vlm``.

A tiny ``LlavaForConditionalGeneration`` (random init; CLIP vision tower, Llama decoder, word-level tokenizer, all
built in code) learns one-word VQA (colour / shape / count / position) over the project's captioned synthetic scenes.

    python scripts/train_toy_vlm.py                      # rebuilds assets/toy_vlm (run time: docs/pruning.md)
    python scripts/train_toy_vlm.py --steps 200 --out runs/toy_vlm

Four questions are packed after each image's visual tokens, and an auxiliary loss makes the decoder name the shape,
colour and cell of the object each question is about (``--referent-weight``): the decoder's errors were retrievals
of the wrong object, and that loss is what lifted the held-out accuracy (docs/pruning.md has the measurements).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402

from pruning.toy_vlm import (  # noqa: E402
    SceneVocab,
    accuracy,
    build_tokenizer,
    predict,
    question_set,
    toy_llava_config,
    train,
)
from tokenizers_vis.data import SyntheticScenes  # noqa: E402
from tokenizers_vis.data.language import COLORS, POSITIONS, SHAPES, SIZE_FRACTION, SIZES  # noqa: E402
from tokenizers_vis.train_core import cpu_name  # noqa: E402

VOCAB = SceneVocab(SHAPES, COLORS, POSITIONS, tuple(SIZE_FRACTION[s] for s in SIZES), max_objects=3)


def heldout_set(num: int, resolution: int, seed: int = 0):
    """The fixed held-out VQA set shared with the benchmark and the tests: images ``(N, 3, R, R)``, questions."""
    scenes = SyntheticScenes(num, resolution, split="heldout", seed=seed, max_objects=VOCAB.max_objects)
    return question_set([scenes[i] for i in range(num)], VOCAB, seed=seed)


def save_examples(images: torch.Tensor, items, predictions, path: Path, count: int = 8) -> None:
    """A row of held-out images titled with question, answer and prediction."""
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.2))
    for ax, image, item, pred in zip(axes, images, items, predictions, strict=False):
        ax.imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
        mark = "ok" if pred == item.answer else "WRONG"
        ax.set_title(f"{item.question}\nanswer: {item.answer}\npred: {pred} ({mark})", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("assets/toy_vlm"))
    p.add_argument("--steps", type=int, default=10000, help="schedule length; --time-limit ends it first on a CPU")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--questions-per-image", type=int, default=4, help="questions packed after each image's tokens")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--referent-weight", type=float, default=1.0, help="weight of the question-object loss (0: off)")
    p.add_argument(
        "--time-limit", type=float, default=1800.0, help="training seconds; the LR schedule follows elapsed time"
    )
    p.add_argument("--train-scenes", type=int, default=50000)
    p.add_argument("--eval-scenes", type=int, default=800)
    p.add_argument("--resolution", type=int, default=96)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--vision-dim", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-dim", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = build_tokenizer(VOCAB)
    config = toy_llava_config(
        tokenizer,
        image_size=args.resolution,
        patch_size=args.patch_size,
        vision_dim=args.vision_dim,
        vision_layers=args.vision_layers,
        text_dim=args.text_dim,
        text_layers=args.text_layers,
    )
    model = LlavaForConditionalGeneration(config)
    scenes = SyntheticScenes(args.train_scenes, args.resolution, split="train", seed=args.seed)

    start, cpu_start = time.perf_counter(), time.process_time()
    steps = train(
        model,
        tokenizer,
        scenes,
        VOCAB,
        args.steps,
        args.batch_size,
        args.questions_per_image,
        args.lr,
        seed=args.seed,
        referent_weight=args.referent_weight,
        time_limit=args.time_limit,
    )
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    images, items = heldout_set(args.eval_scenes, args.resolution)
    predictions = predict(model, tokenizer, images, [it.question for it in items])
    acc = accuracy(predictions, items)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    save_examples(images, items, predictions, args.out / "heldout_examples.png")
    report = {
        "steps": steps,
        "batch_size": args.batch_size,
        "questions_per_image": args.questions_per_image,
        "referent_weight": args.referent_weight,
        "train_seconds": round(train_seconds, 1),
        # wall time grows when other processes share the core; CPU time is what the run itself needed
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "visual_tokens": (args.resolution // args.patch_size) ** 2,
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_questions": len(items),
        "heldout_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "command": shlex.join(["python", *sys.argv]),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
