"""AIPerf for the test bed's gate Jobs: a virtual environment of its own (AIPerf's pins,
``prometheus-client~=0.23`` and ``huggingface-hub<2``, conflict with kiln's), built once under
``~/.cache/kiln/aiperf/<version>`` with pip, as the test bed's binaries are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kiln.gate.aiperf import VERSION


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln") / "aiperf"


def ensure(version: str = VERSION) -> Path:
    """The ``aiperf`` executable of ``version``, installed first if the cache lacks it."""
    venv = cache_dir() / version
    program = venv / "bin" / "aiperf"
    if program.is_file():
        return program
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-U", "pip"],
                   check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    f"aiperf=={version}"], check=True)
    return program
