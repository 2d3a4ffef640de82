"""Why a build Job's pod does not run: unschedulable, refused at creation (quota, Pod
Security, LimitRange, PriorityClass), or its image cannot be pulled. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kiln.pods import ObservedPod


@dataclass(frozen=True)
class CreateFailure:
    """The Job controller's latest ``FailedCreate`` Event for a Job."""

    job: str
    message: str
    last: datetime | None
    job_uid: str | None = None
    """The uid of the Job it is about (an Event outlives a deleted Job of the same name)."""


@dataclass(frozen=True)
class Stuck:
    """Why a build does not progress; ``stalled``: it will not by itself (soon)."""

    reason: str
    message: str
    stalled: bool


def stuck(job: str, pods: Iterable[ObservedPod], created: CreateFailure | None,
          now: datetime, pending_timeout: timedelta) -> Stuck | None:
    """Why Job ``job`` (active) does not build, or None while its pod runs or starts."""
    mine = [p for p in pods if p.owner == job]
    active = sorted((p for p in mine if p.active), key=lambda p: p.created or now)
    newest = max((p.created for p in mine if p.created), default=None)
    if created is not None and (newest is None or (created.last or now) > newest):
        return Stuck("CreateFailed", f"Job {job} cannot create its pod: {created.message}",
                     stalled=True)
    if not active:
        return None
    pod = active[-1]
    if pod.pull is not None:
        image, message = pod.pull
        return Stuck("ImagePullFailed", f"pod {pod.name} cannot pull image {image}: {message}",
                     stalled=True)
    if pod.unschedulable is not None:
        needs = f" (it needs {pod.needs})" if pod.needs else ""
        waited = now - (pod.created or now)
        late = waited >= pending_timeout
        after = (f"; unschedulable for longer than spec.job.pendingTimeout "
                 f"({_duration(pending_timeout)})") if late else ""
        return Stuck("Unschedulable", f"pod {pod.name}: {pod.unschedulable}{needs}{after}",
                     stalled=late)
    return None


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
