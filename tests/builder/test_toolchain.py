"""Running tools, reading versions, finding GPUs and free disk (real processes and files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kiln.builder import disk, toolchain
from kiln.contract.env import TRTLLM_PYTHON
from kiln.errors import GPUUnavailable, OutOfDisk, ToolFailed


def test_run_passes_output_through_and_reports_failures(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert toolchain.run([sys.executable, "-c", "print('converted')"], phase="convert") >= 0
    assert "converted" in capsys.readouterr().out
    script = "import sys; [print(f'line {i}') for i in range(100)]; sys.exit(3)"
    with pytest.raises(ToolFailed) as e:
        toolchain.run([sys.executable, "-c", script], phase="trtllm-build")
    assert "exited with code 3" in e.value.message
    assert "line 99" in e.value.message
    assert "line 10\n" not in e.value.message, "only the tail is kept"
    with pytest.raises(OutOfDisk):
        toolchain.run([sys.executable, "-c",
                       "raise OSError(28, 'No space left on device')"], phase="convert")
    with pytest.raises(ToolFailed, match="cannot run"):
        toolchain.run(["/nonexistent/trtllm-build"], phase="trtllm-build")


def test_tool_name_names_the_script() -> None:
    assert toolchain.tool_name(["python3", "/x/quantize.py", "--qformat", "fp8"]) == "quantize.py"
    assert toolchain.tool_name(["/usr/local/bin/trtllm-build", "--x"]) == "trtllm-build"


def test_versions_come_from_the_toolchain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRTLLM_PYTHON, sys.executable)
    found = toolchain.versions()
    assert found["kiln"] == "0.1.0"
    assert "python" in found
    assert "tensorrt_llm" not in found or found["tensorrt_llm"][0].isdigit()


@pytest.mark.skipif(bool(toolchain.gpus()), reason="a GPU is here")
def test_no_gpu_is_a_clear_error() -> None:
    with pytest.raises(GPUUnavailable, match="needs an NVIDIA GPU"):
        toolchain.require_gpu("9.0", "trtllm-build")


def test_free_disk_check_is_real(tmp_path: Path) -> None:
    free = disk.free_bytes(tmp_path)
    assert disk.require(tmp_path, 1, what="a build") == free or free > 0
    with pytest.raises(OutOfDisk, match="only"):
        disk.require(tmp_path, free * 1024 + (1 << 50), what="a build")
