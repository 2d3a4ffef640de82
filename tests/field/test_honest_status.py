"""Status says why a build is stuck, within seconds, from the real control plane: the
scheduler's verdict, the apiserver's quota and Pod Security admission, the kubelet's image
pull (a kwok Stage); what may heal is retried with a growing backoff, what cannot is Stalled,
and each heals without an edit once its cause goes. Argo CD's health (the shipped Lua) follows:
Progressing while it may heal, Degraded when Stalled."""

from __future__ import annotations

import base64
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from builder.faults import S3Proxy
from chart.argocd import health
from e2e.support import Operator
from field.support import conditions, create, engine_build, get, is_ready, patch
from kiln import EB_PLURAL
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import UNPULLABLE_IMAGE, Cluster, free_port
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
L4 = nodes.Pool("l4", size=1, product="NVIDIA-L4", family="ada-lovelace", compute=(8, 9),
                memory_mib=23034)


def build(kube: Cluster, namespace: str, name: str = "llama") -> dict[str, Any]:
    return get(kube, namespace, EB_PLURAL, name)


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in (obj.get("status") or {}).get("conditions", [])
                if c["type"] == "Ready")


def build_when(kube: Cluster, namespace: str, test: Any, timeout: float) -> dict[str, Any]:
    """The EngineBuild once ``test(obj)`` holds."""
    def check() -> dict[str, Any] | None:
        obj = build(kube, namespace)
        return obj if test(obj) else None
    try:
        found: dict[str, Any] = eventually(check, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}; status: {build(kube, namespace).get('status')}") from None
    return found


def stalled_with(reason: str) -> Any:
    def check(obj: dict[str, Any]) -> dict[str, Any] | None:
        return obj if conditions(obj).get("Stalled") == ("True", reason) else None
    return check


@pytest.fixture
def l4_node(kube: Cluster) -> Iterator[Any]:
    """Adds an L4 node when called; removes it after the test."""
    core = client.CoreV1Api(kube.api_client)
    added: list[str] = []

    def add() -> None:
        name = L4.node_names()[0]
        core.create_node(nodes.node_manifest(L4, name))
        added.append(name)

    yield add
    for name in added:
        core.delete_node(name)


def test_unschedulable_is_said_then_stalled_then_heals_when_a_node_comes(
        kube: Cluster, namespace: str, weights: str, l4_node: Any) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "L4"}],
                                         job={"pendingTimeout": "20s"}))
    eb = build_when(kube, namespace, lambda o: conditions(o).get("Reconciling") == (
        "True", "Unschedulable"), timeout=10)
    message = ready_condition(eb)["message"]
    assert "0/" in message and "nodes are available" in message, message  # the scheduler's
    assert "nvidia.com/gpu.product in (NVIDIA-L4)" in message and "1 nvidia.com/gpu" in message
    (engine,) = eb["status"]["engines"]
    assert engine["state"] == "Building" and engine["message"].startswith("Unschedulable: ")
    assert health(eb)[0] == "Progressing"
    eb = eventually(lambda: stalled_with("Unschedulable")(build(kube, namespace)), timeout=40)
    assert "pendingTimeout (20s)" in ready_condition(eb)["message"]
    assert health(eb)[0] == "Degraded"
    l4_node()
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert conditions(eb)["Stalled"][0] == "False"
    assert health(eb)[0] == "Healthy"


def test_a_quota_of_no_gpus_stalls_with_its_message_and_heals_when_raised(
        kube: Cluster, namespace: str, weights: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}})
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}]))
    eb = eventually(lambda: stalled_with("CreateFailed")(build(kube, namespace)), timeout=20)
    message = ready_condition(eb)["message"]
    assert "exceeded quota: gpus" in message and "requests.nvidia.com/gpu" in message, message
    assert health(eb)[0] == "Degraded"
    core.patch_namespaced_resource_quota("gpus", namespace,
                                         {"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}})
    eb = build_when(kube, namespace, is_ready, timeout=180)
    assert health(eb)[0] == "Healthy"


def test_a_limit_range_refusing_the_pod_is_said_and_heals_when_it_goes(
        kube: Cluster, namespace: str, weights: str) -> None:
    """The namespace's LimitRange allows no GPU per container: the apiserver's LimitRanger
    refuses the build pod; its verdict is the status, and the build goes on once it goes."""
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_limit_range(namespace, {
        "metadata": {"name": "no-gpus"},
        "spec": {"limits": [{"type": "Container", "max": {"nvidia.com/gpu": "0"}}]}})
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}]))
    eb = eventually(lambda: stalled_with("CreateFailed")(build(kube, namespace)), timeout=30)
    message = ready_condition(eb)["message"]
    assert "nvidia.com/gpu" in message and "0" in message, message
    assert health(eb)[0] == "Degraded"
    core.delete_namespaced_limit_range("no-gpus", namespace)
    eb = build_when(kube, namespace, is_ready, timeout=180)
    assert health(eb)[0] == "Healthy"


