"""What a pod of kiln's (a build pod, a serving pod) tells about why it does not run: the
scheduler's verdict, an image the kubelet cannot pull, an init container's or a server's
failure. Pure: a pod (a dict, camelCase) in, a small frozen summary out, as the indexes keep
it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.api.common import GPU_RESOURCE
from kiln.contract import exitcodes
from kiln.contract.termination import Failure, parse_failure
from kiln.domain.labels import GPU_PRODUCT_LABEL

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "ErrImageNeverPull"})
CRASH_REASONS = frozenset({"CrashLoopBackOff", "RunContainerError", "CreateContainerError",
                           "CreateContainerConfigError"})


@dataclass(frozen=True)
class ObservedPod:
    """The parts of a pod the planners read."""

    name: str
    owner: str
    """The Job (build pods) or ReplicaSet (serving pods) that made it."""
    created: datetime | None
    phase: str
    deleting: bool = False
    node: str | None = None
    unschedulable: str | None = None
    """The scheduler's message while it cannot place the pod."""
    needs: str = ""
    """What the pod asks of a node: GPU products and count."""
    pull: tuple[str, str] | None = None
    """(image, the kubelet's message) of a container whose image cannot be pulled."""
    init_failure: tuple[str, Failure] | None = None
    """(container, failure) of an init container that exited non-zero."""
    crash: tuple[str, str] | None = None
    """(container, reason and message) of a container that keeps failing."""
    failure: Failure | None = None
    """The main container's failure from its termination message (a failed build pod)."""
    refusal: tuple[str, Failure] | None = None
    """(container, failure) of the first container, init or main, where one of kiln's own
    programs refused to go on (``kiln fetch-engine``, the server's version guard): a permanent
    exit code of the contract with kiln's termination message (a crash-looping server shows
    it in ``lastState``), not merely a server's exit code that happens to match."""
    ready: bool = False
    annotations: tuple[tuple[str, str], ...] = ()
    ip: str | None = None
    """``status.podIP``."""
    artifacts: tuple[str, str] | None = None
    """(state, sentence) of the ``place-artifacts`` init container: ``Placed``, ``Stale`` or
    ``None`` (kiln.contract.version_guard.place_artifacts)."""
    start_seconds: float | None = None
    """The server's start: its container start to the pod's Ready."""

    @property
    def active(self) -> bool:
        return not self.deleting and self.phase not in ("Succeeded", "Failed")


