"""The import contracts of ``pyproject.toml`` hold, and they catch what they are for: each
planted violation, in a temporary copy of the package, breaks its contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run([LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "operator" / "kiln", tmp_path / "kiln",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_package_keeps_every_contract(copy: Path) -> None:
    done = lint(copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("engine_build/planted.py", "import kopf", "only the handlers and kiln.operator import kopf"),
    ("engine_build/plan.py", "from kiln.handlers import context", "api <- domain"),
    ("engine_build/plan.py", "from kiln.store import open_store", "plan and render are pure"),
    ("engine_deployment/plan.py", "from kiln.engine_build import jobs",
     "the two controllers stay apart"),
    ("builder/planted.py", "from kiln.engine_build import reconciler",
     "the programs in kiln's pods"),
    ("fetcher/planted.py", "import kopf", "the programs in kiln's pods"),
    ("contract/planted.py", "from kiln.engine_build import jobs", "api <- domain"),
    ("handlers/planted.py", "from kiln.dev import quickstart", "the quickstart and the test bed"),
])
def test_a_planted_violation_breaks_its_contract(copy: Path, module: str, line: str,
                                                 contract: str) -> None:
    path = copy / "kiln" / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{line}  # planted\n")
    done = lint(copy)
    assert done.returncode != 0, done.stdout
    broken = [row for row in done.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), done.stdout
