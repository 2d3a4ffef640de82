"""What a resync costs: passes over EngineBuilds whose Jobs run on (thousands of them, at
scale) read nothing from the engine store. The Job's end, not a poll of the store, says when
a manifest may be there. The operator's store is reached through a proxy that counts the
reads of each engine's ``manifest.json``."""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from builder.faults import S3Proxy
from e2e.support import Operator
from kiln import EB_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster, free_port
from operations.conftest import operator_env
from operations.support import ENGINES, running
from waiting import eventually

BUILDS = 6
ROUNDS = 4
"""Resync rounds watched (2 s apart): longer than any time-based window of re-reads."""


class ManifestReads:
    """Counts GETs of ``.../manifest.json`` per engine key; refuses nothing."""

    def __init__(self) -> None:
        self.reads: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str) -> bool:
        where = urlsplit(path).path
        if method == "GET" and where.endswith("/manifest.json"):
            with self.lock:
                self.reads[where.split("/")[-2]] += 1
        return False

    def total(self) -> int:
        with self.lock:
            return sum(self.reads.values())


def unschedulable(name: str, source: str, batch: int) -> dict[str, Any]:
    """A build whose pod no node takes: its Job runs on, and nothing about it changes."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
            "metadata": {"name": name},
            "spec": {"model": {"source": source},
                     "targets": [{"nodeSelector": {"testbed.kiln.dev/pool": "nowhere"},
                                  "computeCapability": "9.0"}],
                     "build": {"backend": "pytorch", "maxBatchSize": batch}}}


def settled(kube: Cluster, namespace: str) -> list[dict[str, Any]] | None:
    """Every EngineBuild Building with its pod reported Unschedulable (the facts hold)."""
    items = client.CustomObjectsApi(kube.api_client).list_namespaced_custom_object(
        GROUP, VERSION, namespace, EB_PLURAL)["items"]
    done = [i for i in items if any(
        (e.get("message") or "").startswith("Unschedulable")
        for e in (i.get("status") or {}).get("engines") or [])]
    return done if len(done) == BUILDS else None


@pytest.mark.timeout(180)
def test_passes_over_running_builds_read_no_manifest(
        kube: Cluster, release: tuple[Path, str], namespace: str, weights: str,
        s3_endpoint: str, tmp_path: Path) -> None:
    counter = ManifestReads()
    with S3Proxy(s3_endpoint, counter) as store:
        env = operator_env(release[0], store.url, f"s3://{ENGINES}/",
                           KILN_METRICS_PORT=str(free_port()), KILN_VERIFY_SECONDS="600")
        env["KILN_BUILD_ENV"] = env["KILN_BUILD_ENV"].replace(store.url, s3_endpoint)
        operator = Operator(kube, env, tmp_path / "kiln.log", args=["-n", namespace])
        with running(operator):
            for i in range(BUILDS):
                client.CustomObjectsApi(kube.api_client).create_namespaced_custom_object(
                    GROUP, VERSION, namespace, EB_PLURAL, unschedulable(f"b{i}", weights, i + 1))
            builds = eventually(lambda: settled(kube, namespace), timeout=90)
            keys = {e["key"] for b in builds for e in b["status"]["engines"]}
            assert set(counter.reads) == keys, "each engine was looked for once it was wanted"
            before = counter.total()
            passes = operator.passes("EngineBuild")
            eventually(lambda: operator.passes("EngineBuild") >= passes + ROUNDS * BUILDS,
                       timeout=60, interval=0.2)
            assert counter.total() == before, (
                f"{counter.total() - before} manifest reads in {ROUNDS} resyncs of "
                f"{BUILDS} running builds")