def timestamp(value: str | None) -> datetime | None:
    """A Kubernetes timestamp (``...Z``), or None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _needs(spec: dict[str, Any]) -> str:
    products: list[str] = []
    if value := (spec.get("nodeSelector") or {}).get(GPU_PRODUCT_LABEL):
        products.append(value)
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == GPU_PRODUCT_LABEL:
                products += [v for v in expr.get("values") or [] if v not in products]
    gpus = sum(int(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE) or 0)
               for c in spec.get("containers") or [])
    parts = []
    if products:
        parts.append(f"a node with {GPU_PRODUCT_LABEL} in ({', '.join(products)})")
    if gpus:
        parts.append(f"{gpus} {GPU_RESOURCE}")
    return " and ".join(parts)


def _waiting(status: dict[str, Any]) -> tuple[str, str]:
    waiting = (status.get("state") or {}).get("waiting") or {}
    return str(waiting.get("reason") or ""), str(waiting.get("message") or "")


def _terminated_failure(status: dict[str, Any], program: str) -> Failure | None:
    """The container's failure: its current exit, or while it waits to be restarted, its last
    one. A container running again, or done with 0, has no failure (an old one in
    ``lastState`` was healed by the kubelet's retry)."""
    state = status.get("state") or {}
    if "terminated" in state:
        done = state["terminated"] or {}
    elif "waiting" in state:
        done = (status.get("lastState") or {}).get("terminated") or {}
    else:
        return None
    code = int(done.get("exitCode") or 0)
    if code == 0:
        return None
    return parse_failure(str(done.get("message") or ""), code, program)


def _refusal(status: dict[str, Any]) -> tuple[str, Failure] | None:
    for entry in [*(status.get("initContainerStatuses") or []),
                  *(status.get("containerStatuses") or [])]:
        done = ((entry.get("state") or {}).get("terminated")
                or (entry.get("lastState") or {}).get("terminated"))
        if not isinstance(done, dict):
            continue
        code = int(done.get("exitCode") or 0)
        known = exitcodes.BY_CODE.get(code)
        if known is None or known.action != "FailJob":
            continue
        name = str(entry.get("name") or "")
        failure = parse_failure(str(done.get("message") or ""), code, name)
        if failure.reason == known.reason:
            return name, failure
    return None


PLACE_ARTIFACTS = "place-artifacts"
"""The serving pods' init container that checks and places an artifact set."""


def _artifacts(status: dict[str, Any]) -> tuple[str, str] | None:
    for entry in status.get("initContainerStatuses") or []:
        done = (entry.get("state") or {}).get("terminated") or {}
        if entry.get("name") != PLACE_ARTIFACTS or int(done.get("exitCode") or 0) != 0:
            continue
        try:
            said = json.loads(str(done.get("message") or ""))
        except ValueError:
            return None
        if isinstance(said, dict) and isinstance(said.get("artifacts"), str):
            return str(said["artifacts"]), str(said.get("message") or "")
    return None


def _start_seconds(status: dict[str, Any]) -> float | None:
    ready = next((timestamp(c.get("lastTransitionTime"))
                  for c in status.get("conditions") or []
                  if c.get("type") == "Ready" and c.get("status") == "True"), None)
    started = next((timestamp(((s.get("state") or {}).get("running") or {}).get("startedAt"))
                    for s in status.get("containerStatuses") or []
                    if s.get("name") == "server"), None)
    if ready is None or started is None:
        return None
    return max(0.0, (ready - started).total_seconds())


def observe_pod(pod: dict[str, Any]) -> ObservedPod:
    """Summarize a pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    owner = next((r.get("name", "") for r in meta.get("ownerReferences") or []
                  if r.get("controller")), "")
    unschedulable = None
    ready = False
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            unschedulable = str(cond.get("message") or "no node fits the pod")
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            ready = True
    images = {c.get("name"): c.get("image", "") for c in [*(spec.get("initContainers") or []),
                                                          *(spec.get("containers") or [])]}
    pull = crash = init_failure = failure = None
    for s in status.get("initContainerStatuses") or []:
        reason, message = _waiting(s)
        if reason in PULL_REASONS and pull is None:
            pull = (str(s.get("image") or images.get(s.get("name"), "")), message or reason)
        found = _terminated_failure(s, str(s.get("name") or "init"))
        if found is not None and init_failure is None:
            init_failure = (str(s.get("name") or ""), found)
    for s in status.get("containerStatuses") or []:
        reason, message = _waiting(s)
        if reason in PULL_REASONS and pull is None:
            pull = (str(images.get(s.get("name")) or s.get("image") or ""), message or reason)
        elif reason in CRASH_REASONS and crash is None:
            crash = (str(s.get("name") or ""), f"{reason}: {message}".rstrip(": "))
        if failure is None:
            done = (s.get("state") or {}).get("terminated") or {}
            if done and int(done.get("exitCode") or 0) != 0:
                failure = parse_failure(str(done.get("message") or ""),
                                        int(done["exitCode"]), str(s.get("name") or ""))
    notes = tuple(sorted((meta.get("annotations") or {}).items()))
    return ObservedPod(
        name=str(meta.get("name") or ""), owner=owner,
        created=timestamp(meta.get("creationTimestamp")),
        phase=str(status.get("phase") or "Pending"), deleting=bool(meta.get("deletionTimestamp")),
        node=spec.get("nodeName"), unschedulable=unschedulable, needs=_needs(spec), pull=pull,
        init_failure=init_failure, crash=crash, failure=failure, refusal=_refusal(status),
        ready=ready,
        annotations=notes, ip=status.get("podIP") or None,
        artifacts=_artifacts(status),
        start_seconds=_start_seconds(status) if ready else None)


class Seen:
    """What each pod (by uid) last told, so that status heartbeats that change nothing of it
    mark nothing; a deleted pod is forgotten."""

    def __init__(self) -> None:
        self._last: dict[str, ObservedPod] = {}

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)

    def moved(self, event_type: str | None, uid: str, observed: ObservedPod) -> bool:
        """Whether this event tells something new of the pod."""
        if event_type == "DELETED":
            self._last.pop(uid, None)
            return True
        if self._last.get(uid) == observed:
            return False
        self._last[uid] = observed
        return True
