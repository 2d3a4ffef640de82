"""What a build Job tells: its state, and the builder's verdict when it failed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kiln.contract.termination import Failure, parse_failure
from kiln.domain.labels import HASH_ANNOTATION, KEY_ANNOTATION, QUEUE_LABEL
from kiln.domain.pods import timestamp

JobState = Literal["Active", "Succeeded", "Failed"]
BUILDER = "builder"
"""The build pod's container (the ``podFailurePolicy`` names it)."""


def job_name(key: str) -> str:
    """Build Jobs are named after the key: the same key is the same Job, across restarts."""
    return f"kiln-build-{key[:24]}"


@dataclass(frozen=True)
class ObservedJob:
    """The parts of a build Job the planner reads."""

    name: str
    key: str
    state: JobState
    owner_uids: tuple[str, ...]
    seconds: float | None = None
    failure: Failure | None = None
    owner_names: tuple[str, ...] = ()
    """The owning EngineBuilds' names (marked due when the Job's pods move)."""
    template_hash: str | None = None
    """The digest of the pod template kiln rendered (``kiln.dev/spec-hash``)."""
    uid: str | None = None
    """None for a Job created moments ago that the index does not show yet."""
    ran: bool = False
    """A pod of it has run to an end (``status.failed``/``succeeded``): it did start."""
    created: datetime | None = None
    queue: str | None = None
    """The Kueue LocalQueue it joined (``kueue.x-k8s.io/queue-name``), if any."""
    suspended: bool = False
    """``spec.suspend``: Kueue holds it until it admits its Workload."""


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
    names = tuple(ref["name"] for ref in meta.get("ownerReferences") or []
                  if ref.get("kind") == "EngineBuild")
    uid = str(meta.get("uid") or "") or None
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return ObservedJob(meta["name"], key, "Succeeded", owners, _seconds(status),
                           owner_names=names, uid=uid)
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        failure = Failure(failed.get("reason") or "JobFailed",
                          failed.get("message") or "the build Job failed")
        return ObservedJob(meta["name"], key, "Failed", owners, None, failure, names,
                           uid=uid)
    return ObservedJob(meta["name"], key, "Active", owners, owner_names=names,
                       template_hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
                       uid=uid, ran=bool(status.get("failed") or status.get("succeeded")),
                       created=timestamp(meta.get("creationTimestamp")),
                       queue=(meta.get("labels") or {}).get(QUEUE_LABEL),
                       suspended=bool((job.get("spec") or {}).get("suspend")))


def failure_from_pod(pod: dict[str, Any]) -> Failure | None:
    """The builder's failure from a failed pod's termination message, if it has one."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        code = terminated.get("exitCode", 0)
        if code != 0:
            return parse_failure(terminated.get("message") or "", code, "builder")
    return None