def test_pod_security_refusing_an_override_is_said_and_heals_when_it_goes(
        kube: Cluster, namespace: str, weights: str) -> None:
    """kiln's build pods are ``restricted``; an override of the builder's security context
    that the namespace's Pod Security refuses (root) is the admission's verdict in status,
    not a silent Job, and the build goes on once the override is removed."""
    client.CoreV1Api(kube.api_client).patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                         job={"securityContext": {"runAsUser": 0,
                                                                  "runAsNonRoot": False}}))
    eb = eventually(lambda: stalled_with("CreateFailed")(build(kube, namespace)), timeout=20)
    assert "violates PodSecurity" in ready_condition(eb)["message"]
    assert health(eb)[0] == "Degraded"
    patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"job": {"securityContext": None}}})
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert health(eb)[0] == "Healthy"


def test_an_unknown_priority_class_is_said_and_heals_when_it_is_created(
        kube: Cluster, namespace: str, weights: str) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                         job={"priorityClassName": namespace}))
    eb = eventually(lambda: stalled_with("CreateFailed")(build(kube, namespace)), timeout=20)
    assert f"no PriorityClass with name {namespace} was found" in \
        ready_condition(eb)["message"], ready_condition(eb)["message"]
    scheduling = client.SchedulingV1Api(kube.api_client)
    scheduling.create_priority_class({"metadata": {"name": namespace}, "value": 1000})
    try:
        eb = build_when(kube, namespace, is_ready, timeout=180)
        assert health(eb)[0] == "Healthy"
    finally:
        scheduling.delete_priority_class(namespace)


def test_an_image_that_cannot_be_pulled_is_named_and_a_fixed_spec_builds(
        kube: Cluster, namespace: str, weights: str) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                         toolchain={"image": UNPULLABLE_IMAGE}))
    eb = eventually(lambda: stalled_with("ImagePullFailed")(build(kube, namespace)),
                    timeout=20)
    message = ready_condition(eb)["message"]
    assert f"cannot pull image {UNPULLABLE_IMAGE}" in message, message
    assert health(eb)[0] == "Degraded"
    patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"toolchain": {
        "image": "kiln-builder:field"}}})
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert health(eb)[0] == "Healthy"


ATTEMPT = re.compile(r"^Retrying (\w+): .*\(attempt (\d+), next in (\d+)s\)$")


