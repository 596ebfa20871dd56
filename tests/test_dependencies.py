"""Declared dependency bounds are the versions the suite runs on: pyproject's lower bounds equal the pins of
constraints/oldest.txt (what `make test-oldest` installs), and pruning's supported transformers range matches."""

import re
import tomllib
from pathlib import Path

from pruning import compat

ROOT = Path(__file__).resolve().parents[1]


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def declared() -> dict[str, tuple[str, str | None]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,<=([0-9.]+))?", requirement)
        assert match, f"{requirement!r}: every dependency needs a '>=' lower bound (and at most a '<=' cap)"
        bounds[_name(match[1])] = (match[2], match[3])
    return bounds


def oldest_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)={2,3}([0-9.]+)", line).groups()
            pins[_name(name)] = version
    return pins


def test_lower_bounds_are_the_pinned_oldest_versions():
    bounds, pins = declared(), oldest_pins()
    assert sorted(bounds) == sorted(pins)
    for name, (lower, _) in bounds.items():
        pinned = pins[name]
        assert _release(lower) == _release(pinned), f"{name}: pyproject says >={lower}, oldest.txt pins {pinned}"


def test_pruning_names_the_declared_transformers_range():
    lower, upper = declared()["transformers"]
    assert _release(compat.OLDEST_TESTED) == _release(lower)
    assert upper is not None and _release(compat.NEWEST_TESTED) == _release(upper)
