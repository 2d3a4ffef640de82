"""A pool's GPU product label lost and restored (a GFD/NFD restart, a node-pool upgrade): kiln
drains, it never drops. Nothing that serves is deleted or restarted while the label is gone
for a moment; a product gone for good goes only after the others are Ready."""

from __future__ import annotations

import threading
import time

import pytest

from e2e.support import Operator
from field.support import (
    conditions,
    create,
    deployments,
    engine_build,
    engine_deployment,
    get,
    is_ready,
    relabel,
    serving_pods,
)
from kiln import ED_PLURAL
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import GPU_PRODUCT_LABEL
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
L40S = nodes.L40S.product or ""


class Watch:
    """Samples the EngineDeployment's products and the L40S Deployment until stopped."""

    def __init__(self, kube: Cluster, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.missing_seen = False
        self.deployment_uids: set[str] = set()
        self.pod_uids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = get(self.kube, self.namespace, ED_PLURAL, "chat").get("status") or {}
            self.missing_seen |= any(p.get("missingSince") and p["gpuProduct"] == L40S
                                     for p in status.get("products", []))
            found = deployments(self.kube, self.namespace, "chat").get(L40S)
            if found is not None:
                self.deployment_uids.add(found.metadata.uid)
            self.pod_uids |= {p.metadata.uid for p in serving_pods(self.kube, self.namespace,
                                                                   "chat")
                              if p.metadata.labels.get("kiln.dev/gpu-product") == L40S}
            time.sleep(0.2)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def serving_everywhere(kube: Cluster, namespace: str) -> bool:
    ed = get(kube, namespace, ED_PLURAL, "chat")
    products = {p["gpuProduct"] for p in (ed.get("status") or {}).get("products", [])}
    return is_ready(ed) and L40S in products and len(products) == 3


def test_a_label_blip_drops_nothing_and_a_lost_pool_drains_after_the_others_are_ready(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    create(kube, namespace, engine_build("llama", weights),
           engine_deployment("chat", "llama", gpu="auto", pool={"drainAfter": "20s"}))
    eventually(lambda: serving_everywhere(kube, namespace) or None, timeout=180)
    before = deployments(kube, namespace, "chat")[L40S]
    pods = {p.metadata.uid: p for p in serving_pods(kube, namespace, "chat")}
    restarts = {uid: sum(c.restart_count for c in p.status.container_statuses or [])
                for uid, p in pods.items()}
    l40s_nodes = nodes.L40S.node_names()

    # 1. The product label gone from every L40S node for two resyncs, then back.
    with Watch(kube, namespace) as watch:
        relabel(kube, l40s_nodes, GPU_PRODUCT_LABEL, None)
        try:
            eventually(lambda: watch.missing_seen or None, timeout=8)
            ed = get(kube, namespace, ED_PLURAL, "chat")
            assert conditions(ed)["Reconciling"] == ("True", "ProductMissing")
            operator.resynced(ED_PLURAL)  # it has passed over it without the label
        finally:
            relabel(kube, l40s_nodes, GPU_PRODUCT_LABEL, L40S)
        eventually(lambda: serving_everywhere(kube, namespace) or None, timeout=30)
    assert watch.missing_seen, "ProductMissing was visible while the label was gone"
    assert watch.deployment_uids == {before.metadata.uid}, "the Deployment was never recreated"
    assert watch.pod_uids <= set(pods), "no serving pod was replaced"
    after = {p.metadata.uid: p for p in serving_pods(kube, namespace, "chat")}
    assert set(after) == set(pods), "no serving pod was deleted"
    assert {uid: sum(c.restart_count for c in p.status.container_statuses or [])
            for uid, p in after.items()} == restarts, "no serving pod restarted"
    assert deployments(kube, namespace, "chat")[L40S].metadata.generation == \
        before.metadata.generation, "nothing rolled"

    # 2. Gone for longer than drainAfter: the Deployment goes, once the others are Ready.
    relabel(kube, l40s_nodes, GPU_PRODUCT_LABEL, None)
    try:
        gone_at = time.monotonic()
        eventually(lambda: L40S not in deployments(kube, namespace, "chat") or None,
                   timeout=60)
        assert time.monotonic() - gone_at >= 15, "not before drainAfter"
        ed = get(kube, namespace, ED_PLURAL, "chat")
        assert {p["gpuProduct"] for p in ed["status"]["products"]} == {
            nodes.A100.product, nodes.H100.product}
        assert all(d.status.ready_replicas for d in deployments(kube, namespace,
                                                                 "chat").values())
        eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None,
                   timeout=30)
    finally:
        relabel(kube, l40s_nodes, GPU_PRODUCT_LABEL, L40S)
