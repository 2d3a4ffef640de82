"""What the fault tests share: EngineBuilds to create, and what "right" looks like."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from e2e.support import get_eb, ready
from kiln import GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import KEY_ANNOTATION, KEY_LABEL
from kiln.engine_build.jobs import job_name
from waiting import eventually

TARGETS = ("H100-SXM", "A100-80GB", "L40S")
ENGINES = "fault-engines"
MODELS = "fault-models"


def engine_build(name: str, source: str, *, gpu: str = "H100-SXM",
                 max_batch_size: int = 8) -> dict[str, Any]:
    """A one-target PyTorch-backend build (a real kiln-builder run on the CPU); distinct
    ``max_batch_size`` values give distinct engine keys over the same weights."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
        "metadata": {"name": name},
        "spec": {"model": {"source": source}, "targets": [{"gpu": gpu}],
                 "build": {"backend": "pytorch", "dtype": "bfloat16",
                           "maxBatchSize": max_batch_size}},
    }


def create(kube: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(
        kube.api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginebuilds", body)
    return created


def build_jobs(kube: Cluster, namespace: str) -> list[Any]:
    return list(client.BatchV1Api(kube.api_client).list_namespaced_job(
        namespace, label_selector=KEY_LABEL).items)


def job_pods(kube: Cluster, namespace: str, job: str) -> list[Any]:
    return list(client.CoreV1Api(kube.api_client).list_namespaced_pod(
        namespace, label_selector=f"job-name={job}").items)


def all_ready(kube: Cluster, namespace: str, names: list[str]) -> list[str]:
    """Names not Ready yet (empty when all are)."""
    return [n for n in names if ready(kube, namespace, n) is None]


def _all_succeeded(kube: Cluster, namespace: str) -> list[Any]:
    jobs = build_jobs(kube, namespace)
    return jobs if all(j.status.succeeded for j in jobs) else []


def check_built_once_each(kube: Cluster, namespace: str, names: list[str],
                          s3_client: Any, bucket: str) -> dict[str, str]:
    """Every object Ready with a status that matches the one Job of its key; returns
    name -> key. Fails with what is wrong."""
    # Ready comes with the manifest; the Job is marked Complete a moment later.
    jobs = eventually(lambda: _all_succeeded(kube, namespace), timeout=60)
    per_key = collections.Counter(j.metadata.annotations[KEY_ANNOTATION] for j in jobs)
    duplicated = {k[:12]: n for k, n in per_key.items() if n != 1}
    assert not duplicated, f"more than one Job for a key: {duplicated}"
    by_key = {j.metadata.annotations[KEY_ANNOTATION]: j for j in jobs}
    keys = {}
    for name in names:
        eb = get_eb(kube, namespace, name)
        status = eb["status"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}, (
            name, status)
        assert status["phase"] == "Ready"
        assert status["observedGeneration"] == eb["metadata"]["generation"]
        (engine,) = status["engines"]
        key = engine["key"]
        assert engine["state"] == "Ready", (name, engine)  # built here, not "Cached"
        assert engine["job"] == job_name(key)
        assert engine["uri"] == f"s3://{bucket}/engines/{key}/"
        assert engine["sizeBytes"] > 0
        job = by_key.get(key)
        assert job is not None, f"{name}: no Job for its key {key[:12]}"
        assert job.status.succeeded == 1, (name, job.status)
        assert eb["metadata"]["uid"] in {r.uid for r in job.metadata.owner_references}
        s3_client.head_object(Bucket=bucket, Key=f"engines/{key}/manifest.json")
        keys[name] = key
    assert set(keys.values()) == set(by_key), "a Job nobody wants is left"
    return keys


class Switch:
    """What the store proxy refuses: nothing, until a test sets ``refuse``."""

    def __init__(self) -> None:
        self.refuse: Callable[[str, str], bool] = lambda method, path: False
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str) -> bool:
        return self.refuse(method, path)
