"""Convert the field's published checkpoints into the project's model folders.

    # LlamaGen's VQ tokenizer -> a tokenizer folder (tokenizers_vis.load_tokenizer)
    python scripts/convert_checkpoint.py --from llamagen-vq --ckpt vq_ds16_c2i.pt --out runs/llamagen/vq16
    # LlamaGen's class-conditional GPT -> a generator folder (generators.load_generator)
    python scripts/convert_checkpoint.py --from llamagen-gpt --ckpt c2i_B_256.pt --out runs/llamagen/gpt_b
    # both -> a pipeline folder for scripts/generate.py --pipeline ... --class-label 207
    python scripts/convert_checkpoint.py --from llamagen-gpt --ckpt c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt \\
        --out runs/llamagen/pipeline_b

Presets are inferred from the checkpoint (VQ-16 / VQ-8 from its levels, GPT-B / L / XL from its width and depth);
``--preset`` names one instead, and a checkpoint that does not fit it is refused, naming the first mismatching key
and its shape. ``--image-size`` is LlamaGen's: 384 gives a 384-px GPT a 24x24 grid. Checkpoints are read with
``torch.load(weights_only=True)`` (or as safetensors): nothing pickled is executed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from generators.llamagen import GPT_ENTRIES, convert_llamagen_gpt, convert_llamagen_pipeline
from tokenizers_vis.llamagen import VQ_ENTRIES, convert_llamagen_vq, read_checkpoint

SOURCES = ("llamagen-vq", "llamagen-gpt")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", choices=SOURCES, required=True, help="the checkpoint's family")
    p.add_argument("--ckpt", type=Path, required=True, help="the checkpoint file (.pt / .pth / .safetensors)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--preset", help="the project preset to convert onto (default: inferred from the checkpoint)")
    p.add_argument(
        "--weights",
        choices=("model", "ema"),
        help="the checkpoint entry to read (default: LlamaGen's choice: ema first for the VQ, model for the GPT)",
    )
    p.add_argument("--image-size", type=int, default=256, help="the GPT's image size in pixels (LlamaGen's flag)")
    p.add_argument("--downsample-size", type=int, default=16, help="the GPT's tokenizer factor without --vq-ckpt")
    p.add_argument("--vq-ckpt", type=Path, help="with --from llamagen-gpt: the VQ too, written as a pipeline folder")
    p.add_argument("--vq-preset", help="the tokenizer preset for --vq-ckpt (default: inferred)")
    args = p.parse_args(argv)
    if args.vq_ckpt is not None and args.source != "llamagen-gpt":
        p.error("--vq-ckpt goes with --from llamagen-gpt")
    entries = (args.weights,) if args.weights else (VQ_ENTRIES if args.source == "llamagen-vq" else GPT_ENTRIES)
    try:
        state, entry = read_checkpoint(args.ckpt, entries)
        print(f"read {args.ckpt} ({entry}: {len(state)} tensors)")
        if args.source == "llamagen-vq":
            model = convert_llamagen_vq(state, args.preset)
        elif args.vq_ckpt is not None:
            vq_state, vq_entry = read_checkpoint(args.vq_ckpt, (args.weights,) if args.weights else VQ_ENTRIES)
            print(f"read {args.vq_ckpt} ({vq_entry}: {len(vq_state)} tensors)")
            model = convert_llamagen_pipeline(state, vq_state, args.image_size, args.preset, args.vq_preset)
        else:
            side = args.image_size // args.downsample_size
            model = convert_llamagen_gpt(state, args.preset, (side, side))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    model.save_pretrained(args.out)
    print(f"wrote {type(model).__name__} to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
