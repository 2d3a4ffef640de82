"""The README's first command, non-interactively: everything Ready, nothing left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_quickstart_runs_to_ready_and_leaves_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "quickstart-cluster"
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "quickstart", "--exit-when-ready", "--timeout", "300",
         "--state-dir", str(state)],
        capture_output=True, text=True, timeout=420, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "everything is Ready" in done.stdout
    assert "EngineBuild tiny-llama: Ready" in done.stdout
    assert "built on h100-" in done.stdout
    assert "built on a100-" in done.stdout
    assert "enginebuild.kiln.dev/tiny-llama" in done.stdout
    assert "kiln fetch-engine checked every file on 2/2 serving pods" in done.stdout
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(state) not in left.stdout, "a process of the quickstart is still running"
