"""Least privilege and no adoption, on the real control plane: Pod Security "restricted"
admits kiln's build and serving pods, a user's object of kiln's name is left alone, and a
builder image outside the operator's allowed list builds nothing."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator, get_eb, ready
from faults.support import build_jobs, create, engine_build
from faults.test_provenance import create_ed, engine_deployment
from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL
from kiln.engine_deployment.deployments import deployment_name
from waiting import eventually

# Each test needs the operator and the builders running, whichever of the tier runs first.
pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("operator", "builders")]


def get_ed(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(kube.api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginedeployments", name)
    return obj


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def ed_ready(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    ed = get_ed(kube, namespace, name)
    status = ed.get("status") or {}
    if (condition(status, "Ready").get("status") == "True"
            and status.get("observedGeneration") == ed["metadata"]["generation"]):
        return status
    return None


def _rolled_out(deployment: Any) -> Any:
    """The Deployment once its controller has said its last word on it (nothing to roll)."""
    progressing = next((c for c in deployment.status.conditions or []
                        if c.type == "Progressing"), None)
    done = (deployment.status.observed_generation == deployment.metadata.generation
            and progressing is not None and progressing.reason == "NewReplicaSetAvailable")
    return deployment if done else None


def test_restricted_namespace_admits_build_and_serving_pods(
        kube: Cluster, namespace: str, weights: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}})
    # The apiserver's own admission enforces it: a plain pod is refused.
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert refused.value.status == 403 and "restricted" in refused.value.body
    create(kube, namespace, engine_build("llama", weights))
    create_ed(kube, namespace, engine_deployment("chat", "llama"))
    eventually(lambda: ready(kube, namespace, "llama"), timeout=120)
    status = eventually(lambda: ed_ready(kube, namespace, "chat"), timeout=120)
    assert status["readyReplicas"] == 1
    (job,) = build_jobs(kube, namespace)
    assert job.status.succeeded == 1  # its pod was admitted and ran
    (pod,) = [p for p in core.list_namespaced_pod(
        namespace, label_selector=f"{ED_LABEL}=chat").items if p.metadata.deletion_timestamp
        is None]
    spec = pod.spec
    assert spec.automount_service_account_token is False
    assert (spec.security_context.run_as_non_root, spec.security_context.run_as_user,
            spec.security_context.seccomp_profile.type) == (True, 10001, "RuntimeDefault")
    for container in [*spec.init_containers, *spec.containers]:
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]


def test_a_users_deployment_of_kilns_name_is_left_alone(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    apps = client.AppsV1Api(kube.api_client)
    name = deployment_name("chat", nodes.H100.product)
    labels = {"app": "mine"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}})
    # Once the Deployment controller has written its last status, nothing else writes it.
    before = eventually(lambda: _rolled_out(apps.read_namespaced_deployment(name, namespace)),
                        timeout=30)
    create(kube, namespace, engine_build("llama", weights))
    create_ed(kube, namespace, engine_deployment("chat", "llama"))
    eventually(lambda: ready(kube, namespace, "llama"), timeout=120)

    def stalled() -> dict[str, Any] | None:
        found = condition(get_ed(kube, namespace, "chat").get("status") or {}, "Stalled")
        return found if found.get("status") == "True" else None

    stall = eventually(stalled, timeout=60)
    assert stall["reason"] == "NameTaken"
    assert f"Deployment {namespace}/{name} exists and is not EngineDeployment chat's" in (
        stall["message"])
    operator.resynced(ED_PLURAL)  # passed over again: still nothing of it changed
    after = apps.read_namespaced_deployment(name, namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.owner_references is None
    assert "kiln" not in {f.manager for f in after.metadata.managed_fields or []}
    assert after.spec.template.spec.containers[0].image == "busybox"
    assert stalled() is not None


def test_a_builder_image_outside_the_allowed_list_is_stalled_and_builds_nothing(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    body = engine_build("llama", weights)
    body["spec"]["toolchain"] = {"image": "registry.evil/builder:1"}
    create(kube, namespace, body)

    def stalled() -> dict[str, Any] | None:
        found = condition(get_eb(kube, namespace, "llama").get("status") or {}, "Stalled")
        return found if found.get("status") == "True" else None

    stall = eventually(stalled, timeout=60)
    assert stall["reason"] == "ImageNotAllowed"
    assert "registry.evil/builder:1" in stall["message"]
    assert "kiln-builder, registry.test/kiln/" in stall["message"]
    operator.resynced(EB_PLURAL)
    assert build_jobs(kube, namespace) == []


def _stalled(kube: Cluster, namespace: str, plural: str, name: str) -> Any:
    def stalled() -> dict[str, Any] | None:
        obj = client.CustomObjectsApi(kube.api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name)
        found = condition(obj.get("status") or {}, "Stalled")
        return found if found.get("status") == "True" else None
    return eventually(stalled, timeout=60)


def test_a_root_security_context_override_is_refused_with_the_field_named(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    """The operator's pod policy (default: what Pod Security ``restricted`` admits) holds
    in a namespace that enforces no Pod Security: a root or privilege-escalating override is
    Stalled naming its field, and no Job or serving Deployment is made."""
    body = engine_build("llama", weights)
    body["spec"]["job"] = {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}
    create(kube, namespace, body)
    stall = _stalled(kube, namespace, EB_PLURAL, "llama")
    assert stall["reason"] == "PodOverrideNotAllowed", stall
    assert "spec.job.securityContext.runAsUser" in stall["message"], stall
    assert "restricted" in stall["message"], stall
    operator.resynced(EB_PLURAL)
    assert build_jobs(kube, namespace) == []

    create(kube, namespace, engine_build("other", weights, max_batch_size=4))
    ed = engine_deployment("chat", "other")
    ed["spec"]["server"] = {"securityContext": {
        "allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_ADMIN"]}}}
    create_ed(kube, namespace, ed)
    stall = _stalled(kube, namespace, ED_PLURAL, "chat")
    assert stall["reason"] == "PodOverrideNotAllowed", stall
    assert "spec.server.securityContext.allowPrivilegeEscalation" in stall["message"], stall
    assert "spec.server.securityContext.capabilities.add" in stall["message"], stall
    operator.resynced(ED_PLURAL)
    assert client.AppsV1Api(kube.api_client).list_namespaced_deployment(
        namespace, label_selector=ED_LABEL).items == []


def test_a_priority_class_outside_the_allowed_list_is_refused(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    body = engine_build("llama", weights)
    body["spec"]["job"] = {"priorityClassName": "system-node-critical"}
    create(kube, namespace, body)
    stall = _stalled(kube, namespace, EB_PLURAL, "llama")
    assert stall["reason"] == "PodOverrideNotAllowed", stall
    assert "spec.job.priorityClassName" in stall["message"], stall
    assert "system-node-critical" in stall["message"], stall
    operator.resynced(EB_PLURAL)
    assert build_jobs(kube, namespace) == []
