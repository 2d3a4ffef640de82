"""A serving EngineDeployment's other children taken apart by hand: its Service, its
PodDisruptionBudget, its trust and LLM API ConfigMaps deleted (new pods could not start without
the ConfigMaps), or edited. Each is as kiln renders it again within one resync."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from field.conftest import RESYNC_SECONDS
from field.support import create, engine_build, engine_deployment, get, is_ready
from kiln import ED_PLURAL
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
TARGET = [{"gpu": "H100-SXM"}]
CHILDREN = (("service", "chat"), ("poddisruptionbudget", "chat"),
            ("configmap", "chat-kiln-trust"), ("configmap", "chat-llm-api"))
"""What ``chat`` owns besides its Deployment (kubectl's names)."""
REPAIRED_WITHIN = 3 * RESYNC_SECONDS
"""One resync, and room for a busy test machine: a 10-minute timer misses it by far."""


def read(kube: Cluster, kind: str, namespace: str, name: str) -> Any | None:
    """A child as it is now (not one being deleted), or None."""
    core, policy = client.CoreV1Api(kube.api_client), client.PolicyV1Api(kube.api_client)
    readers = {"service": core.read_namespaced_service,
               "poddisruptionbudget": policy.read_namespaced_pod_disruption_budget,
               "configmap": core.read_namespaced_config_map}
    try:
        found = readers[kind](name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return None if found.metadata.deletion_timestamp else found


def kilns_part(obj: Any) -> Any:
    """What kiln renders of a child: its content, its labels, its controller."""
    owner = [(r.kind, r.name, r.uid) for r in obj.metadata.owner_references or []
             if r.controller]
    labels = obj.metadata.labels or {}
    content = obj.data if obj.kind == "ConfigMap" else {
        "Service": lambda: (obj.spec.type, obj.spec.selector,
                            [(p.name, p.port, p.target_port) for p in obj.spec.ports]),
        "PodDisruptionBudget": lambda: (obj.spec.max_unavailable,
                                        obj.spec.selector.match_labels),
    }[obj.kind]()
    return content, labels.get(ED_LABEL), labels.get("app.kubernetes.io/managed-by"), owner


def as_rendered(kube: Cluster, namespace: str,
                rendered: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any] | None:
    """Every child, once each is as kiln rendered it; None before."""
    now = {c: read(kube, c[0], namespace, c[1]) for c in rendered}
    if any(obj is None or kilns_part(obj) != rendered[c] for c, obj in now.items()):
        return None
    return now


@pytest.fixture
def chat(kube: Cluster, namespace: str, weights: str) -> dict[tuple[str, str], Any]:
    create(kube, namespace, engine_build("llama", weights, targets=TARGET),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None, timeout=180)
    found = {c: read(kube, c[0], namespace, c[1]) for c in CHILDREN}
    assert all(found.values()), found
    return {c: kilns_part(obj) for c, obj in found.items()}


def test_children_deleted_by_hand_are_back_within_a_resync(
        kube: Cluster, namespace: str, chat: dict[tuple[str, str], Any]) -> None:
    before = {c: read(kube, c[0], namespace, c[1]).metadata.uid for c in chat}
    for kind, name in CHILDREN:
        kube.kubectl("delete", kind, name, "-n", namespace, "--wait=true")
    now = eventually(lambda: as_rendered(kube, namespace, chat), timeout=REPAIRED_WITHIN)
    assert all(now[c].metadata.uid != before[c] for c in chat), "each one made again"


def test_children_edited_by_hand_are_repaired_within_a_resync(
        kube: Cluster, namespace: str, chat: dict[tuple[str, str], Any]) -> None:
    """Hand edits of what kiln renders (its ConfigMaps' data, the budget's limit, the
    Service's port and kiln's label on it) are undone; the objects are kept, not replaced."""
    before = {c: read(kube, c[0], namespace, c[1]).metadata.uid for c in chat}

    def edit(kind: str, name: str, patch: str) -> None:
        kube.kubectl("patch", kind, name, "-n", namespace, "--type=merge", "-p", patch)

    edit("configmap", "chat-llm-api", '{"data": {"pytorch.yaml": "max_batch_size: 4096\\n"}}')
    edit("configmap", "chat-kiln-trust", '{"data": {"trusted-keys.pem": "not a key"}}')
    edit("poddisruptionbudget", "chat", '{"spec": {"maxUnavailable": 0}}')
    kube.kubectl("patch", "service", "chat", "-n", namespace, "--type=json", "-p",
                 '[{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9999}]')
    kube.kubectl("label", "service", "chat", "-n", namespace, f"{ED_LABEL}-")
    now = eventually(lambda: as_rendered(kube, namespace, chat), timeout=REPAIRED_WITHIN)
    assert {c: now[c].metadata.uid for c in chat} == before
