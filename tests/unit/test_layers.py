"""The import contracts of ``pyproject.toml`` name every module, hold, and catch what they are
for: a violation planted in every package of a temporary copy breaks its contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kiln"
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
PROCESS = {"cli", "operator", "config", "errors", "metrics"}
"""The package root holds the process and what every layer uses; nothing else."""
KOPF = {"handlers", "operator"}
"""The only modules that may import kopf."""
CONTROLLERS = ("engine_build", "engine_deployment")


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def members() -> set[str]:
    """The top-level modules and packages of ``kiln``."""
    return {p.stem for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__")
            or (p.is_dir() and (p / "__init__.py").exists())}


def layered() -> set[str]:
    names = set()
    for layer in contracts()["layers"]["layers"]:  # type: ignore[union-attr]
        for name in str(layer).replace("|", ":").split(":"):
            names.add(name.strip().removeprefix("kiln."))
    return names


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run([LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_root_holds_only_the_process() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules <= PROCESS, sorted(modules - PROCESS)


def test_every_module_sits_in_a_layer() -> None:
    assert layered() == members()


def test_the_kopf_rule_is_an_allow_list() -> None:
    sources = {str(s).removeprefix("kiln.")
               for s in contracts()["kopf"]["source_modules"]}  # type: ignore[union-attr]
    assert sources == members() - KOPF


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    done = lint(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _plant(copy: Path, member: str, line: str, planted: str) -> str:
    """Add ``line`` to ``member`` (a new module in a package); the importer's dotted name."""
    target = copy / "kiln" / member
    if target.is_dir():
        path = target / f"{planted}.py"
        path.write_text(f"{line}  # planted\n")
        return f"kiln.{member}.{planted}"
    path = target.with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    return f"kiln.{member}"


def test_a_violation_planted_in_every_package_breaks_a_contract(tmp_path: Path) -> None:
    """In one copy: ``import kopf`` in every module but the two allowed; an import of the
    handlers in every module below them; each controller importing the other; the pods'
    programs importing the API client. lint-imports names each planted import."""
    copy = tmp_path
    shutil.copytree(PACKAGE, copy / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    layers = [str(layer) for layer in contracts()["layers"]["layers"]]  # type: ignore[union-attr]
    handlers_at = next(i for i, layer in enumerate(layers) if "kiln.handlers" in layer)
    below = {n.strip().removeprefix("kiln.") for layer in layers[handlers_at + 1:]
             for n in layer.replace("|", ":").split(":")}
    expected = []
    for member in sorted(members() - KOPF):
        importer = _plant(copy, member, "import kopf", "planted_kopf")
        expected.append(f"{importer} -> kopf")
    for member in sorted(below):
        importer = _plant(copy, member, "from kiln.handlers import context", "planted_up")
        expected.append(f"{importer} -> kiln.handlers.context")
    for member, other in (CONTROLLERS, CONTROLLERS[::-1]):
        importer = _plant(copy, member, f"from kiln.{other} import plan", "planted_across")
        expected.append(f"{importer} -> kiln.{other}.plan")
    for member in ("builder", "fetcher"):
        importer = _plant(copy, member, "from kiln.kube import client", "planted_client")
        expected.append(f"{importer} -> kiln.kube.client")
    done = lint(copy)
    assert done.returncode != 0, done.stdout
    missing = [e for e in expected if e not in done.stdout]
    assert not missing, done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("engine_build/plan.py", "from kiln.store import open_store", "plan and render are pure"),
    ("domain/pool.py", "import kubernetes", "plan and render are pure"),
])
def test_plan_and_render_stay_pure(tmp_path: Path, module: str, line: str,
                                   contract: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "kiln" / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    done = lint(tmp_path)
    broken = [row for row in done.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), done.stdout
