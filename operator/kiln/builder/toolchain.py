"""What the image and the node provide: versions, GPUs, and running TensorRT-LLM's tools."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kiln.builder.progress import say
from kiln.contract import version_guard
from kiln.contract.env import TRTLLM_EXAMPLES, TRTLLM_PYTHON
from kiln.errors import GPUUnavailable, OutOfDisk, ToolFailed, Unsupported

DISTRIBUTIONS = {
    "tensorrt_llm": ("tensorrt_llm", "tensorrt-llm"),
    "tensorrt": ("tensorrt", "tensorrt_cu13", "tensorrt-cu13", "tensorrt_cu12", "tensorrt-cu12"),
    "torch": ("torch",),
    "modelopt": ("nvidia-modelopt", "nvidia_modelopt"),
    "transformers": ("transformers",),
    version_guard.CUDA: (),
}
"""Version key in the manifest (the module's name) → Python distributions of the toolchain
that may carry it."""
VERSION_READER = Path(version_guard.__file__)
"""The serving container's version guard reads versions with this file; the builder runs the
same file (``--print-versions``) with the toolchain's Python, so both read them alike."""
TAIL_LINES = 30


def tool_python() -> str:
    return os.environ.get(TRTLLM_PYTHON) or "python3"


def versions() -> dict[str, str]:
    """Versions of kiln and of the toolchain this build runs with (those installed)."""
    found = {"python": platform.python_version()}
    with contextlib.suppress(metadata.PackageNotFoundError):
        found["kiln"] = metadata.version("kiln")
    try:
        out = subprocess.run([tool_python(), str(VERSION_READER), "--print-versions",
                              json.dumps(DISTRIBUTIONS)],
                             capture_output=True, text=True, timeout=120, check=True)
        found.update({str(k): str(v) for k, v in json.loads(out.stdout).items()})
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        say(f"cannot read the toolchain's versions: {e}", phase="versions")
    driver = {g.driver for g in gpus()}
    if driver:
        found["nvidia_driver"] = ",".join(sorted(driver))
    return found


@dataclass(frozen=True)
class GPU:
    name: str
    compute_capability: str
    driver: str


def gpus() -> list[GPU]:
    """The GPUs ``nvidia-smi`` sees (none without the tool or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append(GPU(*parts))
    return found


def require_gpu(compute_capability: str, why: str) -> list[GPU]:
    """The visible GPUs, which must exist and have the target's compute capability."""
    found = gpus()
    if not found:
        raise GPUUnavailable(f"{why} needs an NVIDIA GPU and none is visible (no nvidia-smi "
                             "or no device): run the build on a GPU node")
    wrong = sorted({g.compute_capability for g in found} - {compute_capability})
    if wrong:
        raise GPUUnavailable(f"the target needs compute capability {compute_capability}, this "
                             f"node's GPUs have {', '.join(wrong)} ({found[0].name})")
    return found


def require_engine_toolchain(examples: Path) -> None:
    """The image must still have the engine path (TensorRT-LLM ≤ 1.2.x)."""
    if shutil.which("trtllm-build") is None:
        raise Unsupported("this builder image has no trtllm-build: the engine path needs "
                          "TensorRT-LLM 1.2.x or older (or use backend pytorch)")
    if not examples.is_dir():
        raise Unsupported(f"this builder image has no TensorRT-LLM examples at {examples} "
                          f"(set {TRTLLM_EXAMPLES})")


_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_]*)")


def help_flags(cmd: list[str]) -> set[str] | None:
    """The ``--flags`` a tool's ``--help`` lists, or None when it cannot say (missing file,
    an import error, a non-zero exit)."""
    try:
        out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=300,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return set(_FLAG.findall(out.stdout))


def run(cmd: list[str], *, phase: str, cwd: Path | None = None) -> float:
    """Run one tool, its output passed through to the log; returns its seconds.

    A non-zero exit raises :class:`ToolFailed` with the last lines of output, or
    :class:`OutOfDisk` when the tool ran out of space.
    """
    say(" ".join(cmd), phase=phase, step="run")
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as e:
        raise ToolFailed(f"{phase}: cannot run {cmd[0]}: {e}") from None
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip())
    code = process.wait()
    seconds = time.monotonic() - started
    if code == 0:
        say("", phase=phase, step="done", seconds=f"{seconds:.1f}")
        return seconds
    text = "\n".join(tail)
    if "No space left on device" in text:
        raise OutOfDisk(f"{phase}: {cmd[0]} ran out of disk space:\n{text}")
    why = "was killed (out of memory?)" if code == -9 else f"exited with code {code}"
    raise ToolFailed(f"{phase}: {tool_name(cmd)} {why}; last output:\n{text}")


def tool_name(cmd: list[str]) -> str:
    """``quantize.py`` for ``python3 .../quantize.py ...``, else the program's name."""
    if len(cmd) > 1 and Path(cmd[0]).name.startswith("python") and cmd[1].endswith(".py"):
        return Path(cmd[1]).name
    return Path(cmd[0]).name
