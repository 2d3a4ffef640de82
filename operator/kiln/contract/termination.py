"""The termination message of kiln's programs in pods: a JSON summary on success, a structured
error ``{reason, message, retryable, exitCode, key}`` on failure. One writer (:func:`fail`,
:func:`succeed`), one parser (:func:`parse_failure`).

Kubernetes keeps at most 4096 bytes of it, so both are cut to fit (a message keeps its head
and tail; a summary drops its per-file list first).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.contract import env as names
from kiln.contract import exitcodes
from kiln.errors import KilnError

DEFAULT_PATH = "/dev/termination-log"
LIMIT = 4096


@dataclass(frozen=True)
class Failure:
    """Why a program in a pod (or a Job) failed: a reason code and a message."""

    reason: str
    message: str
    retryable: bool = False


def termination_path(env: Mapping[str, str]) -> Path:
    return Path(env.get(names.TERMINATION_LOG) or DEFAULT_PATH)


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _shorten(text: str, budget: int) -> str:
    if len(text.encode()) <= budget:
        return text
    half = max(budget // 2 - 8, 0)
    raw = text.encode()
    head = raw[:half].decode(errors="ignore")
    tail = raw[-half:].decode(errors="ignore") if half else ""
    return f"{head} [...] {tail}"


def error_message(reason: str, message: str, retryable: bool, exit_code: int,
                  key: str | None = None) -> bytes:
    """``{reason, message, retryable, exitCode, key}`` as JSON of at most 4096 bytes."""
    data: dict[str, Any] = {"reason": reason, "message": message, "retryable": retryable,
                            "exitCode": exit_code}
    if key:
        data["key"] = key
    body = _dump(data)
    if len(body) <= LIMIT:
        return body
    low, high = 0, len(message.encode())
    while low < high:  # the longest shortened message that fits, JSON escapes included
        mid = (low + high + 1) // 2
        if len(_dump({**data, "message": _shorten(message, mid)})) <= LIMIT:
            low = mid
        else:
            high = mid - 1
    data["message"] = _shorten(message, low)
    return _dump(data)


def summary_message(summary: dict[str, Any]) -> bytes:
    """The success summary as JSON of at most 4096 bytes (``files`` dropped if needed)."""
    body = _dump(summary)
    if len(body) <= LIMIT:
        return body
    slim = {k: v for k, v in summary.items() if k != "files"}
    slim["filesOmitted"] = len(summary.get("files") or [])
    body = _dump(slim)
    if len(body) <= LIMIT:
        return body
    return _dump({k: slim[k] for k in ("key", "uri", "cached", "sizeBytes", "buildSeconds",
                                        "upload", "manifestSha256") if k in slim})


def write(path: Path, payload: bytes) -> None:
    """Write the message; a read-only path is not fatal, and outside a pod (no
    ``/dev/termination-log``, which the kubelet creates) nothing is written."""
    if str(path) == DEFAULT_PATH and not path.exists():
        return
    with contextlib.suppress(OSError):
        path.write_bytes(payload)


def failure_of(error: BaseException) -> tuple[int, Failure]:
    """The exit code and the failure a program reports for ``error``."""
    code = exitcodes.exit_code(error)
    known = exitcodes.BY_CODE[code]
    if isinstance(error, KilnError):
        return code, Failure(error.reason, error.message, known.retryable)
    return code, Failure(known.reason, f"{type(error).__name__}: {error}", known.retryable)


def fail(error: BaseException, env: Mapping[str, str], key: str | None = None) -> int:
    """Write the termination message for ``error``; returns the exit code."""
    code, failure = failure_of(error)
    write(termination_path(env),
          error_message(failure.reason, failure.message, failure.retryable, code, key))
    return code


def succeed(summary: dict[str, Any], env: Mapping[str, str]) -> int:
    """Write the success summary; returns ``OK``."""
    write(termination_path(env), summary_message(summary))
    return exitcodes.OK


def parse_failure(text: str, exit_code: int, program: str) -> Failure:
    """The failure a container's termination message tells: the structured error, else (the
    program was killed, e.g. out of memory) the text the kubelet kept, the log's tail with
    ``FallbackToLogsOnError``, under the reason ``<Program>Failed``."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "reason" in data:
        return Failure(str(data["reason"]), str(data.get("message", "")),
                       bool(data.get("retryable", False)))
    detail = text.strip()[-1000:] or f"exit code {exit_code}"
    return Failure(f"{program.capitalize()}Failed", f"the {program} failed: {detail}")
