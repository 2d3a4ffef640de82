"""DRA on the test bed: NVIDIA's driver published for the fake GPU nodes (its DeviceClass,
a ResourceSlice per node with the driver's attribute names), and the real scheduler
allocating a claim whose CEL selector (``kiln.domain.dra.selector``) names a product and a
compute capability: it lands on that product, and a claim no device satisfies leaves its pod
Unschedulable, said by the scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kiln.dev.testbed import dra as testbed_dra
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.domain import dra
from waiting import eventually

GROUP, VERSION = testbed_dra.GROUP, testbed_dra.VERSION


@pytest.fixture(scope="module")
def slices(kube: Cluster) -> Iterator[None]:
    testbed_dra.publish(kube)
    yield
    api = client.CustomObjectsApi(kube.api_client)
    api.delete_collection_cluster_custom_object(GROUP, VERSION, "resourceslices")
    api.delete_cluster_custom_object(GROUP, VERSION, "deviceclasses", dra.DEVICE_CLASS)


def claim_template(name: str, selector: str, count: int = 1) -> dict[str, Any]:
    return {"apiVersion": dra.API_VERSION, "kind": "ResourceClaimTemplate",
            "metadata": {"name": name}, "spec": {"spec": {"devices": {"requests": [{
                "name": "gpu", "exactly": {"deviceClassName": dra.DEVICE_CLASS, "count": count,
                                           "selectors": [{"cel": {"expression": selector}}]}}]}}}}


def claiming_pod(name: str, template: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
        "containers": [{"name": "main", "image": "busybox",
                        "resources": {"claims": [{"name": "gpu"}]}}]}}


@pytest.mark.usefixtures("slices")
def test_a_claim_lands_on_the_product_its_selector_names(kube: Cluster, namespace: str) -> None:
    api, core = client.CustomObjectsApi(kube.api_client), client.CoreV1Api(kube.api_client)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "resourceclaimtemplates",
                                        claim_template("h100", dra.selector(
                                            nodes.H100.product or "", "9.0"), count=2))
    core.create_namespaced_pod(namespace, claiming_pod("build", "h100"))
    node = eventually(lambda: core.read_namespaced_pod("build", namespace).spec.node_name)
    assert node in nodes.H100.node_names()
    (claim,) = api.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                 "resourceclaims")["items"]
    results = claim["status"]["allocation"]["devices"]["results"]
    assert len(results) == 2
    assert {(r["driver"], r["pool"]) for r in results} == {(dra.DRIVER, node)}


@pytest.mark.usefixtures("slices")
def test_a_claim_no_gpu_satisfies_leaves_the_pod_unschedulable(kube: Cluster,
                                                               namespace: str) -> None:
    api, core = client.CustomObjectsApi(kube.api_client), client.CoreV1Api(kube.api_client)
    # An L40S is 8.9: none is 9.0.
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "resourceclaimtemplates",
                                        claim_template("no-such", dra.selector(
                                            nodes.L40S.product or "", "9.0")))
    core.create_namespaced_pod(namespace, claiming_pod("build", "no-such"))

    def unschedulable() -> Any:
        pod = core.read_namespaced_pod("build", namespace)
        return next((c for c in pod.status.conditions or []
                     if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)

    condition = eventually(unschedulable)
    assert "cannot allocate all claims" in condition.message, condition.message
    assert core.read_namespaced_pod("build", namespace).spec.node_name is None
