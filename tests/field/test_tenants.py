"""Nobody else's engine, between tenants (issue 24): what one tenant does in its own namespace
(a Secret that names another endpoint by the time the build pod starts, a Job of its own with
kiln's name and labels, a pod of its own passing for the Job's, calibration data of its own)
never reaches another namespace's EngineBuild: that one is never ``Cached`` with an engine whose
Job ran in the tenant's namespace, and builds its own, in its own namespace.

Both tenants name the same weights in the platform's bucket, read through the platform's
endpoint: before issue 24 they computed one key, and whichever namespace built first made the
engine the other was served.

The real control plane, the operator as a process with the chart's RBAC, builds by the real
``kiln-builder``, moto's S3 over HTTP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from chart.support import serve
from e2e.support import Operator
from field.conftest import BUILDS, MODELS
from field.support import UNSCHEDULABLE, create, custom, engine_build, get, keys
from kiln import EB_PLURAL, GROUP, VERSION
from kiln.contract import provenance
from kiln.contract.env import TASK
from kiln.dev import signing
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.store import open_store
from waiting import eventually

pytestmark = [pytest.mark.usefixtures("operator", "builders"), pytest.mark.timeout(400)]
TARGET = [{"gpu": "H100-SXM"}]
ENGINES = "field-engines"


@pytest.fixture
def victim(kube: Cluster) -> Iterator[str]:
    """Another tenant's namespace (the test's own ``namespace`` is the tenant who tampers)."""
    core = client.CoreV1Api(kube.api_client)
    name = f"victim-{os.urandom(3).hex()}"
    core.create_namespace({"metadata": {"name": name}})
    serve(kube, name, "kiln", "kiln-system")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _engine(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The one engine of an EngineBuild once it is in a final state (Ready, Cached, Failed)."""
    status = get(kube, namespace, EB_PLURAL, name).get("status") or {}
    engines = status.get("engines") or []
    done = engines and engines[0].get("state") in ("Ready", "Cached", "Failed")
    return dict(engines[0]) if done else None


def _built_in(operator: Operator, s3_endpoint: str, key: str) -> provenance.Verified:
    """The provenance of engine ``key`` as the operator signed it."""
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    owner = provenance.public_keys(signing.public_pem(Path(operator.env["KILN_SIGNING_KEY_FILE"])))
    return provenance.verify(key, store.read_manifest_bytes(key), store.read_envelope(key), owner,
                             BUILDS)


def _victim_builds_its_own(kube: Cluster, victim: str, weights: str, operator: Operator,
                           s3_endpoint: str) -> None:
    """The victim's EngineBuild of the same weights is built by a Job of its own namespace:
    ``Ready`` (built here), never ``Cached`` from the tenant's engine."""
    create(kube, victim, engine_build("llama", weights, targets=TARGET))
    found = eventually(lambda: _engine(kube, victim, "llama"), timeout=180)
    assert found["state"] == "Ready", found
    assert _built_in(operator, s3_endpoint, found["key"]).job.namespace == victim


def _secret(kube: Cluster, namespace: str, name: str, **data: str) -> None:
    client.CoreV1Api(kube.api_client).create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "stringData": data})


