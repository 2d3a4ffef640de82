"""Both programs in kiln's pods, ``kiln-builder`` and ``kiln fetch-engine``, run as console
scripts into each failure class they can meet: the exit code, the reason and ``retryable`` of
the termination message are the ones the single table (:mod:`kiln.contract.exitcodes`) gives.

The tool failures need a GPU node's toolchain; a fake one on ``PATH`` (an ``nvidia-smi`` that
reports an H100, a ``trtllm-build`` and a ``convert_checkpoint.py`` that fail or write nothing)
is enough here: what is tested is how the builder classifies what the tools do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder.support import Bed, Run
from kiln.contract import exitcodes
from kiln.contract.termination import parse_failure
from kiln.store import open_store
from store.conftest import AuthS3, auth_s3, free_port  # noqa: F401 - the fixture

KEY = "5" * 64
REACHED: dict[str, set[str]] = {
    "builder": {"InvalidTask", "InvalidInput", "Unsupported", "NotFound", "AccessDenied",
                "WeightsChanged", "Unavailable", "OutOfDisk", "GPUUnavailable", "ToolFailed",
                "VerifyFailed"},
    "fetcher": {"InvalidTask", "InvalidInput", "NotFound", "AccessDenied", "GPUMismatch",
                "Unavailable", "IntegrityError", "Untrusted"},
    "version guard": {"VersionMismatch"},
}
"""The failure classes the tests below drive each program into (some in test_cli.py,
tests/fetcher/test_fetch_engine.py and tests/fetcher/test_version_guard.py)."""


def check(code: int, termination: dict[str, Any], reason: str) -> None:
    """The code, reason and retryable of a failed run are the table's for ``reason``."""
    row = exitcodes.BY_REASON[reason]
    assert (code, termination["reason"], termination["exitCode"]) == (row.code, reason,
                                                                     row.code), termination
    assert termination["retryable"] is row.retryable


def test_every_code_in_the_table_is_reached_by_a_program() -> None:
    """Each row but ``InternalError`` (a crash: unit-tested) is met by one of the programs."""
    reached = set().union(*REACHED.values())
    assert reached == {c.reason for c in exitcodes.CODES} - {"InternalError"}


# -- kiln-builder ------------------------------------------------------------------------------

@pytest.fixture
def toolchain(tmp_path: Path) -> dict[str, str]:
    """A fake GPU node's toolchain: nvidia-smi sees an H100; trtllm-build and the llama
    converter do what ``FAKE_TOOL`` says (``convert-fails``, ``build-writes-nothing``)."""
    bin_dir, examples = tmp_path / "fake-bin", tmp_path / "examples"
    convert = examples / "models" / "core" / "llama" / "convert_checkpoint.py"
    convert.parent.mkdir(parents=True)
    bin_dir.mkdir()
    scripts = {
        bin_dir / "nvidia-smi": 'echo "NVIDIA H100 80GB HBM3, 9.0, 550.54"',
        bin_dir / "trtllm-build": 'echo "building"; exit 0',
    }
    for path, body in scripts.items():
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    convert.write_text(
        "import os, sys\n"
        "if os.environ.get('FAKE_TOOL') == 'convert-fails':\n"
        "    print('Traceback: RuntimeError: CUDA error: out of memory'); sys.exit(1)\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "os.makedirs(out, exist_ok=True)\n")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "KILN_TRTLLM_PYTHON": sys.executable,
            "KILN_TRTLLM_EXAMPLES": str(examples)}


@pytest.mark.parametrize(("tool", "reason", "says"), [
    ("convert-fails", "ToolFailed", "out of memory"),
    ("build-writes-nothing", "VerifyFailed", "config.json"),
])
def test_builder_tool_failures(bed: Bed, bucket: str, toolchain: dict[str, str], tool: str,
                               reason: str, says: str) -> None:
    uri = bed.weights(bucket)
    run = bed.run(bed.task(uri, backend="tensorrt"), "--no-smoke", FAKE_TOOL=tool,
                  **toolchain)
    check(run.code, run.termination, reason)
    assert says in run.termination["message"]


def test_builder_access_denied(auth_s3: AuthS3, bed: Bed, bucket: str) -> None:  # noqa: F811
    uri = bed.weights(bucket)
    task = bed.task(uri).model_copy(update={"store": f"s3://{auth_s3.bucket}/"})
    powerless = {f"KILN_STORE_{k}": v for k, v in auth_s3.powerless.items()}
    run = bed.run(task, KILN_STORE_AWS_ENDPOINT_URL=auth_s3.endpoint, **powerless)
    check(run.code, run.termination, "AccessDenied")


# -- kiln fetch-engine -------------------------------------------------------------------------

def fetch(tmp_path: Path, *args: str, **env: str) -> Run:
    termination = tmp_path / "termination-log"
    termination.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "fetch-engine", "--dest", str(tmp_path / "dest"),
         *args], env={**os.environ, "KILN_TERMINATION_LOG": str(termination),
                      "KILN_GPU_COMPUTE_CAPABILITY": "9.0", **env},
        capture_output=True, text=True, timeout=120, check=False)
    text = termination.read_text() if termination.exists() else ""
    if done.returncode == exitcodes.OK:
        return Run(done.returncode, done.stderr, json.loads(text))
    failure = parse_failure(text, done.returncode, "fetcher")
    return Run(done.returncode, done.stderr, {**json.loads(text), "parsed": failure})


def test_fetcher_access_denied(auth_s3: AuthS3, tmp_path: Path) -> None:  # noqa: F811
    powerless = {f"KILN_STORE_{k}": v for k, v in auth_s3.powerless.items()}
    run = fetch(tmp_path, "--store", f"s3://{auth_s3.bucket}/", "--key", KEY,
                KILN_STORE_AWS_ENDPOINT_URL=auth_s3.endpoint, **powerless)
    check(run.code, run.termination, "AccessDenied")
    assert run.termination["parsed"].reason == "AccessDenied"


def test_fetcher_store_down_is_unavailable(tmp_path: Path) -> None:
    run = fetch(tmp_path, "--store", "s3://engines/", "--key", KEY,
                KILN_STORE_AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                AWS_MAX_ATTEMPTS="1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    check(run.code, run.termination, "Unavailable")


def test_fetcher_usage_and_a_bad_repository_path(s3_endpoint: str, s3_client: Any,
                                                 bucket: str, tmp_path: Path) -> None:
    run = fetch(tmp_path)
    check(run.code, run.termination, "InvalidTask")
    s3_client.put_object(Bucket=bucket, Key="llama/config.json", Body=b"{}")
    run = fetch(tmp_path, "--source", f"s3://{bucket}/llama/", "--model-repo",
                str(tmp_path / "repo"), AWS_ENDPOINT_URL=s3_endpoint,
                KILN_MODEL_REPO_FILES=json.dumps({"../outside": ""}))
    check(run.code, run.termination, "InvalidInput")
    assert "../outside" in run.termination["message"]


def test_fetcher_a_missing_engine_is_not_found(s3_endpoint: str, bucket: str,
                                               tmp_path: Path) -> None:
    open_store(f"s3://{bucket}/", endpoint_url=s3_endpoint)  # the bucket exists, the key not
    run = fetch(tmp_path, "--store", f"s3://{bucket}/", "--key", KEY,
                KILN_STORE_AWS_ENDPOINT_URL=s3_endpoint)
    check(run.code, run.termination, "NotFound")
