"""The store heals: an engine deleted from the store while it is served, or damaged there, is
found (the periodic verification, a serving pod's report), set aside when damaged (kept for
evidence, never served), built again under the same key and rolled out, with no hand; the
pods that serve it keep serving meanwhile, never fewer than ``replicas``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes import watch as kwatch

from field.conftest import ENGINES
from field.support import (
    create,
    engine_build,
    engine_deployment,
    get,
    is_ready,
    keys,
    patch,
    serving_pods,
)
from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.domain.labels import ED_LABEL
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator")
TARGET = [{"gpu": "H100-SXM"}]
REPLICAS = 2
HEAL_SECONDS = 240


def ready_pods(kube: Cluster, namespace: str) -> list[str]:
    """Names of the serving pods that are Ready (and not going)."""
    return [p.metadata.name for p in serving_pods(kube, namespace, "chat") if _ready(p)]


def _ready(pod: Any) -> bool:
    return bool(pod.metadata.deletion_timestamp is None and pod.status.phase == "Running"
                and any(c.type == "Ready" and c.status == "True"
                        for c in pod.status.conditions or []))


@dataclass
class Watch:
    """What the watches show once started, every change of it (no sampling: a dip between two
    polls would be missed): the fewest Ready serving pods, and each engine message of the
    EngineBuild's status."""

    kube: Cluster
    namespace: str
    fewest: int = 1 << 30
    messages: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        core = client.CoreV1Api(self.kube.api_client)
        custom = client.CustomObjectsApi(self.kube.api_client)
        threading.Thread(target=self._follow, daemon=True, args=(
            core.list_namespaced_pod, {"label_selector": f"{ED_LABEL}=chat"},
            self._pod)).start()
        threading.Thread(target=self._follow, daemon=True, args=(
            lambda namespace, **kw: custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, EB_PLURAL, **kw),
            {"field_selector": "metadata.name=llama"}, self._build)).start()

    def _follow(self, list_fn: Any, kwargs: dict[str, Any], seen: Any) -> None:
        """List, then watch from the listing's version (a list again if it expires): every
        change reaches ``seen`` once the whole first listing is in."""
        ready: set[str] = set()
        while not self.stop.is_set():
            listed = list_fn(self.namespace, **kwargs)
            items = listed["items"] if isinstance(listed, dict) else listed.items
            ready.clear()
            for item in items:
                seen({"type": "LISTED", "object": item}, ready)
            seen({"type": "SYNCED", "object": None}, ready)
            version = _version(listed)
            try:
                while not self.stop.is_set():
                    for event in kwatch.Watch().stream(list_fn, self.namespace,
                                                       timeout_seconds=5,
                                                       resource_version=version, **kwargs):
                        version = _version(event["object"]) or version
                        seen(event, ready)
            except client.ApiException:
                continue  # expired (410): list again

    def _pod(self, event: dict[str, Any], ready: set[str]) -> None:
        pod = event["object"]
        if pod is not None and event["type"] != "DELETED" and _ready(pod):
            ready.add(pod.metadata.name)
        elif pod is not None:
            ready.discard(pod.metadata.name)
        if event["type"] != "LISTED":  # counted once the whole listing is in
            self.fewest = min(self.fewest, len(ready))

    def _build(self, event: dict[str, Any], _: set[str]) -> None:
        status = (event["object"] or {}).get("status") or {}
        self.messages |= {e["message"] for e in status.get("engines", []) if e.get("message")}


def _version(obj: Any) -> str | None:
    """The resourceVersion of an object or a listing, dict or client model."""
    meta = obj.get("metadata") if isinstance(obj, dict) else obj.metadata
    found = meta.get("resourceVersion") if isinstance(meta, dict) else (
        meta.resource_version if meta is not None else None)
    return str(found) if found else None


@pytest.fixture
def watch(kube: Cluster, namespace: str) -> Iterator[Watch]:
    seen = Watch(kube, namespace)
    yield seen
    seen.stop.set()


def serving(kube: Cluster, namespace: str, weights: str, s3: Any) -> tuple[str, str, list[str]]:
    """Once the EngineDeployment is Ready on ``REPLICAS`` pods: the key, the upload the store
    holds for it, and the pods."""
    create(kube, namespace, engine_build("llama", weights, targets=TARGET),
           engine_deployment("chat", "llama", gpu="H100-SXM", replicas=REPLICAS))
    eventually(lambda: is_ready(get(kube, namespace, ED_PLURAL, "chat"))
               and len(ready_pods(kube, namespace)) == REPLICAS, timeout=180)
    (key,) = keys(kube, namespace, "llama").values()
    return key, upload_of(s3, key), ready_pods(kube, namespace)


def upload_of(s3: Any, key: str) -> str:
    """The upload the store's manifest of ``key`` commits ("" when there is none)."""
    try:
        found = s3.get_object(Bucket=ENGINES, Key=f"engines/{key}/manifest.json")
    except s3.exceptions.NoSuchKey:
        return ""
    return str(json.loads(found["Body"].read())["upload"])


