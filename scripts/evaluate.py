"""Evaluate a tokenizer or a text-to-image pipeline on your own images.

    python scripts/evaluate.py tokenizer --tokenizer runs/tokenizer/model --data my_images/ --split heldout
    python scripts/evaluate.py generator --pipeline assets/pipeline --reference my_heldout_images/ --num-samples 1000

tokenizer: rFID (Fréchet distance between the folder's images and their reconstructions), PSNR and SSIM.
generator: FID of generated images against the reference folder's images. A prompt pipeline samples with the
reference images' captions (metadata.jsonl / .csv or .txt sidecars; or give --prompt), a class pipeline with their
classes (the folder holds <class name>/<image>), an unconditional one with nothing.

--fid inception is the standard FID (Inception-v3 features; needs the torch-fidelity package and its weights file,
downloaded once). --fid clip is the Fréchet distance in the project CLIP's image space: offline, comparable only with
itself. The default takes inception when torch-fidelity and its weights are already on this machine, and clip
otherwise (with a notice), so a run never starts a download it did not ask for.

Prints the metrics as JSON and writes them to --out, with a PNG grid beside it (<out>_grid.png): the first reference
images / originals on top, their generated images / reconstructions below. Unreadable image files are skipped and
counted ("skipped").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

from generators import TextToImagePipeline
from tokenizers_vis import load_tokenizer
from tokenizers_vis.clip import DEFAULT_CLIP
from tokenizers_vis.evaluation import (
    FID_KINDS,
    InceptionUnavailableError,
    frechet_metric,
    generation_fid,
    inception_available,
    inception_weights_path,
    reconstruction_metrics_on_folder,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    tok = commands.add_parser("tokenizer", help="rFID, PSNR and SSIM of a tokenizer on an image folder")
    tok.add_argument("--tokenizer", type=Path, required=True, help="folder saved by save_pretrained")
    tok.add_argument("--data", type=Path, required=True, help="folder of images (searched recursively)")
    tok.add_argument("--resolution", type=int, help="default: the tokenizer's input size if fixed, else 64")
    tok.add_argument("--max-images", type=int)
    gen = commands.add_parser("generator", help="FID of a text-to-image pipeline against a reference folder")
    gen.add_argument("--pipeline", type=Path, default=ROOT / "assets" / "pipeline")
    gen.add_argument("--reference", type=Path, required=True, help="folder of held-out real images")
    gen.add_argument("--num-samples", type=int, help="images to generate (default: as many as the references)")
    gen.add_argument("--max-reference", type=int, help="read at most this many reference images")
    gen.add_argument("--prompt", action="append", help="sample with these prompts instead of the captions")
    gen.add_argument("--seed", type=int, default=0)
    for sub in (tok, gen):
        sub.add_argument(
            "--fid",
            choices=("auto", *FID_KINDS),
            default="auto",
            help="inception: standard FID; clip: offline; auto: inception if its weights are here, else clip",
        )
        sub.add_argument("--clip", default=str(ROOT / DEFAULT_CLIP), help="CLIP folder for --fid clip")
        sub.add_argument(
            "--inception-weights", type=Path, help=f"Inception weights file (default: {inception_weights_path()})"
        )
        sub.add_argument(
            "--split",
            choices=("all", "train", "heldout"),
            default="all",
            help="all files, or the 95 %% / 5 %% hash split",
        )
        sub.add_argument("--batch-size", type=int, default=32)
        sub.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading the images")
        sub.add_argument("--out", type=Path, help="JSON file (default runs/evaluate/<command>.json)")
    return p.parse_args(argv)


def fid_kind(args: argparse.Namespace) -> str:
    if args.fid != "auto":
        return args.fid
    if inception_available(args.inception_weights):
        return "inception"
    print(
        "notice: Inception FID needs torch-fidelity and its weights, which are not on this machine; reporting the "
        "Fréchet distance in CLIP space instead (--fid clip; not comparable with published FID)",
        file=sys.stderr,
    )
    return "clip"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = fid_kind(args)
    try:  # before any model is loaded, so a missing Inception fails fast
        metric = frechet_metric(kind, args.clip, args.inception_weights, device)
    except InceptionUnavailableError as error:
        raise SystemExit(f"error: {error}") from None
    common = dict(split=args.split, batch_size=args.batch_size, metric=metric, num_workers=args.num_workers)
    if args.command == "tokenizer":
        tokenizer = load_tokenizer(args.tokenizer).to(device)
        result = reconstruction_metrics_on_folder(
            tokenizer, args.data, args.resolution, max_images=args.max_images, **common
        )
        report = {"tokenizer": str(args.tokenizer), "data": str(args.data)}
    else:
        pipeline = TextToImagePipeline.from_pretrained(args.pipeline, device=device)
        result = generation_fid(
            pipeline,
            args.reference,
            args.num_samples,
            args.prompt,
            max_reference=args.max_reference,
            seed=args.seed,
            **common,
        )
        report = {"pipeline": str(args.pipeline), "reference": str(args.reference), "seed": args.seed}
    report |= {"split": args.split, "fid_features": kind, **result.metrics}
    if kind == "clip":
        report["clip"] = args.clip
    out = args.out or ROOT / "runs" / "evaluate" / f"{args.command}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = out.with_name(f"{out.stem}_grid.png")
    save_image(torch.cat([result.real, result.fake]), grid, nrow=len(result.real), padding=2, pad_value=1.0)
    report["grid"] = str(grid)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