def _job(kube: Cluster, namespace: str, name: str) -> Any:
    try:
        return client.BatchV1Api(kube.api_client).read_namespaced_job(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def _complete(job: Any) -> bool:
    """Whether the Job is finished as a success (the Job controller ignores its pods then)."""
    return job is not None and any(c.type == "Complete" and c.status == "True"
                                   for c in job.status.conditions or [])


def _elsewhere(s3_endpoint: str) -> str:
    """Another endpoint answering the same listing (the tenant's server, as far as kiln can
    tell: moto's state is the process's, so this one holds the same objects)."""
    return s3_endpoint.replace("127.0.0.1", "localhost")


def test_a_tenants_swapped_endpoint_never_reaches_another_namespace(
        kube: Cluster, namespace: str, victim: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str) -> None:
    """The tenant's Secret names no endpoint when kiln renders the Job, and another one by the
    time the build pod starts: the builder reads from an endpoint no key names."""
    _secret(kube, namespace, "creds", AWS_ACCESS_KEY_ID="tenant", AWS_SECRET_ACCESS_KEY="tenant")
    builders.pause()
    try:
        create(kube, namespace, engine_build("llama", weights, targets=TARGET,
                                             model={"credentialsSecret": "creds"}))
        eventually(lambda: client.BatchV1Api(kube.api_client).list_namespaced_job(
            namespace).items or None, timeout=60)
        client.CoreV1Api(kube.api_client).patch_namespaced_secret("creds", namespace, {
            "stringData": {"AWS_ENDPOINT_URL": _elsewhere(s3_endpoint)}})
    finally:
        builders.resume()
    tenant = eventually(lambda: _engine(kube, namespace, "llama"), timeout=180)

    _victim_builds_its_own(kube, victim, weights, operator, s3_endpoint)
    # The builder refused the endpoint its environment named: not the task's.
    assert tenant["state"] == "Failed" and "endpoint" in tenant.get("message", ""), tenant


def test_a_tenants_job_of_kilns_name_never_reaches_another_namespace(
        kube: Cluster, namespace: str, victim: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str) -> None:
    """The tenant creates, before its EngineBuild, the Job kiln renders for the key with kiln's
    name and labels, but reading a copy of the weights in a bucket of its own (the same
    listing: the same weights identity; any other bytes with colliding ETags would do). It
    runs the real builder and succeeds."""
    _secret(kube, namespace, "creds", AWS_ACCESS_KEY_ID="tenant", AWS_SECRET_ACCESS_KEY="tenant")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    copy = f"tenant-{os.urandom(3).hex()}"
    s3.create_bucket(Bucket=copy)
    prefix = weights.removeprefix(f"s3://{MODELS}/")
    for item in s3.list_objects_v2(Bucket=MODELS, Prefix=prefix)["Contents"]:
        s3.copy_object(Bucket=copy, Key=item["Key"],
                       CopySource={"Bucket": MODELS, "Key": item["Key"]})
    body = engine_build("llama", weights, targets=TARGET, model={"credentialsSecret": "creds"})
    batch = client.BatchV1Api(kube.api_client)
    builders.pause()
    try:  # kiln's render of the Job, from a scratch EngineBuild of the same spec
        create(kube, namespace, {**body, "metadata": {"name": "scratch"}})
        rendered = eventually(lambda: batch.list_namespaced_job(namespace).items or None,
                              timeout=60)[0]
        template = kube.api_client.sanitize_for_serialization(rendered)
        custom(kube).delete_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL,
                                                     "scratch")
        name = template["metadata"]["name"]
        eventually(lambda: _job(kube, namespace, name) is None or None, timeout=60)
    finally:
        builders.resume()
    spec = template["spec"]
    spec.pop("selector", None)
    labels = spec["template"]["metadata"]["labels"]
    for label in list(labels):
        if "controller-uid" in label or "job-name" in label:
            labels.pop(label)
    container = spec["template"]["spec"]["containers"][0]
    for entry in container["env"]:
        if entry["name"] == TASK:
            task = json.loads(entry["value"])
            task["source"]["uri"] = f"s3://{copy}/{prefix}"
            entry["value"] = json.dumps(task)
    meta = template["metadata"]
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "spec": spec,
        "metadata": {"name": meta["name"], "labels": meta["labels"],
                     "annotations": meta["annotations"]}})
    eventually(lambda: ((j := _job(kube, namespace, meta["name"])) is not None
                        and (j.status.succeeded or 0) >= 1) or None, timeout=120)
    create(kube, namespace, body)

    def settled() -> Any:  # the tenant's Job signed (before issue 24), or refused
        eb = get(kube, namespace, EB_PLURAL, "llama")
        reasons = [c.get("reason") for c in (eb.get("status") or {}).get("conditions") or []]
        return "ForeignJob" if "ForeignJob" in reasons else _engine(kube, namespace, "llama")

    said = eventually(settled, timeout=60)
    _victim_builds_its_own(kube, victim, weights, operator, s3_endpoint)
    assert said == "ForeignJob", said


def test_a_tenants_pod_passing_for_the_jobs_own_never_reaches_another_namespace(
        kube: Cluster, namespace: str, victim: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_endpoint: str) -> None:
    """Once the key's Job has succeeded (the operator down meanwhile), the tenant deletes its
    pod and creates one of its own: the Job's labels, a controller owner reference to it, the
    tracking finalizer and the Job's pod spec, plus a lifecycle hook (its code in the build
    container). That pod runs the builder again and reports the manifest it wrote."""
    core = client.CoreV1Api(kube.api_client)
    create(kube, namespace, engine_build("llama", weights, targets=TARGET))
    job = eventually(lambda: (client.BatchV1Api(kube.api_client).list_namespaced_job(
        namespace).items or [None])[0], timeout=60)
    operator.kill()
    try:
        eventually(lambda: _complete(_job(kube, namespace, job.metadata.name)), timeout=180)
        (pod,) = core.list_namespaced_pod(namespace, label_selector=(
            f"batch.kubernetes.io/controller-uid={job.metadata.uid}")).items
        body = kube.api_client.sanitize_for_serialization(pod)
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        eventually(lambda: not core.list_namespaced_pod(namespace).items or None, timeout=60)
        spec = body["spec"]
        spec["containers"][0]["lifecycle"] = {"postStart": {"exec": {
            "command": ["sh", "-c", "echo the tenant's code runs here"]}}}
        meta = body["metadata"]
        forged = core.create_namespaced_pod(namespace, {
            "metadata": {"name": "forged", "labels": meta["labels"],
                         "ownerReferences": meta["ownerReferences"],
                         "finalizers": ["batch.kubernetes.io/job-tracking"]},
            "spec": spec})

        def done() -> Any:
            status = core.read_namespaced_pod(forged.metadata.name, namespace).status
            return status.phase if status.phase in ("Succeeded", "Failed") else None

        assert eventually(done, timeout=180) == "Succeeded"
        said = core.read_namespaced_pod(forged.metadata.name, namespace).status
        report = json.loads(said.container_statuses[0].state.terminated.message)
        assert report.get("manifestSha256"), report  # it wrote a manifest of its own
    finally:
        operator.start()
    ready = eventually(lambda: _engine(kube, namespace, "llama"), timeout=180)
    _victim_builds_its_own(kube, victim, weights, operator, s3_endpoint)
    # Not what the forged pod wrote: the tenant's own engine was built again by kiln's Job.
    assert _built_in(operator, s3_endpoint, ready["key"]).manifest.upload != report["upload"]


