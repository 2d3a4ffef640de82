"""The EngineBuild controller end to end: the operator as a process, the real scheduler,
Job controller and builder (run locally in place of a GPU node), moto's S3."""

from __future__ import annotations

import copy
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from chart import argocd
from e2e.support import ROOT, Operator, get_eb, ready
from kiln import GROUP, VERSION
from kiln.dev.testbed import checkpoint, nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.domain.labels import KEY_LABEL
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")


def example(name: str, source: str, **changes: Any) -> dict[str, Any]:
    """An example manifest, pointed at the test's weights; the engine path needs a GPU, so
    builds here use the PyTorch backend (a real kiln-builder run on the CPU)."""
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body = copy.deepcopy(body)
    body["spec"]["model"] = {"source": source}
    body["spec"]["build"] = {"backend": "pytorch", "dtype": "bfloat16",
                             "parallelism": body["spec"]["build"].get("parallelism", {})}
    body["spec"].pop("output", None)
    body["spec"].update(changes)
    return body


def create(kube: Cluster, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube.api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginebuilds", body)


def build_jobs(kube: Cluster, namespace: str) -> list[Any]:
    return client.BatchV1Api(kube.api_client).list_namespaced_job(
        namespace, label_selector=KEY_LABEL).items


def stalled_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Stalled"), {})


def stalled(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The EngineBuild's status, once its ``Stalled`` condition is True."""
    status = get_eb(kube, namespace, name).get("status") or {}
    return status if stalled_condition(status).get("status") == "True" else None


def argo_health(kube: Cluster, namespace: str, name: str) -> str:
    """What Argo CD's health check (the chart's Lua, in a real Lua runtime) makes of the
    object the operator produced."""
    return argocd.health(get_eb(kube, namespace, name))[0]


def test_two_targets_build_on_their_pools_and_become_ready(
        kube: Cluster, namespace: str, weights: str, s3_client: Any,
        builders: LocalProcessRunner) -> None:
    create(kube, namespace, example("eb-tp2-a100-h100.yaml", weights))
    name = "llama-3-1-8b-tp2"
    status = eventually(lambda: ready(kube, namespace, name), timeout=120)
    engines = {e["target"]: e for e in status["engines"]}
    assert set(engines) == {"A100-80GB", "H100-SXM"}
    assert argo_health(kube, namespace, name) == "Healthy"
    assert {e["state"] for e in engines.values()} == {"Ready"}
    assert engines["A100-80GB"]["key"] != engines["H100-SXM"]["key"]
    # Each build pod was bound by the real scheduler to a node of its own pool.
    core = client.CoreV1Api(kube.api_client)
    pools = {"A100-80GB": nodes.A100, "H100-SXM": nodes.H100}
    jobs = build_jobs(kube, namespace)
    assert len(jobs) == 2
    for job in jobs:
        target = job.metadata.annotations["kiln.dev/target"]
        pods = core.list_namespaced_pod(namespace,
                                        label_selector=f"job-name={job.metadata.name}").items
        assert pods
        assert all(p.spec.node_name in pools[target].node_names() for p in pods)
    # The engines are in the store, committed by their manifest.
    for entry in engines.values():
        key = entry["key"]
        s3_client.head_object(Bucket="engines", Key=f"engines/{key}/manifest.json")
        assert entry["uri"] == f"s3://engines/engines/{key}/"
        assert entry["sizeBytes"] > 0
    # kiln writes status only: no finalizer (nothing blocks a delete while it is away), no
    # annotations of its own in the user's object.
    meta = get_eb(kube, namespace, name)["metadata"]
    assert not meta.get("finalizers"), meta
    assert not [a for a in meta.get("annotations") or {} if a.startswith("kiln.dev/")], meta


def test_same_intent_is_cached_and_twenty_at_once_share_one_job_per_key(
        kube: Cluster, namespace: str, weights: str) -> None:
    first = example("eb-h100-fp8.yaml", weights)
    first["metadata"]["name"] = "first"
    create(kube, namespace, first)
    eventually(lambda: ready(kube, namespace, "first"), timeout=120)
    jobs_before = {j.metadata.name for j in build_jobs(kube, namespace)}

    second = copy.deepcopy(first)
    second["metadata"]["name"] = "second"
    create(kube, namespace, second)
    status = eventually(lambda: ready(kube, namespace, "second"), timeout=60)
    assert [e["state"] for e in status["engines"]] == ["Cached"]
    assert {j.metadata.name for j in build_jobs(kube, namespace)} == jobs_before

    # Twenty identical EngineBuilds of a new intent, created at once: one Job per key.
    burst = copy.deepcopy(first)
    burst["spec"]["build"]["maxBatchSize"] = 64
    threads = []
    for i in range(20):
        body = copy.deepcopy(burst)
        body["metadata"]["name"] = f"burst-{i}"
        threads.append(threading.Thread(target=create, args=(kube, namespace, body)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(20):
        eventually(lambda i=i: ready(kube, namespace, f"burst-{i}"), timeout=180)
    keys = {get_eb(kube, namespace, f"burst-{i}")["status"]["engines"][0]["key"]
            for i in range(20)}
    assert len(keys) == 1
    jobs = [j for j in build_jobs(kube, namespace) if j.metadata.name not in jobs_before]
    assert len(jobs) == 1
    assert jobs[0].metadata.annotations["kiln.dev/engine-key"] == keys.pop()


def test_operator_killed_mid_build_neither_duplicates_nor_loses_it(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner) -> None:
    body = example("eb-h100-fp8.yaml", weights)
    body["metadata"]["name"] = "crash"
    builders.pause()
    try:
        create(kube, namespace, body)
        eventually(lambda: build_jobs(kube, namespace), timeout=60)
        assert eventually(lambda: argo_health(kube, namespace, "crash") == "Progressing")
        operator.kill()
        operator.start()
    finally:
        builders.resume()
    status = eventually(lambda: ready(kube, namespace, "crash"), timeout=120)
    assert [e["state"] for e in status["engines"]] == ["Ready"]
    assert len(build_jobs(kube, namespace)) == 1


def test_new_weights_give_a_new_key_and_a_rebuild(
        kube: Cluster, namespace: str, weights: str, s3_client: Any) -> None:
    body = example("eb-h100-fp8.yaml", weights,
                   rebuild={"onWeightChange": True, "pollInterval": "1m"})
    body["metadata"]["name"] = "watched"
    create(kube, namespace, body)
    before = eventually(lambda: ready(kube, namespace, "watched"), timeout=120)
    old_key = before["engines"][0]["key"]

    bucket, _, prefix = weights.removeprefix("s3://").partition("/")
    config = s3_client.get_object(Bucket=bucket, Key=f"{prefix}config.json")["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}config.json", Body=config + b"\n")

    def rebuilt() -> dict[str, Any] | None:
        status = ready(kube, namespace, "watched")
        return status if status and status["engines"][0]["key"] != old_key else None

    after = eventually(rebuilt, timeout=150)
    assert after["engines"][0]["state"] == "Ready"
    assert after["weights"]["identity"] != before["weights"]["identity"]
    new_key = after["engines"][0]["key"]
    # The new key had its own Job; the old key's Job, wanted by nobody now, is gone.
    keys = {j.metadata.annotations["kiln.dev/engine-key"] for j in build_jobs(kube, namespace)}
    assert keys == {new_key}


def test_bad_input_stalls_with_the_builders_reason_and_is_not_retried(
        kube: Cluster, namespace: str, weights: str, s3_client: Any) -> None:
    bucket, _, prefix = weights.removeprefix("s3://").partition("/")
    broken = f"{prefix.rstrip('/')}-noconfig/"
    for obj in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        if not obj["Key"].endswith("config.json") or "tokenizer" in obj["Key"]:
            s3_client.copy_object(Bucket=bucket, Key=broken + obj["Key"][len(prefix):],
                                  CopySource={"Bucket": bucket, "Key": obj["Key"]})
    body = example("eb-h100-fp8.yaml", f"s3://{bucket}/{broken}")
    body["metadata"]["name"] = "broken"
    create(kube, namespace, body)
    status = eventually(lambda: stalled(kube, namespace, "broken"), timeout=120)
    assert status["phase"] == "Failed"
    assert argo_health(kube, namespace, "broken") == "Degraded"
    message = status["engines"][0]["message"]
    assert "config.json" in message
    (job,) = build_jobs(kube, namespace)
    assert job.status.failed == 1, "bad input is not retried"
    events = client.CoreV1Api(kube.api_client).list_namespaced_event(
        namespace, field_selector="involvedObject.name=broken").items
    assert any(e.reason == "BuildFailed" and "config.json" in e.message for e in events)


def test_a_transient_failure_is_retried(
        kube: Cluster, namespace: str, weights: str, builders: LocalProcessRunner) -> None:
    body = example("eb-h100-fp8.yaml", weights)
    body["metadata"]["name"] = "flaky"
    builders.kill_next(1)  # the first build pod dies as if its node went away (exit 137)
    create(kube, namespace, body)
    status = eventually(lambda: ready(kube, namespace, "flaky"), timeout=120)
    assert [e["state"] for e in status["engines"]] == ["Ready"]
    # The engine is committed as soon as the builder uploads it; the Job controller
    # records the second pod's success a moment later.
    (job,) = eventually(lambda: [j for j in build_jobs(kube, namespace)
                                 if j.status.succeeded == 1], timeout=30)
    assert job.status.failed == 1


def test_metrics_show_builds_and_cache_moving(operator: Operator, kube: Cluster,
                                              namespace: str, weights: str) -> None:
    url = f"http://127.0.0.1:{operator.env['KILN_METRICS_PORT']}/metrics"

    def figure(name: str) -> float:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    before = {n: figure(n) for n in ("kiln_builds_started_total", "kiln_builds_succeeded_total",
                                     "kiln_engine_cache_hits_total",
                                     "kiln_engine_cache_misses_total")}
    body = example("eb-h100-fp8.yaml", weights)
    body["metadata"]["name"] = "measured"
    create(kube, namespace, body)
    eventually(lambda: ready(kube, namespace, "measured"), timeout=120)
    again = copy.deepcopy(body)
    again["metadata"]["name"] = "measured-again"
    create(kube, namespace, again)
    eventually(lambda: ready(kube, namespace, "measured-again"), timeout=60)
    after = eventually(lambda: {n: figure(n) for n in before}
                       if figure("kiln_engine_cache_hits_total")
                       > before["kiln_engine_cache_hits_total"] else None, timeout=30)
    assert after["kiln_builds_started_total"] == before["kiln_builds_started_total"] + 1
    assert after["kiln_builds_succeeded_total"] == before["kiln_builds_succeeded_total"] + 1
    assert after["kiln_engine_cache_misses_total"] == before["kiln_engine_cache_misses_total"] + 1
    assert after["kiln_engine_cache_hits_total"] == before["kiln_engine_cache_hits_total"] + 1


def test_weights_that_cannot_be_read_stall_before_any_job(
        kube: Cluster, namespace: str, models_bucket: str, s3_client: Any,
        tmp_path: Path) -> None:
    body = example("eb-h100-fp8.yaml", f"s3://{models_bucket}/{namespace}/nothing-here/")
    body["metadata"]["name"] = "nowhere"
    create(kube, namespace, body)
    status = eventually(lambda: stalled(kube, namespace, "nowhere"), timeout=60)
    condition = stalled_condition(status)
    assert condition["reason"] == "NotFound"
    assert "no weights under" in condition["message"]
    assert status["phase"] == "Failed"
    assert build_jobs(kube, namespace) == []
    assert argo_health(kube, namespace, "nowhere") == "Degraded"
    # The weights arrive (a GitOps sync can apply the manifest first): the sweep reads them
    # and the build goes on, without an edit.
    checkpoint.upload(s3_client, checkpoint.write(tmp_path / "ckpt", seed=11), models_bucket,
                      f"{namespace}/nothing-here/")
    status = eventually(lambda: ready(kube, namespace, "nowhere"), timeout=120)
    assert [e["state"] for e in status["engines"]] == ["Ready"]
    assert argo_health(kube, namespace, "nowhere") == "Healthy"
