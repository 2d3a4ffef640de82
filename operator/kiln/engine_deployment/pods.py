"""What a serving pod tells when kiln's own programs in it refused to go on: the init
container (``kiln fetch-engine``: GPUMismatch, IntegrityError, ...) or the server container's
version guard (VersionMismatch). Pure: a pod (a dict) in, a failure or None out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.contract import exitcodes
from kiln.contract.termination import parse_failure
from kiln.labels import KEY_ANNOTATION, SERVING_PRODUCT_LABEL


@dataclass(frozen=True)
class ServingFailure:
    """One container's structured refusal, with the engine its pod was made for."""

    product: str
    pod: str
    container: str
    engine_key: str | None
    reason: str
    message: str


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    state = status.get("state") or {}
    last = status.get("lastState") or {}
    found = state.get("terminated") or last.get("terminated")
    return found if isinstance(found, dict) else None


def serving_failure(pod: dict[str, Any]) -> ServingFailure | None:
    """The first container that exited with a permanent kiln code and kiln's termination
    message (a crash-looping server shows it in ``lastState``)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    for entry in [*(status.get("initContainerStatuses") or []),
                  *(status.get("containerStatuses") or [])]:
        done = _terminated(entry)
        if done is None:
            continue
        code = int(done.get("exitCode") or 0)
        known = exitcodes.BY_CODE.get(code)
        if known is None or known.action != "FailJob":
            continue
        failure = parse_failure(str(done.get("message") or ""), code, str(entry.get("name")))
        if failure.reason != known.reason:
            continue  # not kiln's message: the server's own exit code
        return ServingFailure(
            product=(meta.get("labels") or {}).get(SERVING_PRODUCT_LABEL, ""),
            pod=str(meta.get("name", "")), container=str(entry.get("name", "")),
            engine_key=(meta.get("annotations") or {}).get(KEY_ANNOTATION),
            reason=failure.reason, message=failure.message)
    return None
