"""Why a build or serving pod does not run, from pods as the apiserver reports them; the
per-object backoff."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kiln.domain.pods import observe_pod
from kiln.engine_build.pending import CreateFailure, stuck
from kiln.engine_build.queued import ObservedWorkload, observe_workload
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.trouble import trouble
from kiln.reconcile.backoff import Backoff, retrying

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def pod(name: str = "kiln-build-abc-x", owner: str = "kiln-build-abc", *,
        created: datetime = NOW, status: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created.isoformat(),
                         "annotations": annotations or {},
                         "ownerReferences": [{"name": owner, "controller": True}]},
            "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                     "containers": [{"name": "builder", "image": "b:1", "resources": {
                         "limits": {"nvidia.com/gpu": "1"}}}]},
            "status": status or {"phase": "Pending"}}


UNSCHEDULABLE = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/8 nodes are available: 8 node(s) didn't match Pod's node affinity"}]}


def test_unschedulable_names_the_scheduler_and_the_needs_then_stalls_after_the_timeout() -> None:
    observed = [observe_pod(pod(created=NOW - timedelta(minutes=5), status=UNSCHEDULABLE))]
    early = stuck("kiln-build-abc", observed, None, NOW, timedelta(minutes=30))
    assert early is not None and early.reason == "Unschedulable" and not early.stalled
    assert "0/8 nodes are available" in early.message
    assert "nvidia.com/gpu.product in (NVIDIA-L4)" in early.message
    assert "1 nvidia.com/gpu" in early.message
    late = stuck("kiln-build-abc", observed, None, NOW, timedelta(minutes=1))
    assert late is not None and late.stalled and "pendingTimeout (1m)" in late.message


def test_create_failed_only_while_no_pod_came_after_it() -> None:
    event = CreateFailure("kiln-build-abc", "exceeded quota: gpus", NOW - timedelta(seconds=5))
    found = stuck("kiln-build-abc", [], event, NOW, timedelta(minutes=30))
    assert found is not None and found.reason == "CreateFailed" and found.stalled
    running = observe_pod(pod(status={"phase": "Running"}))
    assert stuck("kiln-build-abc", [running], event, NOW, timedelta(minutes=30)) is None


def test_an_image_pull_failure_names_the_image() -> None:
    status = {"phase": "Pending", "containerStatuses": [{"name": "builder", "image": "b:1",
              "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}
    found = stuck("kiln-build-abc", [observe_pod(pod(status=status))], None, NOW,
                  timedelta(minutes=30))
    assert found is not None and found.reason == "ImagePullFailed" and found.stalled
    assert "cannot pull image b:1: not found" in found.message


def test_an_init_container_failure_of_the_current_key_is_the_reason() -> None:
    message = '{"reason": "IntegrityError", "message": "rank0.engine is corrupt"}'
    status = {"phase": "Pending", "initContainerStatuses": [{
        "name": "fetch-engine", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "message": message}}}]}
    observed = observe_pod(pod("chat-h100-5d-x", "chat-h100-5d", status=status,
                               annotations={"kiln.dev/engine-key": "k2"}))
    deployment = ObservedDeployment("chat-h100", "NVIDIA-H100", ("u",), "k2", "s3://e/", "engine",
                                    "tensorrt", "h", 1, generation=2, observed_generation=2,
                                    status_replicas=2, updated_replicas=1, ready_replicas=1,
                                    available_replicas=1)
    found = trouble("H100-SXM", deployment, [observed], "k2")
    assert found is not None and found.reason == "IntegrityError" and found.stalled
    assert "pod chat-h100-5d-x" in found.message and "rank0.engine" in found.message
    assert trouble("H100-SXM", deployment, [observed], "k1") is None  # another key's pod


def test_backoff_doubles_to_the_cap_and_a_changed_input_is_due_at_once() -> None:
    clock = [0.0]
    backoff = Backoff(base=2, cap=10, clock=lambda: clock[0])
    delays = [backoff.failed("a", "v1").delay for _ in range(5)]
    assert delays == [2, 4, 8, 10, 10]
    assert backoff.waiting("a", "v1") is not None
    assert backoff.waiting("a", "v2") is None  # the Secret changed
    clock[0] = 11
    assert backoff.waiting("a", "v1") is None
    last = backoff.last("a")
    assert last is not None
    assert retrying("Unavailable", "no answer", last) == (
        "Retrying Unavailable: no answer (attempt 5, next in 10s)")


def test_backoff_stays_at_the_cap_however_many_attempts() -> None:
    backoff = Backoff(base=2.0, cap=600.0, clock=lambda: 0.0)
    for _ in range(2000):  # 2 ** 1024 overflows a float: the retry loop once died on it
        last = backoff.failed("a", "v1")
    assert (last.attempt, last.delay) == (2000, 600)


def _fetch_status(state: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    return {"phase": "Pending", "initContainerStatuses": [{
        "name": "fetch-engine", "state": state, "lastState": {"terminated": last}}]}


@pytest.mark.parametrize(("state", "reason", "stalled"), [
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "IntegrityError", True),
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "GPUMismatch", True),
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "Unavailable", False),
    ({"running": {"startedAt": "2026-12-01T12:00:00Z"}}, None, None),
    ({"terminated": {"exitCode": 0}}, None, None),
])
def test_an_init_container_stalls_only_on_what_its_retries_repeat(
        state: dict[str, Any], reason: str | None, stalled: bool | None) -> None:
    """A store blip the kubelet's next try heals keeps the rollout Reconciling; a container
    running again, or done, has healed its last failure (``lastState``)."""
    retryable = reason in ("IntegrityError", "Unavailable")
    last = {"exitCode": 10, "message": json.dumps({"reason": reason or "Unavailable",
                                                   "message": "m", "retryable": retryable})}
    observed = observe_pod(pod("chat-h100-5d-x", "chat-h100-5d", status=_fetch_status(
        state, last), annotations={"kiln.dev/engine-key": "k2"}))
    deployment = ObservedDeployment("chat-h100", "NVIDIA-H100", ("u",), "k2", "s3://e/", "engine",
                                    "tensorrt", "h", 1, generation=2, observed_generation=2,
                                    status_replicas=1, updated_replicas=1, ready_replicas=0,
                                    available_replicas=0)
    found = trouble("H100-SXM", deployment, [observed], "k2")
    if reason is None:
        assert found is None
    else:
        assert found is not None and (found.reason, found.stalled) == (reason, stalled)


def test_a_failed_create_names_its_job_by_uid_and_its_latest_occurrence() -> None:
    """An Event outlives the Job it is about: the uid tells a recreated Job of the same name
    from the old one; a series' last occurrence is newer than its first (eventTime)."""
    from kiln.handlers.indexes import create_failure
    found = create_failure({
        "metadata": {"creationTimestamp": "2026-12-01T11:00:00Z"}, "message": "quota",
        "involvedObject": {"kind": "Job", "name": "kiln-build-abc", "uid": "u-1"},
        "eventTime": "2026-12-01T11:00:00.000000Z",
        "series": {"lastObservedTime": "2026-12-01T11:30:00.000000Z"}})
    assert found.job_uid == "u-1"
    assert found.last == datetime(2026, 12, 1, 11, 30, tzinfo=UTC)


