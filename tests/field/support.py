"""What the field tests share: objects to create, and reading what the cluster holds."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL, KEY_ANNOTATION, KEY_LABEL, SERVING_PRODUCT_LABEL

UNSCHEDULABLE = [{"nodeSelector": {"testbed.kiln.dev/pool": "nowhere"},
                  "computeCapability": "9.0"}]
"""A target no node matches: its build pod stays Pending, its Job Active."""


def engine_build(name: str, source: str, **spec: Any) -> dict[str, Any]:
    """A PyTorch-backend build (the real kiln-builder runs it on the CPU)."""
    body: dict[str, Any] = {"model": {"source": source},
                            "build": {"backend": "pytorch", "dtype": "bfloat16"}}
    for key, value in spec.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
            "metadata": {"name": name}, "spec": body}


def engine_deployment(name: str, build: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
            "metadata": {"name": name},
            "spec": {"engineBuildRef": {"name": build}, "replicas": 1, **spec}}


def custom(kube: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client)


def create(kube: Cluster, namespace: str, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        plural = EB_PLURAL if body["kind"] == "EngineBuild" else ED_PLURAL
        custom(kube).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def get(kube: Cluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name)
    return obj


def patch(kube: Cluster, namespace: str, plural: str, name: str, body: dict[str, Any]) -> None:
    custom(kube).patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, body)


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", ""))
            for c in (obj.get("status") or {}).get("conditions", [])}


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return (conditions(obj).get("Ready", ("",))[0] == "True"
            and status.get("observedGeneration") == obj["metadata"]["generation"])


def keys(kube: Cluster, namespace: str, build: str) -> dict[str, str]:
    """target -> engine key, from the EngineBuild's status."""
    status = get(kube, namespace, EB_PLURAL, build).get("status") or {}
    return {e["target"]: e.get("key", "") for e in status.get("engines", [])}


def jobs(kube: Cluster, namespace: str) -> list[Any]:
    return list(client.BatchV1Api(kube.api_client).list_namespaced_job(
        namespace, label_selector=KEY_LABEL).items)


def job_keys(kube: Cluster, namespace: str) -> set[str]:
    return {j.metadata.annotations[KEY_ANNOTATION] for j in jobs(kube, namespace)}


def deployments(kube: Cluster, namespace: str, owner: str) -> dict[str, Any]:
    """product -> the serving Deployment."""
    items = client.AppsV1Api(kube.api_client).list_namespaced_deployment(
        namespace, label_selector=f"{ED_LABEL}={owner}").items
    return {d.metadata.labels[SERVING_PRODUCT_LABEL]: d for d in items}


def serving_pods(kube: Cluster, namespace: str, owner: str) -> list[Any]:
    return [p for p in client.CoreV1Api(kube.api_client).list_namespaced_pod(
        namespace, label_selector=f"{ED_LABEL}={owner}").items
        if p.metadata.deletion_timestamp is None]


def relabel(kube: Cluster, nodes: list[str], label: str, value: str | None) -> None:
    """Set (or, with None, remove) a label on nodes, as GFD/NFD restarts and upgrades do."""
    arg = f"{label}-" if value is None else f"{label}={value}"
    kube.kubectl("label", "node", *nodes, arg, "--overwrite")
