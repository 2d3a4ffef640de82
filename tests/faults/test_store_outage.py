"""The engine store goes down part way through an upload: the build is retried, and no part
of the engine is visible to readers (no manifest, no engine) or named Ready before it is
whole."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from builder.faults import is_object
from e2e.support import get_eb
from faults.support import (
    ENGINES,
    Switch,
    build_jobs,
    check_built_once_each,
    create,
    engine_build,
    ready,
)
from kiln.dev.testbed.cluster import Cluster
from kiln.store import open_store
from waiting import eventually


class DownAfterFirstPart:
    """Lets the first engine file of an upload through, then the whole endpoint is down
    (every request refused) until ``up`` is called."""

    def __init__(self) -> None:
        self.parts = 0
        self.down = threading.Event()

    def __call__(self, method: str, path: str) -> bool:
        if self.down.is_set():
            return True
        if (method in ("PUT", "POST") and is_object(path)
                and path.lstrip("/").startswith(f"{ENGINES}/engines/")):
            self.parts += 1
            if self.parts > 1:
                self.down.set()
                return True
        return False

    def up(self) -> None:
        self.parts = -(1 << 30)  # never down again
        self.down.clear()


@pytest.mark.timeout(240)
def test_store_down_during_upload_is_retried_and_never_half_visible(
        kube: Cluster, namespace: str, weights: str, operator: Any, builders: Any,
        store_switch: Switch, s3_client: Any, s3_endpoint: str) -> None:
    fault = DownAfterFirstPart()
    store_switch.refuse = fault
    store = open_store(f"s3://{ENGINES}/", endpoint_url=s3_endpoint)
    seen: list[str] = []
    violations: list[str] = []
    stop = threading.Event()
    key_box: list[str] = []

    def watch_readers() -> None:
        """What a reader sees, every 100 ms, straight from the store (not via the proxy)."""
        while not stop.is_set():
            try:
                look()
            except Exception as error:  # a reader's failure is a finding, not a crash
                violations.append(f"reader failed: {error!r}")
            time.sleep(0.1)

    def look() -> None:
        status = (get_eb(kube, namespace, "outage").get("status") or {})
        engines = status.get("engines") or []
        if not engines or not engines[0].get("key"):
            return
        key = engines[0]["key"]
        key_box[:] = [key]
        state = engines[0].get("state")
        listed = s3_client.list_objects_v2(
            Bucket=ENGINES, Prefix=f"engines/{key}/").get("KeyCount", 0)
        has = store.has(key)
        seen.append(f"{state}:{'manifest' if has else 'none'}:{listed}")
        if state in ("Ready", "Cached") and not has:
            violations.append(f"status says {state} with no manifest in the store")
        if has:
            manifest = store.read_manifest(key)
            assert manifest is not None
            for entry in manifest.files:
                name = f"engines/{key}/{manifest.upload}/{entry.path}"
                size = s3_client.head_object(Bucket=ENGINES, Key=name)["ContentLength"]
                if size != entry.size:
                    violations.append(f"{name}: {size} bytes, manifest {entry.size}")

    watcher = threading.Thread(target=watch_readers, daemon=True)
    try:
        create(kube, namespace, engine_build("outage", weights, max_batch_size=3))
        watcher.start()
        eventually(fault.down.is_set, timeout=90)
        # The endpoint is down with part of the engine uploaded: a pod fails, transiently.
        (job,) = eventually(lambda: [j for j in build_jobs(kube, namespace)
                                     if (j.status.failed or 0) >= 1], timeout=120, interval=0.5)
        assert key_box
        assert not store.has(key_box[0]), "an engine visible while its upload was cut"
        partial = s3_client.list_objects_v2(Bucket=ENGINES, Prefix=f"engines/{key_box[0]}/")
        assert partial.get("KeyCount", 0) >= 1, "the outage should have hit mid-upload"
        assert ready(kube, namespace, "outage") is None
        fault.up()
        eventually(lambda: ready(kube, namespace, "outage"), timeout=150, interval=0.5)
    finally:
        store_switch.refuse = lambda method, path: False
        fault.up()
        stop.set()
        watcher.join(timeout=10)
    look()  # the watcher may have stopped between Ready and its next look
    assert not violations, violations[:5]
    check_built_once_each(kube, namespace, ["outage"], s3_client, ENGINES)
    (job,) = build_jobs(kube, namespace)
    assert job.status.failed >= 1 and job.status.succeeded == 1, job.status
    # Readers saw "no engine" during the outage, then the whole engine.
    assert any(":none:" in s and not s.endswith(":0") for s in seen), seen[-10:]
    assert seen[-1].startswith("Ready:manifest"), seen[-5:]
