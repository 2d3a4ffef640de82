"""The Kubernetes adapter (``kiln.kube.client``, over the official client) against the real
apiserver: both kinds of credential, error mapping, owner replacement, server-side apply, Events."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kiln.dev.testbed.cluster import Cluster
from kiln.errors import AccessDenied, NameTaken
from kiln.kube.auth import Credentials
from kiln.kube.client import APPLY, ApiError, Client, Kube

pytestmark = pytest.mark.cluster


def _admin(kube: Cluster) -> Kube:
    return Kube(Client(Credentials(str(kube.kubeconfig))))


def _job(namespace: str, name: str) -> dict[str, object]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"suspend": True, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}


def _owner(name: str, uid: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid}


def test_jobs_created_read_reowned_and_deleted(kube: Cluster, namespace: str) -> None:
    api = _admin(kube)
    assert api.read_job(namespace, "j") is None
    assert api.create_job(_job(namespace, "j")) is True
    assert api.create_job(_job(namespace, "j")) is False  # exists: not an error
    job = api.read_job(namespace, "j")
    assert job is not None and job["metadata"]["name"] == "j"
    core = client.CoreV1Api(kube.api_client)
    # Real owners: the garbage collector deletes a Job whose owners do not exist.
    two = [_owner(n, core.create_namespaced_config_map(
        namespace, {"metadata": {"name": n}}).metadata.uid) for n in ("a", "b")]

    def set_owners(owners: list[dict[str, object]]) -> dict[str, Any]:
        """Read, then swap; again when the Job controller wrote in between (a 409)."""
        for _ in range(20):
            job = api.read_job(namespace, "j")
            assert job is not None
            if not api.set_job_owners(namespace, "j", owners,
                                      job["metadata"]["resourceVersion"]):
                continue
            job = api.read_job(namespace, "j")
            assert job is not None
            return job
        raise AssertionError("the Job never held still")

    set_owners(two)
    # One owner leaves: the list is replaced (a strategic merge would have kept both).
    job = set_owners(two[1:])
    assert [r["name"] for r in job["metadata"]["ownerReferences"]] == ["b"]
    assert api.set_job_owners(namespace, "j", two, "1") is False  # a stale version: refused
    stale = api.read_job(namespace, "j")
    assert stale is not None
    meta = stale["metadata"]
    # A delete preconditioned on a uid and version that moved on is refused, not done.
    assert api.delete_job(namespace, "j", uid=meta["uid"], resource_version="1") is False
    assert api.read_job(namespace, "j") is not None
    assert api.delete_job(namespace, "j", uid=meta["uid"],
                          resource_version=meta["resourceVersion"]) is True
    assert api.delete_job(namespace, "j") is True  # gone already: fine
    assert api.job_pods(namespace, "j") == []


def test_service_account_token_and_access_denied(kube: Cluster, namespace: str) -> None:
    path = kube.kubeconfig_for_service_account(namespace, "nobody")
    api = Kube(Client(Credentials(str(path))))
    with pytest.raises(AccessDenied, match="Forbidden"):
        api.secret_data(namespace, "anything")


def test_server_side_apply_keeps_others_fields(kube: Cluster, namespace: str) -> None:
    api = _admin(kube)
    core = client.CoreV1Api(kube.api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner.metadata.uid, "controller": True}

    def service(app: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "s", "namespace": namespace, "ownerReferences": [ref]},
                "spec": {"selector": {"app": app}, "ports": [{"port": 80, "name": "http"}]}}

    api.apply(service("a"))
    core.patch_namespaced_service("s", namespace, {"metadata": {"labels": {"mine": "yes"}}})
    api.apply(service("b"))
    made = core.read_namespaced_service("s", namespace)
    assert made.spec.selector == {"app": "b"} and made.metadata.labels == {"mine": "yes"}
    assert any(f.manager == "kiln" for f in made.metadata.managed_fields)
    # What kiln read is the apply's precondition: an object changed since is read again.
    stale = {**service("c"), "metadata": {**service("c")["metadata"],
                                          "resourceVersion": made.metadata.resource_version}}
    core.patch_namespaced_service("s", namespace, {"metadata": {"labels": {"mine": "again"}}})
    with pytest.raises(ApiError) as refused:
        api.api.request("PATCH", f"/api/v1/namespaces/{namespace}/services/s", stale,
                        query={"fieldManager": "kiln", "force": "true"}, content_type=APPLY)
    assert refused.value.status == 409, refused.value.message
    assert core.read_namespaced_service("s", namespace).spec.selector == {"app": "b"}
    api.apply(service("c"))  # which apply does: it reads again
    assert core.read_namespaced_service("s", namespace).spec.selector == {"app": "c"}


def test_what_kiln_stops_rendering_is_removed(kube: Cluster, namespace: str) -> None:
    """A serving pod template that loses an init container and its volume (an artifact set no
    longer placed): the apply removes them, also from an object kiln created."""
    api = _admin(kube)
    apps = client.AppsV1Api(kube.api_client)
    owner = client.CoreV1Api(kube.api_client).create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner.metadata.uid, "controller": True}

    def deployment(*inits: str) -> dict[str, Any]:
        labels = {"app": "d"}
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": namespace, "ownerReferences": [ref]},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"initContainers": [{"name": n, "image": "x"} for n in inits],
                             "containers": [{"name": "server", "image": "x"}],
                             "volumes": [{"name": n, "emptyDir": {}} for n in inits]}}}}

    api.apply(deployment("fetch-engine", "place-artifacts"))
    api.apply(deployment("fetch-engine"))
    pod = apps.read_namespaced_deployment("d", namespace).spec.template.spec
    assert [c.name for c in pod.init_containers] == ["fetch-engine"]
    assert [v.name for v in pod.volumes] == ["fetch-engine"]


def test_apply_never_adopts_someone_elses_object(kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    theirs = core.create_namespaced_service(namespace, {
        "metadata": {"name": "s"}, "spec": {"selector": {"app": "theirs"},
                                             "ports": [{"port": 80}]}})
    ours = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": namespace, "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.metadata.uid, "controller": True}]},
            "spec": {"selector": {"app": "ours"}, "ports": [{"port": 80}]}}
    with pytest.raises(NameTaken, match=f"Service {namespace}/s exists and is not ConfigMap"):
        _admin(kube).apply(ours)
    after = core.read_namespaced_service("s", namespace)
    assert after.metadata.resource_version == theirs.metadata.resource_version


def test_an_event_names_its_object_and_says_why(kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    made = core.create_namespaced_config_map(namespace, {"metadata": {"name": "subject"}})
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": kube.api_client.sanitize_for_serialization(made.metadata)}
    _admin(kube).post_event(body, "Warning", "BuildFailed", "engine abc: x" * 200)
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
    _admin(kube).post_event(body, "Normal", "EngineReady", "ready")
    assert "could not post Event EngineReady about no-such-namespace/x" in caplog.text


def test_a_closed_fence_stops_writes_not_reads(kube: Cluster, namespace: str) -> None:
    """A replica without the Lease: its writes fail before they are sent."""
    from kiln.errors import NotLeader

    api = Kube(Client(Credentials(str(kube.kubeconfig)), fence=lambda: False))
    assert api.read_job(namespace, "j") is None
    with pytest.raises(NotLeader):
        api.create_job(_job(namespace, "j"))
    assert _admin(kube).read_job(namespace, "j") is None


def test_the_watches_server_side_selectors_keep_kilns_objects_only(
        kube: Cluster, namespace: str) -> None:
    """Kopf passes these to the API server's list and watch: they must be valid there, and
    keep what kiln indexes while dropping the rest of the cluster's pods and Events."""
    from kiln.handlers.settings import EVENTS_FIELDS, SERVER_SIDE_LABELS
    core = client.CoreV1Api(kube.api_client)
    labels = {"app.kubernetes.io/managed-by": "kiln", "kiln.dev/engine-deployment": "chat"}
    for name, extra in (("kilns", labels), ("others", {"app": "web"})):
        core.create_namespaced_pod(namespace, {"metadata": {"name": name, "labels": extra},
                                               "spec": {"containers": [{"name": "c",
                                                                        "image": "x"}]}})
    pods = core.list_namespaced_pod(namespace,
                                    label_selector=SERVER_SIDE_LABELS[("v1", "pods")]).items
    assert [p.metadata.name for p in pods] == ["kilns"]
    involved = {"kind": "Job", "name": "kiln-build-x", "namespace": namespace}
    for name, reason in (("wanted", "FailedCreate"), ("unwanted", "SuccessfulCreate")):
        core.create_namespaced_event(namespace, {
            "metadata": {"name": name}, "involvedObject": involved, "reason": reason,
            "message": "m", "type": "Warning"})
    events = core.list_namespaced_event(namespace, field_selector=EVENTS_FIELDS).items
    assert [e.metadata.name for e in events] == ["wanted"]
    for (group, plural), selector in SERVER_SIDE_LABELS.items():  # a watch's own request
        path = f"/api/v1/{plural}" if group == "v1" else f"/apis/{group}/v1/{plural}"
        kube.api_client.call_api(path, "GET", query_params=[
            ("labelSelector", selector), ("watch", "true"), ("timeoutSeconds", "1")],
            auth_settings=["BearerToken"], _preload_content=False)
