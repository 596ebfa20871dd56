"""Generate images from prompts with a saved text-to-image pipeline (default: the one shipped in assets/).

    python scripts/generate.py --prompt "a large red circle at the top left"
    python scripts/generate.py --prompt "a small blue star at the center" \\
        --prompt "a large white square at the right" --num-images 8 --guidance-scale 3 \\
        --top-k 100 --seed 1 --out outputs/demo
    python scripts/generate.py --generator next-x --entity cell --k 2 --prompt "a large red circle at the top left"
    python scripts/generate.py --pipeline runs/classes/pipeline --class-label 207 --class-label tabby_cat
    python scripts/generate.py --pipeline runs/uncond/pipeline --num-images 16      # unconditional

Prompts follow the scene-caption grammar the shipped model was trained on:
"a <small|large> <colour> <shape> at the <position>", objects joined with ", " and " and ".
Writes one PNG per image and grid.png (one row per prompt) under --out and prints their paths. Prompts that
describe motion ("a small blue square moving to the right"), or --video, use the text-to-video pipeline shipped in
assets/video_pipeline (or a text-to-video --pipeline folder): one GIF per clip and grid.gif.

    python scripts/generate.py --prompt "a large red circle moving to the left" --prompt "a small blue star moving up"
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from generators import (
    ENTITIES,
    RERANKERS,
    SAMPLING_KEYS,
    TextToImagePipeline,
    TextToVideoPipeline,
    is_video_pipeline,
    save_grid,
)
from generators.family import GeneratorFamily
from generators.registry import generator_families

ASSETS = Path(__file__).resolve().parent.parent / "assets"
VIDEO_PIPELINE = ASSETS / "video_pipeline"
FAMILIES = generator_families()  # `--generator` kind -> what its generators take


def family_flags(family: GeneratorFamily) -> tuple[str, ...]:
    """The flags (as argument names) of one generator family only: its pipeline options and sampling settings."""
    return (*family.run_defaults, *family.sampling_keys)


def check_family_flags(args: argparse.Namespace) -> str | None:
    """Why the flags given do not fit ``--generator`` (a flag of another family), or None."""
    own = family_flags(FAMILIES[args.generator])
    for kind, family in FAMILIES.items():
        flags = family_flags(family)
        if any(getattr(args, name) is not None and name not in own for name in flags):
            names = [f"--{name.replace('_', '-')}" for name in flags]
            listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            return f"{listed} {'needs' if len(names) == 1 else 'need'} --generator {kind}"
    return None


def pipeline_options(args: argparse.Namespace) -> dict:
    """The ``--generator`` family's pipeline options given on the command line (``--entity``, ``--k``)."""
    return {name: v for name in FAMILIES[args.generator].run_defaults if (v := getattr(args, name)) is not None}


def default_pipeline(kind: str, options: dict) -> Path:
    """The shipped pipeline of a generator kind: assets/pipeline (next-token), assets/pipeline_nx_<entity>[_k<k>]."""
    if kind == "next-token":
        return ASSETS / "pipeline"
    options = FAMILIES[kind].run_defaults | options
    entity = options["entity"]
    return ASSETS / (f"pipeline_nx_{entity}" + (f"_k{options['k']}" if entity in ("cell", "subsample") else ""))


def describes_motion(prompt: str) -> bool:
    """Whether a prompt asks for a clip: the moving-shape captions say how the object is "moving"."""
    return "moving" in prompt.lower().split()


