"""What a build Job tells: its state, and the builder's verdict when it failed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

KEY_LABEL = "kiln.dev/engine-key"
"""Label on build Jobs and pods: the first 63 characters of the engine key."""
KEY_ANNOTATION = "kiln.dev/engine-key"
"""Annotation on build Jobs: the whole engine key."""
TARGET_ANNOTATION = "kiln.dev/target"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kiln", "app.kubernetes.io/component": "build"}

JobState = Literal["Active", "Succeeded", "Failed"]


def job_name(key: str) -> str:
    """Build Jobs are named after the key: the same key is the same Job, across restarts."""
    return f"kiln-build-{key[:24]}"


def key_label(key: str) -> str:
    return key[:63]


@dataclass(frozen=True)
class Failure:
    """Why a build failed: the builder's reason code and message, or the Job's."""

    reason: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class ObservedJob:
    """The parts of a build Job the planner reads."""

    name: str
    key: str
    state: JobState
    owner_uids: tuple[str, ...]
    seconds: float | None = None
    failure: Failure | None = None


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _seconds(status: dict[str, Any]) -> float | None:
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return None
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def observe(job: dict[str, Any]) -> ObservedJob:
    """Summarize a Job (as a dict, camelCase); ``failure`` comes from the Job's condition."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    key = (meta.get("annotations") or {}).get(KEY_ANNOTATION, "")
    owners = tuple(ref["uid"] for ref in meta.get("ownerReferences") or [])
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return ObservedJob(meta["name"], key, "Succeeded", owners, _seconds(status))
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        failure = Failure(failed.get("reason") or "JobFailed",
                          failed.get("message") or "the build Job failed")
        return ObservedJob(meta["name"], key, "Failed", owners, None, failure)
    return ObservedJob(meta["name"], key, "Active", owners)


def failure_from_pod(pod: dict[str, Any]) -> Failure | None:
    """The builder's structured error from a failed pod's termination message, if any."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode", 0) == 0:
            continue
        text = terminated.get("message") or ""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "reason" in data:
            return Failure(str(data["reason"]), str(data.get("message", "")),
                           bool(data.get("retryable", False)))
        detail = text.strip()[-1000:] or f"exit code {terminated.get('exitCode')}"
        return Failure("BuilderFailed", f"the builder failed: {detail}")
    return None
