"""Builds that wait their turn in Kueue (its real manager, built from its Go module): the build
Job joins the queue (label, ``suspend``), the EngineBuild says ``Queued`` with Kueue's own
reason while Kueue holds it, builds run one by one as a quota of one GPU frees, and one that
Kueue can never admit is ``Stalled`` after ``spec.job.pendingTimeout``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from field.support import conditions, create, custom, engine_build, get, is_ready
from kiln import EB_PLURAL
from kiln.dev.testbed import kueue, nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import GPU_PRODUCT_LABEL, QUEUE_LABEL
from waiting import eventually

# Bounded: Kueue's manager is built before the suite (``kiln dev testbed build --kueue``);
# a test here starts it (module fixture) and waits on builds of the stand-in builder: run
# alone, the first also starts the cluster and operator (391 s seen at load 50 on 2 cores).
pytestmark = [pytest.mark.usefixtures("operator", "builders"), pytest.mark.timeout(480)]
QUEUE, FLAVOR, GPU = "builds", "h100", "nvidia.com/gpu"


def _kueue_object(kube: Cluster, plural: str, body: dict[str, Any],
                  namespace: str | None = None) -> None:
    api = custom(kube)
    body = {"apiVersion": f"{kueue.GROUP}/{kueue.VERSION}", **body}
    if namespace is None:
        api.create_cluster_custom_object(kueue.GROUP, kueue.VERSION, plural, body)
    else:
        api.create_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, plural, body)


@pytest.fixture(scope="module")
def cluster_queue(kube: Cluster) -> Iterator[str]:
    """Kueue running, a flavor for the H100 pool and a ClusterQueue of one GPU of it."""
    kueue.start(kube)
    _kueue_object(kube, "resourceflavors", {"kind": "ResourceFlavor", "metadata": {
        "name": FLAVOR}, "spec": {"nodeLabels": {GPU_PRODUCT_LABEL: nodes.H100.product}}})
    _kueue_object(kube, "clusterqueues", {"kind": "ClusterQueue", "metadata": {"name": QUEUE},
                                          "spec": {
        "namespaceSelector": {}, "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{
            "name": FLAVOR, "resources": [{"name": "cpu", "nominalQuota": "1000"},
                                          {"name": "memory", "nominalQuota": "100Ti"},
                                          {"name": GPU, "nominalQuota": "1"}]}]}]}})
    yield QUEUE
    kube.stop_component("kueue")


@pytest.fixture
def local_queue(kube: Cluster, namespace: str, cluster_queue: str) -> str:
    _kueue_object(kube, "localqueues", {"kind": "LocalQueue", "metadata": {"name": QUEUE},
                                        "spec": {"clusterQueue": cluster_queue}}, namespace)
    return QUEUE


def training_job(namespace: str) -> dict[str, Any]:
    """The team's Job, queued in Kueue ahead of the builds: once admitted it holds the one
    GPU of quota while its pod waits for a node (none matches it)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "training", "labels": {QUEUE_LABEL: QUEUE}}, "spec": {
        "suspend": True, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "nodeSelector": {nodes.POOL_LABEL: "nowhere"},
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "train", "image": "trainer:1", "resources": {
                "requests": {GPU: "1", "cpu": "1"}, "limits": {GPU: "1"}}}]}}}}


def queued_reason(obj: dict[str, Any]) -> str | None:
    """The engine's message while Kueue holds its Job, else None."""
    for engine in (obj.get("status") or {}).get("engines") or []:
        if (engine.get("message") or "").startswith("Queued: "):
            return str(engine["message"])
    return None


def test_three_builds_against_a_quota_of_one_gpu_wait_in_kueue_and_run_in_order(
        kube: Cluster, namespace: str, weights: str, local_queue: str) -> None:
    batch = client.BatchV1Api(kube.api_client)
    batch.create_namespaced_job(namespace, training_job(namespace))
    eventually(lambda: batch.read_namespaced_job("training", namespace).spec.suspend is False
               or None, timeout=60)  # admitted: the quota is taken
    names = ["first", "second", "third"]
    for size, name in enumerate(names, start=1):  # another batch size: another key, another Job
        create(kube, namespace, engine_build(
            name, weights, targets=[{"gpu": "H100-SXM"}], build={"maxBatchSize": size},
            job={"queueName": local_queue, "pendingTimeout": "10m"}))
        # Each waits (said in status) before the next comes: Kueue's order is theirs.
        message = eventually(lambda n=name: queued_reason(get(kube, namespace, EB_PLURAL, n)),
                             timeout=60)
        assert f"waits in Kueue (LocalQueue {local_queue})" in message, message
        assert f"insufficient unused quota for {GPU} in flavor {FLAVOR}" in message, message
        eb = get(kube, namespace, EB_PLURAL, name)
        assert conditions(eb)["Reconciling"] == ("True", "Building")  # a wait, not a fault
        assert conditions(eb)["Stalled"][0] == "False"
    jobs = {j.metadata.name: j for j in batch.list_namespaced_job(namespace).items}
    builds = [j for j in jobs.values() if j.metadata.name != "training"]
    assert len(builds) == 3
    assert all(j.spec.suspend and j.metadata.labels[QUEUE_LABEL] == local_queue for j in builds)

    batch.delete_namespaced_job("training", namespace, propagation_policy="Background")
    for name in names:
        eventually(lambda n=name: is_ready(get(kube, namespace, EB_PLURAL, n)) or None,
                   timeout=180)
    runs = sorted((j.status.start_time, j.status.completion_time, j.metadata.creation_timestamp)
                  for j in batch.list_namespaced_job(namespace).items
                  if j.metadata.name != "training")
    assert [created for _, _, created in runs] == sorted(created for _, _, created in runs)
    for (_, done, _), (started, _, _) in itertools.pairwise(runs):
        assert started >= done  # one GPU of quota: one build at a time


def test_a_build_kueue_can_never_admit_is_stalled_after_the_pending_timeout(
        kube: Cluster, namespace: str, weights: str, local_queue: str) -> None:
    create(kube, namespace, engine_build(
        "wide", weights, targets=[{"gpu": "H100-SXM"}], build={"parallelism": {"tensor": 2}},
        job={"queueName": local_queue, "pendingTimeout": "20s"}))
    def stalled() -> dict[str, Any] | None:
        obj = get(kube, namespace, EB_PLURAL, "wide")
        return obj if conditions(obj).get("Stalled") == ("True", "Queued") else None

    eb = eventually(stalled, timeout=90)
    ready = next(c for c in eb["status"]["conditions"] if c["type"] == "Ready")
    assert f"waits in Kueue (LocalQueue {local_queue})" in ready["message"], ready
    assert "maximum capacity" in ready["message"] and "pendingTimeout (20s)" in ready["message"]
