"""A rollout whose new pods fail says so: an engine with one flipped byte in the store makes
the new pods' init container (the real ``kiln fetch-engine``, run locally) fail with
IntegrityError; the EngineDeployment says so naming the file, the old pods keep serving, and
Ready is never True for the damaged engine (kiln then sets it aside and builds it again:
``test_store_heals``)."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from chart.argocd import health
from e2e.support import Operator
from field.conftest import ENGINES
from field.support import (
    conditions,
    create,
    deployments,
    engine_build,
    engine_deployment,
    get,
    is_ready,
    keys,
    patch,
    serving_pods,
)
from kiln import EB_PLURAL, ED_PLURAL
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
TARGET = [{"gpu": "H100-SXM"}]


def flip_a_byte(s3: Any, key: str) -> str:
    """Flip one byte of the engine's largest file in the store; its path."""
    listed = s3.list_objects_v2(Bucket=ENGINES, Prefix=f"engines/{key}/")["Contents"]
    files = [o for o in listed if not o["Key"].endswith("manifest.json")]
    victim = max(files, key=lambda o: o["Size"])["Key"]
    data = bytearray(s3.get_object(Bucket=ENGINES, Key=victim)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=ENGINES, Key=victim, Body=bytes(data))
    return victim.rsplit("/", 1)[1]


def test_a_corrupt_engine_stalls_the_rollout_and_the_old_pods_keep_serving(
        kube: Cluster, namespace: str, weights: str, s3_client: Any,
        operator: Operator) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=TARGET),
           engine_build("next", weights, targets=TARGET, build={"maxBatchSize": 4}),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None, timeout=180)
    old = next(iter(keys(kube, namespace, "llama").values()))
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "next")) or None, timeout=120)
    bad = next(iter(keys(kube, namespace, "next").values()))
    assert bad != old
    upload = json.loads(s3_client.get_object(Bucket=ENGINES, Key=f"engines/{bad}/manifest.json")[
        "Body"].read())["upload"]
    damaged = flip_a_byte(s3_client, bad)

    ready_for_bad: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            ed = get(kube, namespace, ED_PLURAL, "chat")
            products = (ed.get("status") or {}).get("products", [])
            served = [d.spec.template.metadata.annotations.get("kiln.dev/engine-upload")
                      for d in deployments(kube, namespace, "chat").values()]
            if conditions(ed).get("Ready", ("",))[0] == "True" and any(
                    p.get("engineKey") == bad for p in products) and upload in served:
                ready_for_bad.append(ed)
            time.sleep(0.2)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    try:
        patch(kube, namespace, EB_PLURAL, "llama", {"spec": {"build": {"maxBatchSize": 4}}})
        ed = eventually(lambda: (o := get(kube, namespace, ED_PLURAL, "chat")) and (
            o if conditions(o).get("Ready", ("", ""))[1] == "IntegrityError" else None),
            timeout=60)
        message = next(c["message"] for c in ed["status"]["conditions"] if c["type"] == "Ready")
        assert damaged in message and "H100" in message and "pod chat-" in message, message
        assert health(ed)[0] in ("Degraded", "Progressing")  # Progressing once it rebuilds
        pods = serving_pods(kube, namespace, "chat")
        serving_old = [p for p in pods if (p.metadata.annotations or {}).get(
            "kiln.dev/engine-key") == old and p.status.phase == "Running"]
        assert serving_old, "the old pod keeps serving"
        operator.resynced(ED_PLURAL)  # and Ready stays False, passed over again
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert not ready_for_bad, "Ready was never True for the damaged engine"


def _read_only(rule: dict[str, Any]) -> list[dict[str, Any]]:
    """``rule`` with the writes of configmaps taken out (their watch stays)."""
    if "configmaps" not in rule.get("resources", []):
        return [rule]
    others = [r for r in rule["resources"] if r != "configmaps"]
    reads = [v for v in rule["verbs"] if v in ("get", "list", "watch")]
    return [*([{**rule, "resources": others}] if others else []),
            *([{**rule, "resources": ["configmaps"], "verbs": reads}] if reads else [])]


def _deny_configmap_writes(kube: Cluster) -> list[tuple[str, list[dict[str, Any]]]]:
    """Take the writes of configmaps out of every ClusterRole of the release that grants
    them; what was."""
    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    before = []
    for role in rbac.list_cluster_role(label_selector="app.kubernetes.io/instance=kiln").items:
        rules = [kube.api_client.sanitize_for_serialization(r) for r in role.rules or []]
        if any("configmaps" in r.get("resources", []) for r in rules):
            before.append((role.metadata.name, rules))
            rbac.patch_cluster_role(role.metadata.name, {"rules": [
                kept for r in rules for kept in _read_only(r)]})
    assert before, "no ClusterRole of the release grants configmaps"
    return before


def _attempt(ed: dict[str, Any]) -> int:
    ready = next(c for c in ed["status"]["conditions"] if c["type"] == "Ready")
    found = re.search(r"\(attempt (\d+), next in", ready["message"])
    assert found, ready["message"]
    return int(found.group(1))


def test_a_denied_write_says_retrying_with_attempts_and_heals_when_allowed_again(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    """The operator's rights to write ConfigMaps taken away (an RBAC change gone wrong): the
    EngineDeployment says ``Retrying AccessDenied`` with its attempt, not a silent log line
    nor a stale Ready; given back, it serves without an edit."""
    create(kube, namespace, engine_build("llama", weights, targets=TARGET))
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "llama")) or None,
               timeout=120)
    retries = operator.passes("EngineDeployment", "retry")
    before = _deny_configmap_writes(kube)
    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    try:
        create(kube, namespace, engine_deployment("chat", "llama"))

        def retrying() -> dict[str, Any] | None:
            ed = get(kube, namespace, ED_PLURAL, "chat")
            ready = next((c for c in (ed.get("status") or {}).get("conditions", [])
                          if c["type"] == "Ready"), {})
            message = str(ready.get("message") or "")
            return ed if message.startswith("Retrying AccessDenied") and "attempt" in message \
                else None
        ed = eventually(retrying, timeout=30)
        assert operator.passes("EngineDeployment", "retry") > retries, "counted on /metrics"
        assert conditions(ed)["Ready"][0] == "False"
        assert conditions(ed)["Reconciling"][0] == "True"
        assert health(ed)[0] == "Progressing"
        # It backs off: its own status write (the attempt's message) is no event to retry
        # at once (that was a loop of a pass every few ms, its attempt count past 1,000).
        first = _attempt(ed)
        time.sleep(8)
        later = _attempt(get(kube, namespace, ED_PLURAL, "chat"))
        assert later - first <= 4, (first, later)
    finally:
        for name, rules in before:
            rbac.patch_cluster_role(name, {"rules": rules})
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat")) or None, timeout=90)
