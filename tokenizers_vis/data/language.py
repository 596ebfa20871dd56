"""The scene language: the vocabularies of the synthetic scenes and moving-shape clips, the caption writers, and
the parsers that read captions and prompts back into objects.

A still scene is captioned ``"a <size> <colour> <shape> at the <position>"`` per object, in reading order of the
cells and joined as "A", "A and B" or "A, B and C"; a clip ``"a <size> <colour> <shape> moving <direction>"``.
Rendering lives in :mod:`.scenes` and :mod:`.videos`; everything that writes or reads the words lives here, so the
data, the grader and CLIP's word tokenizer cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
SIZES: tuple[str, ...] = ("small", "large")
# Index = cell id, row-major over the 3x3 grid.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
# Diameter of the shape's circumscribed circle as a fraction of the cell side; rotation and jitter
# therefore never push a shape outside its cell.
SIZE_FRACTION: dict[str, float] = {"small": 0.5, "large": 0.88}

# One pair per shape and per colour, so every shape and every colour is still seen during training,
# only never in these combinations.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "orange"),
        ("square", "cyan"),
        ("triangle", "purple"),
        ("diamond", "red"),
        ("star", "green"),
        ("hexagon", "yellow"),
    }
)

# Direction name -> unit step (dx, dy) in image coordinates (y down). Diagonals move along both axes.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "to the left": (-1.0, 0.0),
    "to the right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "towards the top left": (-1.0, -1.0),
    "towards the top right": (1.0, -1.0),
    "towards the bottom left": (-1.0, 1.0),
    "towards the bottom right": (1.0, 1.0),
}

GRAMMAR = "a <size> <colour> <shape> at the <position>"
VIDEO_GRAMMAR = "a <size> <colour> <shape> moving <direction>"
GRAMMAR_WORDS: tuple[str, ...] = ("a", "at", "the", "and", ",")
# For the moving-shape videos ("a red circle moving towards the top left").
MOTION_WORDS: tuple[str, ...] = ("moving", "to", "up", "down", "left", "right", "towards")
_VIDEO_PROMPT = re.compile(
    "a ({}) ({}) ({}) moving ({})".format(*("|".join(w) for w in (SIZES, COLORS, SHAPES, map(re.escape, DIRECTIONS))))
)


def caption_words() -> list[str]:
    """Every word of the caption grammars, without repeats: grammar words, sizes, colours, shapes, position words
    and motion words, in that order (the order of CLIP's word ids)."""
    position_words = [w for p in POSITIONS for w in p.split()]
    return list(dict.fromkeys([*GRAMMAR_WORDS, *SIZES, *COLORS, *SHAPES, *position_words, *MOTION_WORDS]))


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_caption(objects: Sequence[Mapping[str, Any]]) -> str:
    """Caption listing the objects (``shape``, ``color``, ``size``, ``cell``) in reading order of their cells
    (top-left first)."""
    return _join(
        [
            f"a {o['size']} {o['color']} {o['shape']} at the {POSITIONS[o['cell']]}"
            for o in sorted(objects, key=lambda o: o["cell"])
        ]
    )


def make_video_caption(objects: Sequence[Mapping[str, Any]]) -> str:
    """Caption of a clip's objects (``size``, ``color``, ``shape``, ``direction``), in the given order."""
    return _join([f"a {o['size']} {o['color']} {o['shape']} moving {o['direction']}" for o in objects])


def _grammar_error(prompt: str, reason: str) -> ValueError:
    return ValueError(
        f"cannot parse prompt {prompt!r}: {reason}.\n"
        f"Accepted grammar: '{GRAMMAR}', one to {len(POSITIONS)} such objects written as 'A', 'A and B' or "
        "'A, B and C' (each cell at most once; case, extra spaces and a final period do not matter), with\n"
        f"  <size>: {', '.join(SIZES)}\n  <colour>: {', '.join(COLORS)}\n  <shape>: {', '.join(SHAPES)}\n"
        f"  <position>: {', '.join(POSITIONS)}"
    )


def _parse_object(phrase: str, prompt: str) -> dict[str, Any]:
    words = phrase.split(" ")
    # One slot per word before the position, which may itself be one or two words.
    slots = [("'a'", ("a",)), ("a size", SIZES), ("a colour", COLORS), ("a shape", SHAPES)]
    slots += [("'at'", ("at",)), ("'the'", ("the",))]
    for k, (what, choices) in enumerate(slots):
        word = words[k] if k < len(words) else None
        if word not in choices:
            got = f"got {word!r}" if word is not None else "the phrase ended"
            raise _grammar_error(prompt, f"in {phrase!r} expected {what} but {got}")
    position = " ".join(words[len(slots) :])
    if position not in POSITIONS:
        raise _grammar_error(prompt, f"in {phrase!r} expected a position but got {position!r}")
    return {"shape": words[3], "color": words[2], "size": words[1], "cell": POSITIONS.index(position)}


def parse_prompt(prompt: str) -> list[dict[str, Any]]:
    """Inverse of :func:`make_caption`: the prompt's objects ``{"shape", "color", "size", "cell"}`` (cell = index
    into POSITIONS), sorted by cell. Raises ValueError, showing the grammar, otherwise."""
    # Case, runs of whitespace (also around commas) and one final period do not matter.
    text = re.sub(r"\s*,\s*", ", ", " ".join(prompt.lower().split())).removesuffix(".").strip()
    if not text:
        raise _grammar_error(prompt, "it is empty")
    head, sep, last = text.rpartition(" and ")
    phrases = [*head.split(", "), last] if sep else [text]
    if not sep and "," in text:
        raise _grammar_error(prompt, "the last two objects must be joined by ' and '")
    objects = [_parse_object(phrase, prompt) for phrase in phrases]
    cells = [o["cell"] for o in objects]
    if len(set(cells)) != len(cells):
        repeated = sorted({POSITIONS[c] for c in cells if cells.count(c) > 1})
        raise _grammar_error(prompt, f"more than one object at the {', '.join(repeated)}")
    return sorted(objects, key=lambda o: o["cell"])


def parse_video_prompt(prompt: str) -> dict[str, str]:
    """``"a large red circle moving to the left"`` -> ``{"size", "color", "shape", "direction"}``. One object only;
    raises ValueError, showing the grammar, otherwise (case, extra spaces and a final period do not matter)."""
    text = " ".join(prompt.lower().split()).removesuffix(".").strip()
    match = _VIDEO_PROMPT.fullmatch(text)
    if match is None:
        reason = (
            "it names more than one object; video grading handles one object per clip"
            if " and " in text or "," in text
            else "it does not follow the grammar"
        )
        raise ValueError(
            f"cannot parse video prompt {prompt!r}: {reason}.\nAccepted grammar: '{VIDEO_GRAMMAR}', with\n"
            f"  <size>: {', '.join(SIZES)}\n  <colour>: {', '.join(COLORS)}\n  <shape>: {', '.join(SHAPES)}\n"
            f"  <direction>: {', '.join(DIRECTIONS)}"
        )
    return dict(zip(("size", "color", "shape", "direction"), match.groups(), strict=True))


def video_frame_captions(prompt: str) -> tuple[str, str]:
    """A video prompt's end frames as still-scene captions: ``"a large red circle moving to the left"`` ->
    ``("a large red circle at the right", "a large red circle at the center")``. The object starts in the cell
    opposite its motion, the one start every clip of :mod:`.videos` allows for any size (its travel leaves room from
    there), and ends in the center cell (a travel of 0.4 of the side from a border cell's centre)."""
    words = parse_video_prompt(prompt)
    dx, dy = DIRECTIONS[words["direction"]]
    thing = f"a {words['size']} {words['color']} {words['shape']}"
    start = POSITIONS[int(1 - dy) * 3 + int(1 - dx)]
    return f"{thing} at the {start}", f"{thing} at the center"