def test_the_platforms_build_namespace_serves_every_tenant_and_a_tenants_build_only_itself(
        kube: Cluster, namespace: str, victim: str, weights: str, operator: Operator,
        s3_endpoint: str) -> None:
    """Sharing is a trust decision: an engine the platform builds in its build namespace
    (``KILN_BUILD_NAMESPACE``, where no tenant has rights) is ``Cached`` for a tenant whose
    EngineBuild reads the same weights with the platform's credentials; a tenant reading them
    with a Secret of its own builds its own engine, in its own namespace, that nobody else
    gets."""
    platform = f"llama-{os.urandom(3).hex()}"
    create(kube, BUILDS, engine_build(platform, weights, targets=TARGET))
    built = eventually(lambda: _engine(kube, BUILDS, platform), timeout=180)
    assert built["state"] == "Ready", built
    assert _built_in(operator, s3_endpoint, built["key"]).job.namespace == BUILDS

    create(kube, victim, engine_build("llama", weights, targets=TARGET))
    cached = eventually(lambda: _engine(kube, victim, "llama"), timeout=60)
    assert (cached["state"], cached["key"]) == ("Cached", built["key"]), cached

    _secret(kube, namespace, "creds", AWS_ACCESS_KEY_ID="tenant", AWS_SECRET_ACCESS_KEY="tenant")
    create(kube, namespace, engine_build("llama", weights, targets=TARGET,
                                         model={"credentialsSecret": "creds"}))
    own = eventually(lambda: _engine(kube, namespace, "llama"), timeout=180)
    assert own["state"] == "Ready" and own["key"] != built["key"], own
    assert _built_in(operator, s3_endpoint, own["key"]).job.namespace == namespace
    custom(kube).delete_namespaced_custom_object(GROUP, VERSION, BUILDS, EB_PLURAL, platform)


def test_calibration_data_is_a_key_input_by_identity_and_namespace(
        kube: Cluster, namespace: str, victim: str, weights: str, s3_client: Any) -> None:
    """The calibration data is resolved to an identity (here, the listing of its prefix) and an
    origin: data replaced under the same URI, or the same URI read in another namespace, is
    another key, so a tenant's own calibration data never stands in for anyone's. (The builds
    stay pending: no node matches the target; the keys are the operator's.)"""
    prefix = f"{namespace}/calib/"
    s3_client.put_object(Bucket=MODELS, Key=prefix + "train.jsonl", Body=b'{"text": "a"}\n')
    spec = {"targets": UNSCHEDULABLE, "build": {
        "backend": "tensorrt", "quantization": {
            "algo": "fp8", "kvCache": "fp8",
            "calibration": {"dataset": f"s3://{MODELS}/{prefix}", "samples": 1}}}}
    create(kube, namespace, engine_build("first", weights, **spec))
    first = eventually(lambda: next(iter(keys(kube, namespace, "first").values()), None),
                       timeout=60)
    s3_client.put_object(Bucket=MODELS, Key=prefix + "train.jsonl", Body=b'{"text": "b"}\n')
    create(kube, namespace, engine_build("second", weights, **spec))
    second = eventually(lambda: next(iter(keys(kube, namespace, "second").values()), None),
                        timeout=60)
    create(kube, victim, engine_build("first", weights, **spec))
    elsewhere = eventually(lambda: next(iter(keys(kube, victim, "first").values()), None),
                           timeout=60)
    assert len({first, second, elsewhere}) == 3, (first, second, elsewhere)
