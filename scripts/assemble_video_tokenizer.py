"""Join a trained image tokenizer (the first frame's tokens) and a trained anchored 1D video tokenizer (the motion
tokens) into one :class:`tokenizers_vis.anchored_video.AnchoredVideoTokenizer` for a text-to-video generator:

    python scripts/assemble_video_tokenizer.py --image assets/pipeline/tokenizer --motion runs/video/motion/model \\
        --output-dir runs/video/tokenizer
    accelerate launch scripts/train_generator.py --data videos --tokenizer runs/video/tokenizer/model ...

Writes ``<output-dir>/model`` and ``<output-dir>/metrics.json`` (both parts' training records; ``run_seconds`` and
``wall_seconds`` are their sums, so the pipeline's ``training.json`` counts both runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers_vis import load_tokenizer
from tokenizers_vis.anchored_video import AnchoredVideoTokenizer
from tokenizers_vis.train_core import save_model_atomically


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, required=True, help="saved ImageTokenizer folder (frame 0's tokens)")
    p.add_argument("--motion", type=Path, required=True, help="saved anchored Video1DTokenizer folder")
    p.add_argument("--output-dir", type=Path, required=True)
    args = p.parse_args(argv)
    model = AnchoredVideoTokenizer.from_parts(load_tokenizer(args.image), load_tokenizer(args.motion))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    save_model_atomically(model, args.output_dir / "model")
    parts = {}
    for name, folder in (("image", args.image), ("motion", args.motion)):
        record = folder.parent / "metrics.json"
        parts[name] = {"folder": str(folder)} | (json.loads(record.read_text()) if record.is_file() else {})
    metrics = {"tokenizer": type(model).__name__, "tokens_per_clip": model.num_tokens, "parts": parts}
    for key in ("run_seconds", "wall_seconds"):
        if all(key in part for part in parts.values()):
            metrics[key] = round(sum(part[key] for part in parts.values()), 1)
    (args.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{model.num_tokens} tokens per clip ({model.frame_tokens} of the first frame): {args.output_dir / 'model'}")
    return args.output_dir / "model"


if __name__ == "__main__":
    main()