def _retried_with_growing_delays(kube: Cluster, namespace: str, reason: str,
                                 attempts: int) -> int:
    """Watch the EngineBuild say ``Retrying <reason>`` for ``attempts`` attempts, each
    Progressing and not Stalled, their delays growing; the last delay."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(seen) < attempts:
        eb = build(kube, namespace)
        cond = next((c for c in (eb.get("status") or {}).get("conditions", [])
                     if c["type"] == "Reconciling"), None)
        if cond and cond["status"] == "True" and (m := ATTEMPT.match(cond["message"] or "")):
            assert m.group(1) == reason, cond["message"]
            seen[int(m.group(2))] = int(m.group(3))
            assert health(eb)[0] == "Progressing"
            assert conditions(eb)["Stalled"][0] == "False"
        time.sleep(0.3)
    assert len(seen) >= attempts, seen
    delays = [seen[a] for a in sorted(seen)]
    assert delays == sorted(delays) and delays[-1] > delays[0], seen  # growing
    return delays[-1]


def _heals_within(kube: Cluster, namespace: str, step: int) -> None:
    """Just fixed: building again within one backoff ``step`` (the Secret's change retries at
    once), then Ready and Healthy."""
    fixed = time.monotonic()
    build_when(kube, namespace, lambda o: (o.get("status") or {}).get("phase") in (
        "Building", "Ready"), timeout=step + 10)
    assert time.monotonic() - fixed < step + 5, "within one backoff step of the update"
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert health(eb)[0] == "Healthy"


def test_wrong_credentials_are_retried_with_growing_backoff_and_a_fix_heals_at_once(
        kube: Cluster, namespace: str, weights: str, s3_endpoint: str,
        operator: Operator) -> None:
    core = client.CoreV1Api(kube.api_client)

    def secret(endpoint: str) -> dict[str, Any]:
        return {"metadata": {"name": "creds"},
                "data": {"AWS_ENDPOINT_URL": base64.b64encode(endpoint.encode()).decode()}}

    core.create_namespaced_secret(namespace, secret(f"http://127.0.0.1:{free_port()}"))
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                         model={"credentialsSecret": "creds"}))
    retries = operator.passes("EngineBuild", "retry")
    step = _retried_with_growing_delays(kube, namespace, "Unavailable", attempts=4)
    assert operator.passes("EngineBuild", "retry") > retries, "counted on /metrics"
    core.replace_namespaced_secret("creds", namespace, secret(s3_endpoint))
    _heals_within(kube, namespace, step)


def test_a_secret_with_wrong_keys_is_retried_as_access_denied_and_heals_when_corrected(
        kube: Cluster, namespace: str, weights: str, s3_endpoint: str) -> None:
    """The weights Secret names an access key the store does not know (S3's 403
    InvalidAccessKeyId): Retrying AccessDenied with attempts and growing delays, not Stalled
    (keys rotate); the Secret corrected, Ready within one backoff step."""
    core = client.CoreV1Api(kube.api_client)
    with S3Proxy(s3_endpoint, lambda method, path: False, keys={"right-key"}) as store:
        def secret(key: str) -> dict[str, Any]:
            data = {"AWS_ENDPOINT_URL": store.url, "AWS_ACCESS_KEY_ID": key,
                    "AWS_SECRET_ACCESS_KEY": "secret"}
            return {"metadata": {"name": "creds"}, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

        core.create_namespaced_secret(namespace, secret("wrong-key"))
        create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                             model={"credentialsSecret": "creds"}))
        step = _retried_with_growing_delays(kube, namespace, "AccessDenied", attempts=3)
        assert "InvalidAccessKeyId" in ready_condition(build(kube, namespace))["message"]
        core.replace_namespaced_secret("creds", namespace, secret("right-key"))
        _heals_within(kube, namespace, step)


def test_a_job_the_apiserver_refuses_is_stalled_with_its_message_until_the_spec_changes(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    """A toleration key the CRD lets through but the Job's validation refuses (422)."""
    create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}],
                                         job={"tolerations": [{"key": "not a key!",
                                                               "operator": "Exists"}]}))
    eb = build_when(kube, namespace, stalled_with("Invalid"), timeout=20)
    message = ready_condition(eb)["message"]
    assert "tolerations" in message and "Invalid value" in message, message
    assert health(eb)[0] == "Degraded"
    attempts = eb["metadata"]["resourceVersion"]
    operator.resynced(EB_PLURAL)  # no retry loop: passed over again, the status holds still
    assert build(kube, namespace)["metadata"]["resourceVersion"] == attempts
    patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"job": {"tolerations": [
        {"key": "example.com/ok", "operator": "Exists"}]}}})
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert health(eb)[0] == "Healthy"


def _engine_message(obj: dict[str, Any]) -> str:
    engines = (obj.get("status") or {}).get("engines") or [{}]
    return str(engines[0].get("message") or "")


def test_a_job_without_a_pod_says_queued_and_a_pod_that_does_not_start_says_pending(
        kube: Cluster, namespace: str, weights: str) -> None:
    """The controller manager hung (no pod for the Job), then the node agent (kwok: the pod
    placed, never started): the engine says ``Queued``, then ``Pending``, the EngineBuild
    ``Building`` and Reconciling all along; each goes by itself."""
    manager, agent = kube.processes["kube-controller-manager"], kube.processes["kwok"]
    manager.send_signal(signal.SIGSTOP)
    try:
        create(kube, namespace, engine_build("llama", weights, targets=[{"gpu": "H100-SXM"}]))
        queued = build_when(kube, namespace, lambda o: _engine_message(o).startswith(
            "Queued: Job kiln-build-"), timeout=30)
        assert "has no pod" in _engine_message(queued)
        assert queued["status"]["phase"] == "Building"
        assert conditions(queued)["Reconciling"][0] == "True"
        assert conditions(queued)["Stalled"][0] == "False"
        assert health(queued)[0] == "Progressing"
        agent.send_signal(signal.SIGSTOP)
    finally:
        manager.send_signal(signal.SIGCONT)
    try:
        pending = build_when(kube, namespace, lambda o: _engine_message(o).startswith(
            "Pending: pod kiln-build-"), timeout=40)
        assert "(placed on h100-" in _engine_message(pending), _engine_message(pending)
        assert pending["status"]["phase"] == "Building"
        assert conditions(pending)["Stalled"][0] == "False"
    finally:
        agent.send_signal(signal.SIGCONT)
    eb = build_when(kube, namespace, is_ready, timeout=120)
    assert health(eb)[0] == "Healthy"
