"""docs/architecture.md's module map names every package and top-level module under
``kiln/``, and names nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kiln"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> set[str]:
    """``kiln.<name>`` for every package and module directly under ``kiln/``."""
    found = {f"kiln.{p.name}" for p in PACKAGE.iterdir()
             if p.is_dir() and (p / "__init__.py").exists()}
    found |= {f"kiln.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return found


def mapped() -> set[str]:
    text = DOC.read_text().split("## Module map", 1)[1]
    return set(re.findall(r"`(kiln\.[a-z0-9_]+)`", text))


def test_every_package_and_module_is_in_the_map() -> None:
    missing = modules() - mapped()
    assert not missing, f"docs/architecture.md's module map lacks {sorted(missing)}"


def test_the_map_names_only_what_exists() -> None:
    stale = mapped() - modules()
    assert not stale, f"docs/architecture.md's module map names {sorted(stale)}"


def test_submodules_named_in_the_map_exist() -> None:
    """A row's backticked submodule names (``plan``, ``render`` ...) are real modules."""
    text = DOC.read_text().split("## Module map", 1)[1]
    for package, rest in re.findall(r"^\| `(kiln\.[a-z0-9_]+)` \| (.*) \|$", text, re.M):
        directory = PACKAGE / package.removeprefix("kiln.")
        if not directory.is_dir():
            continue
        for name in re.findall(r"`([a-z_]+)` \(", rest):
            assert (directory / f"{name}.py").exists() or (directory / name).is_dir(), (
                f"{package}.{name} is in the module map but not in the package")