def wants_video(p: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """``--video``, or every prompt describes motion (a mix is refused: one run makes images or clips)."""
    moving = [describes_motion(prompt) for prompt in args.prompt or []]
    if any(moving) and not all(moving):
        p.error("some prompts describe motion and some do not: run the clips and the images separately")
    return args.video or (bool(moving) and all(moving))


def check_generator(pipe: TextToImagePipeline, kind: str, options: dict, folder: Path) -> None:
    """Refuses a pipeline whose generator is not the one the flags ask for."""
    config = pipe.generator.config
    if type(pipe.generator).family.kind != kind:
        found = type(pipe.generator).__name__
        raise SystemExit(f"{folder} holds a {found}, not a {kind} generator; pass the matching --generator")
    for name, wanted in options.items():
        if config.get(name) != wanted:
            raise SystemExit(f"{folder}'s {kind} generator has {name}={config.get(name)!r}, not {wanted!r}")


def slug(prompt: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit] or "prompt"


def sampling_flags(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (the rest come from the pipeline's defaults)."""
    return {k: v for k in SAMPLING_KEYS if (v := getattr(args, k, None)) is not None}


def generate_videos(args: argparse.Namespace, folder: Path, start: float) -> list[Path]:
    """A text-to-video pipeline folder: one GIF per clip and grid.gif (one row per prompt)."""
    if not args.prompt:
        raise SystemExit("a text-to-video pipeline needs --prompt")
    if not FAMILIES[args.generator].takes_videos:
        kinds = " or ".join(kind for kind, family in FAMILIES.items() if family.takes_videos)
        raise SystemExit(f"text-to-video pipelines use a {kinds} generator")
    pipe = TextToVideoPipeline.from_pretrained(folder, device=args.device)
    sampling = sampling_flags(args)
    out = pipe(
        args.prompt,
        num_videos_per_prompt=args.num_images,
        seed=args.seed,
        use_cache=not args.no_cache,
        progress=True,
        **sampling,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(out.videos):
        path = args.out / f"{slug(args.prompt[i // args.num_images])}_{i % args.num_images}.gif"
        clip[0].save(path, save_all=True, append_images=clip[1:], duration=125, loop=0)
        paths.append(path)
    out.save_gif(args.out / "grid.gif", per_row=args.num_images)
    print(f"{len(paths)} clips in {time.perf_counter() - start:.1f} s ({pipe.defaults | sampling})")
    for path in [*paths, args.out / "grid.gif"]:
        print(path)
    return paths


def requested_rows(p: argparse.ArgumentParser, args: argparse.Namespace, pipe: TextToImagePipeline) -> tuple:
    """(one name per grid row, the pipeline's keyword arguments) for the condition the pipeline was trained with."""
    kind = pipe.generator.config.condition
    given = {"prompt": args.prompt, "class": args.class_labels}
    for name, value in given.items():
        if value and kind != name:
            flag = "--prompt" if name == "prompt" else "--class-label"
            described = {"prompt": "text-conditioned", "class": "class-conditioned", "none": "unconditional"}[kind]
            p.error(f"{flag} does not apply: this pipeline is {described}")
    if kind == "prompt":
        if not args.prompt:
            p.error("this pipeline is text-conditioned: pass --prompt")
        return args.prompt, {"prompt": args.prompt}
    if kind == "class":
        if not args.class_labels:
            names = ", ".join(pipe.class_names or []) or f"ids 0..{pipe.generator.config.num_classes - 1}"
            p.error(f"this pipeline is class-conditioned: pass --class-label (one of {names})")
        labels = [int(x) if x.isdigit() else x for x in args.class_labels]
        try:
            pipe.class_ids(labels)
        except ValueError as error:
            p.error(str(error))
        return [str(x) for x in args.class_labels], {"class_labels": labels}
    return ["sample"], {}


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", help="repeat for several prompts (text-conditioned pipelines)")
    p.add_argument(
        "--class-label",
        action="append",
        dest="class_labels",
        help="class id or name, repeat for several (class-conditioned pipelines); neither flag: unconditional",
    )
    p.add_argument("--pipeline", type=Path, help="saved pipeline folder (default: the shipped one of --generator)")
    p.add_argument("--generator", choices=list(FAMILIES), default="next-token")
    p.add_argument("--video", action="store_true", help="clips from the shipped text-to-video pipeline")
    p.add_argument("--entity", choices=ENTITIES, help="next-X entity (token, cell, subsample, scale, image)")
    p.add_argument("--k", type=int, help="next-X cell / subsample side")
    p.add_argument("--flow-steps", type=int, help="next-X: Euler steps of the flow head per entity")
    p.add_argument(
        "--num-predict-used", type=int, help="next-token with multi-token heads: tokens proposed and verified per pass"
    )
    p.add_argument("--num-images", type=int, default=4, help="images per prompt")
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--guidance-schedule", choices=("constant", "linear", "cosine"))
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--num-candidates", type=int, help="samples per image; the pipeline's re-ranker keeps the best")
    p.add_argument("--rerank", choices=RERANKERS, help="how the best candidate is picked (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at every step (slow)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("outputs"))
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be >= 1")

    if mismatch := check_family_flags(args):
        p.error(mismatch)
    start = time.perf_counter()
    family, options = FAMILIES[args.generator], pipeline_options(args)
    video = args.pipeline is None and args.generator == "next-token" and wants_video(p, args)
    folder = args.pipeline or (VIDEO_PIPELINE if video else default_pipeline(args.generator, options))
    if video and not folder.is_dir():
        p.error(f"no text-to-video pipeline at {folder}; rebuild it with `make assets-video`")
    if not folder.is_dir():
        flags = "".join(f" --{name} {value}" for name, value in (family.run_defaults | options).items())
        p.error(
            f"no pipeline at {folder}; train one with `accelerate launch scripts/train_generator.py --preset "
            f"{family.default_preset}{flags}` and pass its <output-dir>/pipeline as --pipeline"
        )
    if is_video_pipeline(folder):
        return generate_videos(args, folder, start)
    if args.video:
        p.error(f"--video needs a text-to-video pipeline; {folder} holds a text-to-image one")
    pipe = TextToImagePipeline.from_pretrained(folder, device=args.device)
    check_generator(pipe, args.generator, options, folder)
    rows, request = requested_rows(p, args, pipe)
    sampling = sampling_flags(args)
    out = pipe(
        **request,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        use_cache=not args.no_cache,
        progress=True,
        **sampling,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(out.images):
        path = args.out / f"{slug(rows[i // args.num_images])}_{i % args.num_images}.png"
        image.save(path)
        paths.append(path)
    save_grid(out.images, args.out / "grid.png", per_row=args.num_images)
    settings = pipe.defaults | sampling
    print(f"{len(paths)} images in {time.perf_counter() - start:.1f} s ({settings})")
    for path in [*paths, args.out / "grid.png"]:
        print(path)
    return paths


if __name__ == "__main__":
    main()
