"""Exit codes, the Job's podFailurePolicy, termination messages and progress lines."""

from __future__ import annotations

import errno
import io
import json

import pytest

from kiln import errors
from kiln.builder.progress import Progress, human
from kiln.contract import exitcodes
from kiln.contract import termination as report


@pytest.mark.parametrize(("error", "code", "action"), [
    (errors.InvalidTask("x"), exitcodes.INVALID_TASK, "FailJob"),
    (errors.InvalidInput("x"), exitcodes.INVALID_INPUT, "FailJob"),
    (errors.Unsupported("x", reason="UnsupportedArchitecture"), exitcodes.UNSUPPORTED,
     "FailJob"),
    (errors.NotFound("x"), exitcodes.NOT_FOUND, "FailJob"),
    (errors.AccessDenied("x"), exitcodes.ACCESS_DENIED, "FailJob"),
    (errors.WeightsChanged("x"), exitcodes.WEIGHTS_CHANGED, "FailJob"),
    (errors.Unavailable("x"), exitcodes.UNAVAILABLE, "Count"),
    (errors.OutOfDisk("x"), exitcodes.OUT_OF_DISK, "Count"),
    (OSError(errno.ENOSPC, "No space left on device"), exitcodes.OUT_OF_DISK, "Count"),
    (errors.GPUUnavailable("x", reason="GPUMismatch"), exitcodes.GPU_UNAVAILABLE, "Count"),
    (errors.ToolFailed("x"), exitcodes.TOOL_FAILED, "Count"),
    (errors.VerifyFailed("x"), exitcodes.VERIFY_FAILED, "Count"),
    (errors.IntegrityError("x"), exitcodes.INTEGRITY, "Count"),
    (RuntimeError("bug"), exitcodes.INTERNAL, "Count"),
])
def test_each_error_has_an_exit_code_and_a_policy_action(
        error: BaseException, code: int, action: str) -> None:
    assert exitcodes.exit_code(error) == code
    rules = exitcodes.pod_failure_policy("builder")["rules"]
    matched = next(r["action"] for r in rules
                   if code in r.get("onExitCodes", {}).get("values", []))
    assert matched == action


def test_pod_failure_policy_is_valid_for_kubernetes() -> None:
    policy = exitcodes.pod_failure_policy("builder")
    rules = policy["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    codes = [c for r in rules[1:] for c in r["onExitCodes"]["values"]]
    assert 0 not in codes
    assert len(codes) == len(set(codes)) == len(exitcodes.CODES)
    assert all(r["onExitCodes"]["containerName"] == "builder" for r in rules[1:])
    assert len({c.code for c in exitcodes.CODES}) == len(exitcodes.CODES)
    assert all(c.code < 128 for c in exitcodes.CODES), "128+ is reserved for signals"


def test_error_message_fits_4096_bytes_and_keeps_head_and_tail() -> None:
    message = "start " + "é\"x" * 5000 + " end"
    body = report.error_message("ToolFailed", message, True, 13, key="k" * 64)
    assert len(body) <= report.LIMIT
    data = json.loads(body)
    assert data["reason"] == "ToolFailed"
    assert data["retryable"] is True
    assert data["exitCode"] == 13
    assert data["key"] == "k" * 64
    assert data["message"].startswith("start")
    assert data["message"].endswith(" end")
    short = json.loads(report.error_message("NotFound", "no such bucket", False, 5))
    assert short == {"reason": "NotFound", "message": "no such bucket", "retryable": False,
                     "exitCode": 5}


def test_summary_drops_file_list_when_too_long() -> None:
    files = [{"path": f"rank{i}.engine", "size": 10**9, "sha256": "a" * 64} for i in range(80)]
    summary = {"key": "k", "uri": "s3://e/engines/k/", "sizeBytes": 8 * 10**10,
               "buildSeconds": 12.5, "files": files, "versions": {"tensorrt_llm": "1.2.1"}}
    data = json.loads(report.summary_message(summary))
    assert data["filesOmitted"] == 80
    assert data["versions"] == {"tensorrt_llm": "1.2.1"}
    assert json.loads(report.summary_message({**summary, "files": files[:2]}))["files"]


def test_progress_lines_are_throttled_and_readable() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress("download", 4 * 1024**3, interval=5, out=out, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.1
        progress.advance(13 * 1024**2)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # one throttled line in 10 s, then the final one
    assert lines[-1] == ("kiln-builder: phase=download bytes=1.3GiB/4.0GiB rate=130.0MiB/s")
    assert human(512) == "512B"
    assert human(1536) == "1.5KiB"
