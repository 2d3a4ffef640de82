"""Why a serving rollout does not finish, from the pods of the key being rolled out: one of
kiln's programs that refuses (``kiln fetch-engine``'s IntegrityError or GPUMismatch, the
server's version guard), an init container that fails, a server that crash-loops, a pod
the scheduler cannot place, a Deployment past its progress deadline. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kiln.contract.key import short_key
from kiln.contract.termination import Failure
from kiln.domain.labels import KEY_ANNOTATION, TEMPLATE_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.engine_deployment.deployments import ObservedDeployment


@dataclass(frozen=True)
class Trouble:
    """Why a product's rollout is stuck; ``stalled``: it will not finish by itself."""

    reason: str
    message: str
    stalled: bool


PERMANENT_IN_SERVING = frozenset({"IntegrityError"})
"""Failures of ``kiln fetch-engine`` that the kubelet's retries repeat, besides the contract's
``FailJob`` codes: a damaged stored engine reads the same on every try."""
HEALED_BY_REBUILD = frozenset({"NotFound", "IntegrityError", "Untrusted"})
"""What ``kiln fetch-engine`` says of an engine missing or damaged in the store: while the
EngineBuild builds that key again, the rollout waits for it rather than stalls."""


def _will_fail_again(failure: Failure) -> bool:
    """Whether an init container's failure stalls the rollout (the kubelet retrying it will
    not help), rather than keep it Reconciling (a store blip heals on the next try): kiln's
    structured error says whether a retry may help; anything else counts as permanent."""
    return not failure.retryable or failure.reason in PERMANENT_IN_SERVING


def _of(pod: ObservedPod, deployment: ObservedDeployment, key: str | None) -> bool:
    """A pod of the Deployment's current template (an older ReplicaSet's pods, even of the
    same key, are what the rollout replaces); before templates carried their digest, the
    ReplicaSet's name and the key tell."""
    notes = dict(pod.annotations)
    if deployment.template_hash is not None:
        return notes.get(TEMPLATE_ANNOTATION) == deployment.template_hash
    return (pod.owner.rpartition("-")[0] == deployment.name
            and (key is None or notes.get(KEY_ANNOTATION) == key))


def trouble(product: str, deployment: ObservedDeployment, pods: Iterable[ObservedPod],
            key: str | None, *, rebuilding: bool = False) -> Trouble | None:
    """What keeps ``deployment`` (serving ``key``) from being rolled out, or None;
    ``rebuilding``: the EngineBuild builds ``key`` again (a fetch that found it missing or
    damaged waits for that)."""
    if deployment.rolled_out:
        return None
    mine = [p for p in pods if p.active and _of(p, deployment, key)]
    where = f"{product}: Deployment {deployment.name}"
    then = (f"; the EngineBuild is building engine {short_key(key or '')} again, the pods "
            "that have it serve on") if rebuilding else ""
    for pod in mine:
        if pod.refusal is not None:
            container, failure = pod.refusal
            waits = rebuilding and failure.reason in HEALED_BY_REBUILD
            return Trouble(failure.reason, f"{where}: pod {pod.name}: {container} refused: "
                           f"{failure.message}{then if waits else ''}", stalled=not waits)
    for pod in mine:
        if pod.init_failure is not None:
            container, failure = pod.init_failure
            waits = rebuilding and failure.reason in HEALED_BY_REBUILD
            return Trouble(failure.reason, f"{where}: pod {pod.name}: init container "
                           f"{container} failed: {failure.message}{then if waits else ''}",
                           stalled=not waits and _will_fail_again(failure))
    for pod in mine:
        if pod.pull is not None:
            return Trouble("ImagePullFailed", f"{where}: pod {pod.name} cannot pull image "
                           f"{pod.pull[0]}: {pod.pull[1]}", stalled=True)
        if pod.crash is not None:
            return Trouble("CrashLoopBackOff", f"{where}: pod {pod.name}: container "
                           f"{pod.crash[0]}: {pod.crash[1]}", stalled=True)
    if deployment.deadline_exceeded is not None:
        return Trouble("ProgressDeadlineExceeded", f"{where}: "
                       f"{deployment.deadline_exceeded}", stalled=True)
    for pod in mine:
        if pod.unschedulable is not None:
            needs = f" (it needs {pod.needs})" if pod.needs else ""
            return Trouble("Unschedulable", f"{where}: pod {pod.name}: "
                           f"{pod.unschedulable}{needs}", stalled=False)
    return None
