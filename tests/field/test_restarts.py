"""The operator killed and restarted: what it must remember is read back from what it wrote.
A pin holds, an EngineDeployment that moved or went while it was away stops costing builds,
and a lifecycle with restarts at random points ends where one without them does."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chart.support import serve
from e2e.support import Operator
from field.conftest import ENGINES, MODELS
from field.support import (
    create,
    custom,
    deployments,
    engine_build,
    engine_deployment,
    get,
    is_ready,
    job_keys,
    keys,
    patch,
)
from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = pytest.mark.usefixtures("builders")


def restart(operator: Operator) -> None:
    operator.kill()
    operator.start()


def replace_weights(s3_client: Any, namespace: str) -> None:
    s3_client.put_object(Bucket=MODELS, Key=f"{namespace}/llama/tokenizer_config.json",
                         Body=b'{"moved": true}')


def test_a_pin_holds_across_a_restart_and_a_poll_rebuilds_once(
        kube: Cluster, namespace: str, weights: str, s3_client: Any,
        operator: Operator) -> None:
    create(kube, namespace,
           engine_build("pinned", weights, targets=[{"gpu": "H100-SXM"}],
                        rebuild={"onWeightChange": False}),
           engine_build("polled", weights, targets=[{"gpu": "H100-SXM"}],
                        rebuild={"onWeightChange": True, "pollInterval": "1m"}),
           engine_deployment("chat", "pinned", gpu="H100-SXM"))
    for name in ("pinned", "polled"):
        eventually(lambda name=name: is_ready(get(kube, namespace, EB_PLURAL, name)) or None,
                   timeout=120)
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None, timeout=60)
    pinned, polled = keys(kube, namespace, "pinned"), keys(kube, namespace, "polled")
    template = deployments(kube, namespace, "chat")[nodes.H100.product].metadata.generation
    built = job_keys(kube, namespace)

    replace_weights(s3_client, namespace)
    restart(operator)
    operator.resynced(EB_PLURAL)  # the new process has read both, weights changed
    assert keys(kube, namespace, "pinned") == pinned, "a restart changed a pinned key"
    # pollInterval (1m after the last read) re-reads the other one: one new key per target.
    new = eventually(lambda: keys(kube, namespace, "polled") != polled
                     and keys(kube, namespace, "polled"), timeout=90)
    assert len(new) == len(polled) and set(new.values()).isdisjoint(polled.values())
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "polled")) or None,
               timeout=120)
    assert keys(kube, namespace, "pinned") == pinned
    assert job_keys(kube, namespace) - built == set(new.values()), "no other build started"
    assert deployments(kube, namespace, "chat")[nodes.H100.product].metadata.generation == \
        template, "no rollout of the pinned engine"


def auto_targets(kube: Cluster, namespace: str, name: str) -> list[str]:
    return list((get(kube, namespace, EB_PLURAL, name).get("status") or {}).get(
        "autoTargets") or [])


def test_auto_targets_follow_what_engine_deployments_need_even_while_away(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    create(kube, namespace, engine_build("a", weights), engine_build("b", weights),
           engine_deployment("chat", "a", gpu="H100-SXM"))
    h100 = f"{nodes.H100.product}@9.0"
    eventually(lambda: auto_targets(kube, namespace, "a") == [h100] or None, timeout=30)
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "a")) or None, timeout=120)
    # The reference moves from A to B: A drops the target, B takes it.
    patch(kube, namespace, ED_PLURAL, "chat", {"spec": {"engineBuildRef": {"name": "b"}}})
    eventually(lambda: auto_targets(kube, namespace, "a") == [] or None, timeout=30)
    eventually(lambda: auto_targets(kube, namespace, "b") == [h100] or None, timeout=30)
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "b")) or None, timeout=120)
    built = job_keys(kube, namespace)
    # Deleted while the operator is down: B drops it once the operator is back.
    operator.kill()
    try:
        custom(kube).delete_namespaced_custom_object(GROUP, VERSION, namespace, ED_PLURAL,
                                                     "chat")
    finally:
        operator.start()
    eventually(lambda: auto_targets(kube, namespace, "b") == [] or None, timeout=30)
    operator.resynced(EB_PLURAL)
    assert job_keys(kube, namespace) <= built, "no Job for a product nobody serves"
    assert keys(kube, namespace, "a") == {} and keys(kube, namespace, "b") == {}


def lifecycle(kube: Cluster, namespace: str, sources: tuple[str, str], operator: Operator,
              kill: Any) -> dict[str, Any]:
    """EngineBuild + EngineDeployment (gpu auto), Ready; the weights changed (the spec moves
    to a new checkpoint, as a GitOps bump does), Ready again; ``kill()`` between the steps.
    Returns what the cluster ends with, once ``operator`` has passed over it again."""
    store = f"s3://{ENGINES}/{namespace}/"
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(job_keys(kube, namespace))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    create(kube, namespace, engine_build("llama", sources[0], output={"store": store}),
           engine_deployment("chat", "llama", gpu="auto"))
    kill()
    eventually(lambda: len(keys(kube, namespace, "llama")) == 3 or None, timeout=60)
    kill()
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None, timeout=180)
    first = keys(kube, namespace, "llama")
    patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"model": {"source": sources[1]}}})
    kill()
    eventually(lambda: set(keys(kube, namespace, "llama").values()).isdisjoint(
        first.values()) or None, timeout=120)
    kill()
    eventually(lambda: (is_ready(get(kube, namespace, ED_PLURAL, "chat"))
               and is_ready(get(kube, namespace, EB_PLURAL, "llama"))) or None, timeout=180)
    operator.resynced(EB_PLURAL, ED_PLURAL)
    stop.set()
    sampler.join(timeout=10)
    ed = get(kube, namespace, ED_PLURAL, "chat")
    eb = get(kube, namespace, EB_PLURAL, "llama")
    # Keys bind the namespace a build runs in (docs/security.md): each run's keys are its own,
    # so they are compared by the target each one is for.
    final = keys(kube, namespace, "llama")
    named = {key: f"key of {target}" for target, key in final.items()}
    return {
        "keys": sorted(final),
        "jobs": sorted(named.get(k, "an earlier key") for k in job_keys(kube, namespace)),
        "jobs ever": len(seen),
        "deployments": sorted(d.metadata.name for d in deployments(kube, namespace,
                                                                   "chat").values()),
        "served": {p["gpuProduct"]: (named.get(p.get("engineKey") or "", "another key"),
                                     p["mode"]) for p in ed["status"]["products"]},
        "eb": {k: eb["status"].get(k) for k in ("phase", "autoTargets", "gpus")},
        "engines": sorted((e["target"], e["state"]) for e in eb["status"]["engines"]),
        "conditions": sorted((c["type"], c["status"], c["reason"])
                             for c in eb["status"]["conditions"] + ed["status"]["conditions"]),
    }


def test_a_lifecycle_with_restarts_ends_where_one_without_them_does(
        kube: Cluster, s3_client: Any, operator: Operator, tmp_path: Path) -> None:
    """The same two sources in two namespaces (the keys differ: they bind the namespace a
    build runs in; they are compared by target), each with a store of its own: one lifecycle
    undisturbed, one with the operator SIGKILLed at random points between its steps."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client)
    rng = random.Random()
    seeds = (rng.randrange(1 << 30), rng.randrange(1 << 30))
    results = []
    sources = tuple(checkpoints.upload(
        s3_client, checkpoints.write(tmp_path / str(i), seed=seed), MODELS,
        f"field-lifecycle-{seeds[0] % 10_000}/llama-{i}/") for i, seed in enumerate(seeds))
    for run in ("calm", "killed"):
        namespace = f"field-lifecycle-{run}-{seeds[0] % 10_000}"
        core.create_namespace({"metadata": {"name": namespace}})
        serve(kube, namespace, "kiln", "kiln-system")

        def kill(run: str = run) -> None:
            if run == "killed" and rng.random() < 0.75:
                time.sleep(rng.uniform(0, 1.5))
                restart(operator)

        try:
            results.append(lifecycle(kube, namespace, (sources[0], sources[1]), operator,
                                     kill))
        finally:
            core.delete_namespace(namespace)
    calm, killed = results
    assert len(calm["keys"]) == 3 and calm["jobs ever"] == 6, "one Job per key"
    assert killed == calm
