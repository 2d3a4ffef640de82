"""The test bed itself: real scheduling onto GPU pools, real controllers, real RBAC."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from kubernetes import client

from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LABEL, LocalProcessRunner
from waiting import eventually

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_pod(name: str, selector: dict[str, str], gpus: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": selector,
            "tolerations": [GPU_TOLERATION],
            "containers": [{"name": "main", "image": "busybox",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    }


def node_of(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    node: str | None = core.read_namespaced_pod(name, namespace).spec.node_name
    return node


def test_scheduler_binds_gpu_pods_to_the_pool_they_select(kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    for i in range(4):
        core.create_namespaced_pod(namespace, gpu_pod(
            f"h100-{i}", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}))
    core.create_namespaced_pod(namespace, gpu_pod(
        "cc89", {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9"}))
    core.create_namespaced_pod(namespace, gpu_pod(
        "too-big", {"nvidia.com/gpu.present": "true"}, gpus=9))

    for i in range(4):
        bound = eventually(lambda i=i: node_of(core, namespace, f"h100-{i}"))
        assert bound in nodes.H100.node_names()
    assert eventually(lambda: node_of(core, namespace, "cc89")) in nodes.L40S.node_names()

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("too-big", namespace)
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                   for c in pod.status.conditions or [])

    eventually(unschedulable)
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"
    eventually(lambda: core.read_namespaced_pod("h100-0", namespace).status.phase == "Running")


def test_job_completes_through_the_job_controller(kube: Cluster, namespace: str) -> None:
    batch = client.BatchV1Api(kube.api_client)
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    })

    def complete() -> bool:
        status = batch.read_namespaced_job("hello", namespace).status
        return any(c.type == "Complete" and c.status == "True"
                   for c in status.conditions or [])

    eventually(complete, timeout=60)
    assert batch.read_namespaced_job("hello", namespace).status.succeeded == 1


def test_deployment_rolling_update_replaces_its_pods(kube: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(kube.api_client)
    core = client.CoreV1Api(kube.api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3, "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels, "annotations": {"rev": "1"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
        },
    })

    def pods_ready() -> set[str]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        running = {p.metadata.name for p in pods
                   if p.status.phase == "Running" and p.metadata.deletion_timestamp is None}
        return running if len(running) == 3 else set()

    first = eventually(pods_ready, timeout=60)
    apps.patch_namespaced_deployment("web", namespace, {
        "spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}})

    def rolled() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        s = d.status
        return bool(s.observed_generation == d.metadata.generation and s.updated_replicas == 3
                    and s.ready_replicas == 3 and (s.replicas or 0) == 3)

    eventually(rolled, timeout=60)
    second = eventually(pods_ready, timeout=60)
    assert not first & second, "every pod was replaced"


def test_local_process_helper_reports_exit_code_and_message(
        kube: Cluster, namespace: str) -> None:
    batch = client.BatchV1Api(kube.api_client)
    core = client.CoreV1Api(kube.api_client)
    script = ("import os, sys; open(os.environ['KILN_TERMINATION_LOG'], 'w')"
              ".write('no config.json in ' + os.environ['WORK']); sys.exit(3)")
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "stringData": {"token": "s3cret"}})
    job = {
        "metadata": {"name": "local"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {LABEL: "true"}},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                "tolerations": [GPU_TOLERATION],
                "volumes": [{"name": "work", "emptyDir": {}}],
                "containers": [{
                    "name": "main", "image": "python", "command": [sys.executable, "-c"],
                    "args": [script + " if os.environ['TOKEN'] == 's3cret' else sys.exit(9)"],
                    "env": [{"name": "WORK", "value": "/work/in"},
                            {"name": "TOKEN", "valueFrom": {
                                "secretKeyRef": {"name": "creds", "key": "token"}}}],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }],
            },
        }},
    }
    with LocalProcessRunner(kube.api_client) as runner:
        batch.create_namespaced_job(namespace, job)

        def failed_pod() -> Any:
            pods = core.list_namespaced_pod(namespace, label_selector="job-name=local").items
            return next((p for p in pods if p.status.phase == "Failed"), None)

        pod = eventually(failed_pod, timeout=60)
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    # The emptyDir mounted at /work became a local temp dir, and env values followed it.
    assert terminated.message.startswith("no config.json in /")
    assert terminated.message.endswith("/volumes/work/in")
    assert terminated.message != "no config.json in /work/in"
    assert pod.spec.node_name in nodes.A100.node_names()
    assert [f.exit_code for f in runner.finished] == [3]

    def job_failed() -> bool:
        status = batch.read_namespaced_job("local", namespace).status
        return any(c.type == "Failed" and c.status == "True" for c in status.conditions or [])

    eventually(job_failed, timeout=30)


def test_service_account_without_rbac_is_forbidden(kube: Cluster, namespace: str) -> None:
    config = kube.kubeconfig_for_service_account(namespace, "nobody")
    denied = kube.kubectl("get", "jobs", "-n", namespace, kubeconfig=config, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{namespace}:nobody" in denied.stderr

    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "jobs-reader"},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "jobs-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "jobs-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})
    allowed = eventually(lambda: kube.kubectl("get", "jobs", "-n", namespace,
                                              kubeconfig=config, check=False).returncode == 0)
    assert allowed


def test_pools_come_and_go_while_the_cluster_runs(kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    kube.add_pools([nodes.H200])
    try:
        kube.wait_nodes_ready(timeout=30)
        core.create_namespaced_pod(namespace, gpu_pod(
            "on-h200", {"nvidia.com/gpu.product": "NVIDIA-H200"}))
        assert eventually(lambda: node_of(core, namespace, "on-h200")) in nodes.H200.node_names()
    finally:
        kube.remove_pool("h200")
    eventually(lambda: not core.list_node(label_selector=f"{nodes.POOL_LABEL}=h200").items)


@pytest.mark.parametrize("pool", nodes.DEFAULT_POOLS, ids=lambda p: p.name)
def test_nodes_carry_gpu_feature_discovery_labels(kube: Cluster, pool: nodes.Pool) -> None:
    core = client.CoreV1Api(kube.api_client)
    for node in core.list_node(label_selector=f"{nodes.POOL_LABEL}={pool.name}").items:
        labels = node.metadata.labels
        if pool.product is None:
            assert "nvidia.com/gpu.product" not in labels
            assert not node.spec.taints
            continue
        assert labels["nvidia.com/gpu.product"] == pool.product
        assert (labels["nvidia.com/gpu.compute.major"],
                labels["nvidia.com/gpu.compute.minor"]) == tuple(map(str, pool.compute))
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert [t.key for t in node.spec.taints] == ["nvidia.com/gpu"]
