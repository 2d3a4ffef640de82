"""A MIG pool (GFD's single strategy: ``nvidia.com/gpu.product`` ends in ``-MIG-<profile>``) is a
GPU of its own: a 1g slice has a seventh of the memory and runs other kernels, so it gets an
engine built on a slice, and never the whole GPU's engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from field.support import create, deployments, engine_build, engine_deployment, get, is_ready
from kiln import EB_PLURAL, ED_PLURAL
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import GPU_PRODUCT_LABEL, KEY_ANNOTATION, KEY_LABEL, key_label
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
WHOLE, MIG = nodes.A100.product or "", nodes.A100_MIG.product or ""


@pytest.fixture
def mig_pool(kube: Cluster) -> Iterator[None]:
    core = client.CoreV1Api(kube.api_client)
    names = nodes.A100_MIG.node_names()
    for name in names:
        core.create_node(nodes.node_manifest(nodes.A100_MIG, name))
    yield
    for name in names:
        core.delete_node(name)


def serving_both(kube: Cluster, namespace: str) -> dict[str, Any] | None:
    ed = get(kube, namespace, ED_PLURAL, "chat")
    products = {p["gpuProduct"] for p in (ed.get("status") or {}).get("products", [])}
    return ed if is_ready(ed) and products == {WHOLE, MIG} else None


@pytest.mark.usefixtures("mig_pool")
def test_a_mig_pool_is_its_own_target_and_never_serves_the_whole_gpus_engine(
        kube: Cluster, namespace: str, weights: str) -> None:
    ampere = {"nvidia.com/gpu.family": "ampere"}  # the whole A100s and the sliced ones
    create(kube, namespace, engine_build("llama", weights),
           engine_deployment("chat", "llama", gpu="auto", pool={"nodeSelector": ampere}))
    ed = eventually(lambda: serving_both(kube, namespace), timeout=240)
    engines = {e["gpuProduct"]: e for e in get(kube, namespace, EB_PLURAL, "llama")["status"][
        "engines"]}
    assert set(engines) == {WHOLE, MIG}, engines
    assert engines[MIG]["target"] == "A100-80GB-MIG-1g.10gb"
    assert engines[MIG]["key"] != engines[WHOLE]["key"]
    served = {p["gpuProduct"]: p["engineKey"] for p in ed["status"]["products"]}
    assert served == {WHOLE: engines[WHOLE]["key"], MIG: engines[MIG]["key"]}
    template = deployments(kube, namespace, "chat")[MIG].spec.template
    assert template.metadata.annotations[KEY_ANNOTATION] == engines[MIG]["key"]
    assert template.spec.node_selector[GPU_PRODUCT_LABEL] == MIG
    mig_nodes = set(nodes.A100_MIG.node_names())
    pods = client.CoreV1Api(kube.api_client).list_namespaced_pod(namespace).items
    built_on = {p.metadata.labels[KEY_LABEL]: p.spec.node_name for p in pods
                if "job-name" in (p.metadata.labels or {})}
    assert built_on.get(key_label(engines[MIG]["key"])) in mig_nodes, built_on
    assert built_on.get(key_label(engines[WHOLE]["key"])) not in mig_nodes, built_on
