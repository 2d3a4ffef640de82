"""Ahead-of-time artifact sets end to end: a ``backend: pytorch`` build warms the test bed's
stand-in runtime up in its Job (kiln.contract.warmup) and keeps what it tuned as files of the
engine; serving pods' ``place-artifacts`` init container places them for the server only when
the node's GPU and driver and the image's versions are the ones the set was made with. A node
whose driver differs serves without them and says ``ArtifactsStale``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from field.conftest import ENGINES
from field.support import (
    create,
    deployments,
    engine_build,
    engine_deployment,
    get,
    is_ready,
    keys,
    patch,
    relabel,
    serving_pods,
)
from kiln import EB_PLURAL, ED_PLURAL
from kiln.contract.warmup import PLACED_DIR, REPORT
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.gpu import DRIVER_LABEL
from kiln.dev.testbed.warmup_runtime import CACHE_ENV, TUNED
from kiln.domain.labels import KEY_ANNOTATION
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
TARGET = [{"gpu": "H100-SXM"}]


def product(kube: Cluster, namespace: str) -> dict[str, Any] | None:
    """The H100 product of a ready ``chat``, once its pods reported on the artifact set."""
    ed = get(kube, namespace, ED_PLURAL, "chat")
    found = [p for p in (ed.get("status") or {}).get("products", [])
             if p["gpuProduct"] == nodes.H100.product]
    return found[0] if is_ready(ed) and found and found[0].get("artifacts") else None


def settled(kube: Cluster, namespace: str, check: Any, timeout: float = 300) -> Any:
    """``eventually``, failing with what the EngineBuild and EngineDeployment said."""
    try:
        return eventually(check, timeout=timeout)
    except AssertionError as error:
        said = {n: {k: get(kube, namespace, p, n).get(k) for k in ("spec", "status")}
                for p, n in ((EB_PLURAL, "llama"), (ED_PLURAL, "chat"))}
        pods = [(p.metadata.name, p.metadata.annotations,
                 [(c.name, c.state.terminated.message if c.state.terminated else c.state)
                  for c in p.status.init_container_statuses or []])
                for p in serving_pods(kube, namespace, "chat")]
        pods.append([(d.metadata.name, d.metadata.generation, d.status.observed_generation,
                      d.spec.template.metadata.annotations)
                     for d in deployments(kube, namespace, "chat").values()])
        raise AssertionError(f"{error}; status {json.dumps(said, default=str)}; "
                             f"pods {pods}") from None


def roll(kube: Cluster, namespace: str) -> None:
    """New serving pods (as a node drain or a restart makes them)."""
    for pod in serving_pods(kube, namespace, "chat"):
        kube.kubectl("delete", "pod", pod.metadata.name, "-n", namespace, "--wait=false")


def test_a_pytorch_engine_carries_its_artifact_set_and_serving_pods_load_only_a_valid_one(
        kube: Cluster, namespace: str, weights: str, s3_client: Any) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=TARGET),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    placed = settled(kube, namespace, lambda: product(kube, namespace))

    # the build Job warmed the runtime up twice and kept the set, signed with the engine
    (engine,) = get(kube, namespace, EB_PLURAL, "llama")["status"]["engines"]
    startup = engine["startup"]
    assert startup["runtime"] == "kiln-standin"
    assert startup["coldSeconds"] >= 0 and startup["warmSeconds"] >= 0
    assert startup["artifactBytes"] > 0
    manifest = json.loads(s3_client.get_object(
        Bucket=ENGINES, Key=f"engines/{engine['key']}/manifest.json")["Body"].read())
    paths = {f["path"] for f in manifest["files"]}
    assert {REPORT, f"artifacts/cache/standin/{TUNED}"} <= paths
    report = manifest["artifacts"]
    assert report["gpuName"] == nodes.H100.product.replace("-", " ")
    assert report["computeCapability"] == "9.0" and report["driverVersion"]
    assert report["versions"] == {"kiln": "0.1.0", "cuda": "none"}  # as the runtime reads them

    # serving pods placed it and point the server at it
    assert placed["artifacts"] == "Placed", placed
    (pod,) = serving_pods(kube, namespace, "chat")
    assert [c.name for c in pod.spec.init_containers] == ["fetch-engine", "place-artifacts"]
    server = pod.spec.containers[0]
    env = {e.name: e.value for e in server.env or []}
    assert env[CACHE_ENV] == f"{PLACED_DIR}/standin"
    assert PLACED_DIR in {m.mount_path for m in server.volume_mounts}
    ed = get(kube, namespace, ED_PLURAL, "chat")
    stale = next(c for c in ed["status"]["conditions"] if c["type"] == "ArtifactsStale")
    assert stale["status"] == "False"
    assert "H100-SXM" in ed["status"]["startup"] and "Placed" in ed["status"]["startup"]

    # a driver upgrade on the H100 nodes: the set was made for the old driver
    h100 = nodes.H100.node_names()
    relabel(kube, h100, DRIVER_LABEL, "999.99.99")
    try:
        roll(kube, namespace)

        def stale_now() -> dict[str, Any] | None:
            found = product(kube, namespace)
            return found if found and found["artifacts"] == "Stale" else None

        said = settled(kube, namespace, stale_now)
        assert "driver" in said["artifactsMessage"] and "999.99.99" in said["artifactsMessage"]
        ed = get(kube, namespace, ED_PLURAL, "chat")
        stale = next(c for c in ed["status"]["conditions"] if c["type"] == "ArtifactsStale")
        assert (stale["status"], stale["reason"]) == ("True", "ArtifactsStale")
        assert is_ready(ed), "the pods serve without the set"
        assert said["readyReplicas"] == 1
    finally:
        relabel(kube, h100, DRIVER_LABEL, None)


def test_a_kernel_shaping_option_is_another_key_a_serving_only_option_is_not(
        kube: Cluster, namespace: str, weights: str) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=TARGET),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    settled(kube, namespace, lambda: product(kube, namespace))
    before = keys(kube, namespace, "llama")

    # a serving-only option: the same engine and set; the new pods still place it
    patch(kube, namespace, ED_PLURAL, "chat",
          {"spec": {"server": {"runtime": {"freeGpuMemoryFraction": 0.8}}}})

    def rolled() -> dict[str, Any] | None:
        pods = serving_pods(kube, namespace, "chat")
        found = product(kube, namespace)
        ed = get(kube, namespace, ED_PLURAL, "chat")
        return found if (is_ready(ed) and found and len(pods) == 1
                         and found["artifacts"] == "Placed") else None

    settled(kube, namespace, rolled)
    assert keys(kube, namespace, "llama") == before

    # the same option in the EngineDeployment as a kernel-shaping one differs from the build's:
    # the set is not placed (it was tuned for the build's)
    patch(kube, namespace, ED_PLURAL, "chat",
          {"spec": {"server": {"runtime": {"maxNumTokens": 4096}}}})
    mismatch = settled(kube, namespace, lambda: (p if (p := product(kube, namespace))
                        and p["artifacts"] == "Mismatch" else None))
    assert "maxNumTokens 4096" in mismatch["artifactsMessage"]
    assert keys(kube, namespace, "llama") == before

    # in the EngineBuild it is a key input: another engine, and its own set
    patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"build": {"maxNumTokens": 4096}}})
    after = eventually(lambda: (k if (k := keys(kube, namespace, "llama")) != before
                                and all(k.values()) else None), timeout=60)
    assert after["H100-SXM"] != before["H100-SXM"]
    placed = settled(kube, namespace, lambda: (p if (p := product(kube, namespace))
                                               and p.get("engineKey") == after["H100-SXM"]
                                               and p["artifacts"] == "Placed" else None))
    assert placed["engineKey"] == after["H100-SXM"]
    (pod,) = serving_pods(kube, namespace, "chat")
    assert pod.metadata.annotations[KEY_ANNOTATION] == after["H100-SXM"]
