"""``Kube.post_event`` (Events from outside Kopf's handlers) against the real apiserver."""

from __future__ import annotations

import pytest
from kubernetes import client

from kiln.kube import Kube
from kiln.testbed.cluster import Cluster

pytestmark = pytest.mark.cluster


def test_an_event_names_its_object_and_says_why(kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    made = core.create_namespaced_config_map(namespace, {"metadata": {"name": "subject"}})
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": kube.api_client.sanitize_for_serialization(made.metadata)}
    Kube(kube.api_client).post_event(body, "Warning", "BuildFailed", "engine abc: x" * 200)
    (event,) = core.list_namespaced_event(namespace).items
    assert (event.type, event.reason, event.reporting_component) == (
        "Warning", "BuildFailed", "kiln")
    assert event.message.startswith("engine abc: x") and len(event.message) == 1024
    assert (event.involved_object.kind, event.involved_object.name,
            event.involved_object.uid) == ("ConfigMap", "subject", made.metadata.uid)


def test_an_event_that_cannot_be_posted_is_logged_not_raised(
        kube: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "no-such-namespace", "uid": "u"}}
    Kube(kube.api_client).post_event(body, "Normal", "EngineReady", "ready")
    assert "could not post Event EngineReady about no-such-namespace/x" in caplog.text