def objects(s3: Any, prefix: str) -> list[dict[str, Any]]:
    return list(s3.list_objects_v2(Bucket=ENGINES, Prefix=prefix).get("Contents", []))


def events(kube: Cluster, namespace: str, name: str) -> dict[str, str]:
    """reason -> message of the Events about EngineBuild ``name``."""
    items = client.CoreV1Api(kube.api_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason: e.message for e in items if e.involved_object.kind == "EngineBuild"}


def healed(kube: Cluster, namespace: str, s3: Any, key: str, before: str,
           pods: list[str]) -> bool:
    """The EngineBuild is Ready on ``key`` with a new upload, and the EngineDeployment Ready
    on ``REPLICAS`` pods none of which is one of ``pods`` (it rolled onto the rebuilt one)."""
    now = upload_of(s3, key)
    serving_now = ready_pods(kube, namespace)
    return bool(is_ready(get(kube, namespace, EB_PLURAL, "llama")) and now and now != before
                and keys(kube, namespace, "llama") == {"H100-SXM": key}
                and is_ready(get(kube, namespace, ED_PLURAL, "chat"))
                and len(serving_now) == REPLICAS and not set(serving_now) & set(pods))


def test_an_engine_deleted_from_the_store_while_served_is_rebuilt_and_rolled_out(
        kube: Cluster, namespace: str, weights: str, s3_client: Any,
        builders: LocalProcessRunner, watch: Watch) -> None:
    key, before, pods = serving(kube, namespace, weights, s3_client)
    watch.start()
    gone = objects(s3_client, f"engines/{key}/")
    s3_client.delete_objects(Bucket=ENGINES, Delete={"Objects": [
        {"Key": o["Key"]} for o in gone]})

    eventually(lambda: healed(kube, namespace, s3_client, key, before, pods),
               timeout=HEAL_SECONDS)
    assert watch.fewest >= REPLICAS, f"only {watch.fewest} serving pod(s) at one point"
    said = events(kube, namespace, "llama")
    assert "EngineMissing" in said and key[:12] in said["EngineMissing"], said
    assert any(m.startswith("EngineMissing: ") for m in watch.messages), watch.messages
    fetched = [f for f in builders.finished if f.namespace == namespace
               and f.name.startswith("chat-")]
    assert fetched and fetched[-1].exit_code == 0


def test_a_damaged_engine_a_serving_pod_reports_is_set_aside_rebuilt_and_rolled_out(
        kube: Cluster, namespace: str, weights: str, s3_client: Any,
        builders: LocalProcessRunner, watch: Watch) -> None:
    key, before, pods = serving(kube, namespace, weights, s3_client)
    watch.start()
    files = objects(s3_client, f"engines/{key}/{before}/")
    victim = max(files, key=lambda o: o["Size"])["Key"]
    data = bytearray(s3_client.get_object(Bucket=ENGINES, Key=victim)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3_client.put_object(Bucket=ENGINES, Key=victim, Body=bytes(data))
    manifest = s3_client.get_object(Bucket=ENGINES,
                                    Key=f"engines/{key}/manifest.json")["Body"].read()
    # A routine edit rolls new pods; theirs are the first fetches of the damaged engine.
    patch(kube, namespace, ED_PLURAL, "chat",
          {"spec": {"server": {"runtime": {"freeGpuMemoryFraction": 0.8}}}})

    eventually(lambda: healed(kube, namespace, s3_client, key, before, pods),
               timeout=HEAL_SECONDS)
    assert watch.fewest >= REPLICAS, f"only {watch.fewest} serving pod(s) at one point"
    refused = [f for f in builders.finished if f.namespace == namespace
               and f.name.startswith("chat-") and f.exit_code != 0]
    assert refused and "IntegrityError" in refused[0].message, "a new pod reported it"
    said = events(kube, namespace, "llama")
    assert "EngineDamaged" in said and victim.rsplit("/", 1)[1] in said["EngineDamaged"], said
    assert any(m.startswith("EngineDamaged: ") for m in watch.messages), watch.messages
    # Kept for evidence, out of engines/: the manifest, and the damaged bytes as they were.
    aside = f"damaged/{key}/{before}/"
    kept = {o["Key"][len(aside):] for o in objects(s3_client, aside)}
    assert "manifest.json" in kept and "finding.json" in kept, kept
    assert s3_client.get_object(Bucket=ENGINES, Key=aside + "manifest.json")[
        "Body"].read() == manifest
    rel = victim[len(f"engines/{key}/{before}/"):]
    assert s3_client.get_object(Bucket=ENGINES, Key=f"{aside}files/{rel}")[
        "Body"].read() == bytes(data)
    assert not objects(s3_client, f"engines/{key}/{before}/"), "nothing of it is served"
