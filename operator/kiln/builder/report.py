"""The termination message: a JSON summary on success, a structured error on failure.

Kubernetes keeps at most 4096 bytes of it, so both are cut to fit (a message keeps its head
and tail; a summary drops its per-file list first).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

TERMINATION_ENV = "KILN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
LIMIT = 4096


def termination_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get(TERMINATION_ENV) or DEFAULT_TERMINATION_LOG)


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
    return _dump({k: slim[k] for k in ("key", "uri", "sizeBytes", "buildSeconds") if k in slim})


def write(path: Path, payload: bytes) -> None:
    """Write the message; a missing or read-only path (outside a pod) is not fatal."""
    with contextlib.suppress(OSError):
        path.write_bytes(payload)