def test_a_failure_after_the_inputs_changed_starts_the_backoff_over() -> None:
    now = [0.0]
    backoff = Backoff(base=2, cap=600, clock=lambda: now[0])
    for i in range(5):
        last = backoff.failed("eb", ("secret", i % 2), spec=1)  # an input that flaps
    assert last.attempt == 5 and last.delay == 32
    fresh = backoff.failed("eb", ("secret", 0), spec=2)  # edited, and fails differently
    assert (fresh.attempt, fresh.delay) == (1, 2)


def test_only_pods_of_the_deployments_current_template_are_its_trouble() -> None:
    """A fix of ``server.image`` keeps the key: the old ReplicaSet's refusing pods are what
    the rollout replaces, not why it is stuck; another product's Deployment whose name starts
    the same is not this one."""
    message = '{"reason": "VersionMismatch", "message": "1.2.1 vs 1.1.0"}'
    status = {"phase": "Running", "containerStatuses": [{
        "name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 9, "message": message}}}]}

    def serving(name: str, owner: str, template: str) -> Any:
        return observe_pod(pod(name, owner, status=status, annotations={
            "kiln.dev/engine-key": "k2", "kiln.dev/template-hash": template}))

    deployment = ObservedDeployment("chat-a100", "NVIDIA-A100", ("u",), "k2", "s3://e/", "engine",
                                    "tensorrt", "h", 1, generation=3, observed_generation=3,
                                    status_replicas=2, updated_replicas=1, ready_replicas=0,
                                    available_replicas=0, template_hash="new")
    old = serving("chat-a100-5d-x", "chat-a100-5d", "old")
    assert trouble("A100", deployment, [old], "k2") is None
    current = serving("chat-a100-6f-y", "chat-a100-6f", "new")
    found = trouble("A100", deployment, [old, current], "k2")
    assert found is not None and "chat-a100-6f-y" in found.message
    unmarked = replace(deployment, template_hash=None)
    other = serving("chat-a100-80gb-7c-z", "chat-a100-80gb-7c", "x")
    assert trouble("A100", unmarked, [other], "k2") is None


def test_a_job_without_a_pod_is_queued_and_a_starting_pod_pending_only_once_it_lasts() -> None:
    timeout = timedelta(minutes=30)
    just = stuck("kiln-build-abc", [], None, NOW, timeout, NOW - timedelta(seconds=3))
    assert just is None  # a build that starts at once writes no status for its steps
    queued = stuck("kiln-build-abc", [], None, NOW, timeout, NOW - timedelta(seconds=12))
    assert queued is not None and (queued.reason, queued.waiting) == ("Queued", True)
    assert queued.message.startswith("Job kiln-build-abc, created 2026-12-01T11:59")
    assert "has no pod" in queued.message
    placed = pod(created=NOW - timedelta(seconds=30))
    placed["spec"]["nodeName"] = "l4-0"
    pending = stuck("kiln-build-abc", [observe_pod(placed)], None, NOW, timeout)
    assert pending is not None and (pending.reason, pending.waiting) == ("Pending", True)
    assert "(placed on l4-0)" in pending.message
    # The message does not move while it waits: no status write per pass.
    later = stuck("kiln-build-abc", [observe_pod(placed)], None, NOW + timedelta(minutes=1),
                  timeout)
    assert later == pending
    young = pod(created=NOW - timedelta(seconds=2))
    assert stuck("kiln-build-abc", [observe_pod(young)], None, NOW, timeout) is None
    running = pod(created=NOW - timedelta(minutes=5), status={"phase": "Running"})
    assert stuck("kiln-build-abc", [observe_pod(running)], None, NOW, timeout) is None
    unplaced = stuck("kiln-build-abc", [observe_pod(pod(status=UNSCHEDULABLE))], None, NOW,
                     timeout)
    assert unplaced is not None and not unplaced.waiting


def test_not_started_stalls_after_the_timeout_and_a_container_not_made_at_once() -> None:
    timeout = timedelta(minutes=30)
    old = pod(created=NOW - timedelta(minutes=31))
    old["spec"]["nodeName"] = "h100-0"
    late = stuck("kiln-build-abc", [observe_pod(old)], None, NOW, timeout)
    assert late is not None and (late.reason, late.stalled, late.waiting) == (
        "Pending", True, False)
    assert "for longer than spec.job.pendingTimeout (30m)" in late.message
    queued = stuck("kiln-build-abc", [], None, NOW, timeout, NOW - timedelta(minutes=31))
    assert queued is not None and queued.stalled and not queued.waiting
    broken = pod(created=NOW - timedelta(seconds=30), status={
        "phase": "Pending", "containerStatuses": [{"name": "builder", "state": {"waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "weights" not found'}}}]})
    broken["spec"]["nodeName"] = "h100-0"
    failed = stuck("kiln-build-abc", [observe_pod(broken)], None, NOW, timeout)
    assert failed is not None and (failed.reason, failed.stalled) == ("ContainerFailed", True)
    assert 'container builder: CreateContainerConfigError: secret "weights" not found' in \
        failed.message
    runtime = pod(created=NOW - timedelta(seconds=30), status={
        "phase": "Pending", "containerStatuses": [{"name": "builder", "state": {"waiting": {
            "reason": "CreateContainerError", "message": "context deadline exceeded"}}}]})
    passing = stuck("kiln-build-abc", [observe_pod(runtime)], None, NOW, timeout)
    assert passing is not None and (passing.reason, passing.stalled) == (
        "ContainerFailed", False)  # the runtime's own error may pass: Reconciling
    later = stuck("kiln-build-abc", [observe_pod(runtime)], None, NOW + timeout, timeout)
    assert later is not None and later.stalled and "pendingTimeout" in later.message


def workload(conditions: list[dict[str, str]]) -> ObservedWorkload:
    found = observe_workload({
        "metadata": {"name": "job-kiln-build-abc-1a2b3", "creationTimestamp": NOW.isoformat(),
                     "ownerReferences": [{"kind": "Job", "name": "kiln-build-abc"}]},
        "status": {"conditions": conditions}})
    assert found is not None
    return found


def test_a_job_kueue_holds_says_queued_with_kueues_reason_then_stalls_after_the_timeout() -> None:
    """The QuotaReserved condition of a Workload Kueue's scheduler could not fit (its own
    words, sigs.k8s.io/kueue pkg/scheduler/flavorassigner)."""
    held = workload([{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                      "message": "couldn't assign flavors to pod set main: insufficient unused "
                                 "quota for nvidia.com/gpu in flavor h100, 1 more needed"}])
    created = NOW - timedelta(minutes=5)
    early = stuck("kiln-build-abc", [], None, NOW, timedelta(minutes=30), created,
                  queue="gpu-builds", workload=held)
    assert early is not None and early.reason == "Queued" and early.waiting
    assert early.message == (
        "Job kiln-build-abc waits in Kueue (LocalQueue gpu-builds): Pending: couldn't assign "
        "flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h100, "
        "1 more needed")
    late = stuck("kiln-build-abc", [], None, NOW, timedelta(minutes=1), created,
                 queue="gpu-builds", workload=held)
    assert late is not None and late.stalled and "pendingTimeout (1m)" in late.message
    none_yet = stuck("kiln-build-abc", [], None, NOW, timedelta(minutes=30), created,
                     queue="gpu-builds")
    assert none_yet is not None and "no Workload" in none_yet.message
    admitted = workload([{"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
                         {"type": "Admitted", "status": "True", "reason": "Admitted"}])
    assert admitted.admitted
    moving = stuck("kiln-build-abc", [], None, NOW, timedelta(minutes=30), created,
                   queue="gpu-builds", workload=admitted)
    assert moving is not None and "Kueue" not in moving.message  # the Job controller's turn
    assert observe_workload({"metadata": {"ownerReferences": [
        {"kind": "Job", "name": "training"}]}}) is None
