"""Nobody else's build: a tenant's own pod or Job, standing in for the key's build Job, never
gets its manifest signed (issue 19, review findings 1 and 2).

The real control plane, the operator as a process, builds by the real kiln-builder, moto's S3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator, get_eb
from faults.support import ENGINES, create, engine_build
from faults.test_provenance import engine, runs, squat, victim_key
from kiln import GROUP, VERSION
from kiln.contract import provenance
from kiln.dev import signing
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.engine_build.jobs import job_name
from kiln.store import open_store
from waiting import eventually

pytestmark = pytest.mark.timeout(300)


def _owner_keys(operator: Operator) -> list[Any]:
    return provenance.public_keys(signing.public_pem(Path(operator.env["KILN_SIGNING_KEY_FILE"])))


def _signed_upload(store: Any, key: str, operator: Operator) -> str | None:
    """The upload of the engine the operator signed under ``key``, if any."""
    data, envelope = store.read_manifest_bytes(key), store.read_envelope(key)
    if data is None or envelope is None:
        return None
    try:
        return provenance.verify(key, data, envelope, _owner_keys(operator)).manifest.upload
    except provenance.Untrusted:
        return None


def _job(kube: Cluster, namespace: str, name: str) -> Any:
    try:
        return client.BatchV1Api(kube.api_client).read_namespaced_job(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def test_a_pod_of_the_tenants_own_reporting_its_manifest_is_not_signed(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str, tmp_path: Path) -> None:
    """Finding 1: between the victim's build and the signature (the operator down), a tenant
    adds a pod labelled with the Job's name, owned by its uid, whose termination message
    gives the digest of the tenant's manifest, and writes that manifest over the victim's."""
    body = engine_build("victim", weights)
    key, inputs = victim_key(body, weights, s3_endpoint, namespace)
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    core = client.CoreV1Api(kube.api_client)
    create(kube, namespace, body)
    job = eventually(lambda: _job(kube, namespace, job_name(key)), timeout=60)
    operator.kill()
    try:
        eventually(lambda: ((j := _job(kube, namespace, job.metadata.name)) is not None
                   and (j.status.succeeded or 0) >= 1) or None, timeout=120)
        squatted = squat(store, key, inputs, tmp_path)
        digest = provenance.sha256(store.read_manifest_bytes(key) or b"")
        forged = core.create_namespaced_pod(namespace, {
            "metadata": {"name": "aaa-forged", "labels": {"job-name": job.metadata.name},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": job.metadata.name,
                                              "uid": job.metadata.uid}]},
            # Bound to a node nothing runs (no scheduler, no simulated kubelet touches it).
            "spec": {"nodeName": "tenant-node",
                     "containers": [{"name": "builder", "image": "busybox"}]}})
        core.patch_namespaced_pod_status(forged.metadata.name, namespace, {"status": {
            "phase": "Succeeded", "containerStatuses": [{
                "name": "builder", "image": "busybox", "imageID": "", "ready": False,
                "restartCount": 0, "state": {"terminated": {
                    "exitCode": 0, "reason": "Completed",
                    "message": json.dumps({"key": key, "cached": False,
                                           "manifestSha256": digest})}}}]}})
        seen = core.read_namespaced_pod(forged.metadata.name, namespace)
        assert digest in seen.status.container_statuses[0].state.terminated.message
    finally:
        operator.start()
    # The operator does not sign the tenant's manifest; it builds the victim's engine again.
    eventually(lambda: runs(builders, namespace) == 2 or None, timeout=120)
    ready = eventually(lambda: engine(kube, namespace, "victim"), timeout=60)
    assert ready["key"] == key
    signed = _signed_upload(store, key, operator)
    assert signed is not None and signed != squatted


def test_a_tenants_job_of_the_keys_name_is_neither_joined_nor_signed(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str) -> None:
    """Finding 2: a tenant creates, before the victim's EngineBuild, a Job of the key's name
    that is kiln's render plus an environment variable of theirs (LD_PRELOAD); it runs the
    real builder and succeeds. kiln neither joins it nor signs what it wrote, changes nothing
    of it, and says so; once it is deleted, the victim builds its own engine."""
    body = engine_build("victim", weights)
    key, _ = victim_key(body, weights, s3_endpoint, namespace)
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    batch = client.BatchV1Api(kube.api_client)
    builders.pause()
    try:  # kiln's render of the Job, from a scratch EngineBuild of the same key
        create(kube, namespace, {**body, "metadata": {"name": "scratch"}})
        rendered = eventually(lambda: _job(kube, namespace, job_name(key)), timeout=60)
        template = kube.api_client.sanitize_for_serialization(rendered)
        client.CustomObjectsApi(kube.api_client).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "enginebuilds", "scratch")
        eventually(lambda: _job(kube, namespace, job_name(key)) is None or None, timeout=60)
    finally:
        builders.resume()
    spec = template["spec"]
    spec.pop("selector", None)
    labels = spec["template"]["metadata"]["labels"]
    for label in list(labels):
        if "controller-uid" in label or "job-name" in label:
            labels.pop(label)
    spec["template"]["spec"]["containers"][0]["env"].append(
        {"name": "LD_PRELOAD", "value": ""})
    meta = template["metadata"]
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "spec": spec,
        "metadata": {"name": meta["name"], "labels": meta["labels"],
                     "annotations": meta["annotations"]}})
    eventually(lambda: ((j := _job(kube, namespace, meta["name"])) is not None
               and (j.status.succeeded or 0) >= 1) or None, timeout=120)
    tenant = _job(kube, namespace, meta["name"])

    create(kube, namespace, body)

    def foreign() -> str | None:
        conditions = (get_eb(kube, namespace, "victim").get("status") or {}).get(
            "conditions") or []
        return next((c["message"] for c in conditions if c.get("reason") == "ForeignJob"),
                    None)

    message = eventually(foreign, timeout=60)
    assert meta["name"] in message and "environment" in message
    after = _job(kube, namespace, meta["name"])
    assert after.metadata.resource_version == tenant.metadata.resource_version
    assert not after.metadata.owner_references
    assert _signed_upload(store, key, operator) is None
    assert engine(kube, namespace, "victim") is None

    batch.delete_namespaced_job(meta["name"], namespace, propagation_policy="Background")
    ready = eventually(lambda: engine(kube, namespace, "victim"), timeout=120)
    assert (ready["key"], ready["state"]) == (key, "Ready")
    verified = provenance.verify(key, store.read_manifest_bytes(key), store.read_envelope(key),
                                 _owner_keys(operator))
    assert verified.job.uid != tenant.metadata.uid
