"""Why a build Job's pod does not run: unschedulable, refused at creation (quota, Pod
Security, LimitRange, PriorityClass), its image cannot be pulled, Kueue holds it (quota,
priority, flavor: Kueue's own reason), or (for longer than ``WAITING_AFTER``) it has no pod
yet or its pod is still starting. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kiln.domain.pods import ObservedPod
from kiln.engine_build.queued import ObservedWorkload


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

    @property
    def waiting(self) -> bool:
        """Only on its way (``Queued``, ``Pending`` within ``spec.job.pendingTimeout``): said
        in the engine's message, the EngineBuild still ``Building``."""
        return self.reason in WAITING and not self.stalled


WAITING = frozenset({"Queued", "Pending"})
WAITING_AFTER = timedelta(seconds=10)
"""A Job without a pod, or a pod not running, is said so only after this: a build that
starts at once costs no status write for each step of its start."""


def stuck(job: str, pods: Iterable[ObservedPod], created: CreateFailure | None,
          now: datetime, pending_timeout: timedelta,
          job_created: datetime | None = None, queue: str | None = None,
          workload: ObservedWorkload | None = None) -> Stuck | None:
    """Why Job ``job`` (active, created at ``job_created``) does not build, or None while its
    pod runs, or starts since less than ``WAITING_AFTER``. ``queue``: the Kueue LocalQueue the
    Job joined; ``workload``: what Kueue says of it (None: no Workload seen yet)."""
    mine = [p for p in pods if p.owner == job]
    active = sorted((p for p in mine if p.active), key=lambda p: p.created or now)
    newest = max((p.created for p in mine if p.created), default=None)
    if created is not None and (newest is None or (created.last or now) > newest):
        return Stuck("CreateFailed", f"Job {job} cannot create its pod: {created.message}",
                     stalled=True)
    if not active:
        if mine or job_created is None or now - job_created < WAITING_AFTER:
            return None
        late = now - job_created >= pending_timeout
        if queue is not None and (workload is None or not workload.admitted):
            return Stuck("Queued", f"{_kueue(job, queue, workload)}"
                         f"{_late(late, pending_timeout)}", stalled=late)
        return Stuck("Queued", f"Job {job}, created {_at(job_created)}, has no pod (the Job "
                     f"controller makes it; its Events say why not){_late(late, pending_timeout)}",
                     stalled=late)
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
    if pod.crash is not None:  # the kubelet cannot create or start its container
        container, why = pod.crash
        # A missing Secret or ConfigMap key waits for a fix; the runtime's own errors may
        # pass (a name not yet released, a deadline): Stalled after pendingTimeout.
        config = why.startswith("CreateContainerConfigError")
        late = now - (pod.created or now) >= pending_timeout
        return Stuck("ContainerFailed", f"pod {pod.name}: container {container}: {why}"
                     f"{_late(late and not config, pending_timeout)}", stalled=config or late)
    if pod.phase == "Pending" and pod.created and now - pod.created >= WAITING_AFTER:
        where = f"placed on {pod.node}" if pod.node else "not placed yet"
        late = now - pod.created >= pending_timeout
        return Stuck("Pending", f"pod {pod.name} ({where}) has not started since "
                     f"{_at(pod.created)}{_late(late, pending_timeout)}", stalled=late)
    return None


def _kueue(job: str, queue: str, workload: ObservedWorkload | None) -> str:
    if workload is None:
        return (f"Job {job} waits for Kueue (LocalQueue {queue}), which has made no Workload "
                "for it yet (is Kueue running, managing batch/job?)")
    why = ": ".join(part for part in (workload.reason, workload.message) if part)
    return f"Job {job} waits in Kueue (LocalQueue {queue}): {why or 'not admitted yet'}"


def _late(late: bool, timeout: timedelta) -> str:
    return f"; for longer than spec.job.pendingTimeout ({_duration(timeout)})" if late else ""


def _at(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
