"""``kiln gc`` on moto's S3, one store shared by two clusters, each with its operator.

Each cluster builds two engines and then deletes one of its EngineBuilds. GC run from either
cluster, past the retention, deletes exactly the two dropped engines: not its own referenced
one, and not the other cluster's, which that cluster's operator keeps marking used. Dry-run
lists and deletes nothing. A GC SIGKILLed mid-delete leaves no manifest without its files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator, get_eb, ready
from faults.support import create, engine_build
from kiln import GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.cluster import running as cluster_running
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.store import open_store
from operations.conftest import install_crds, install_release, operator_env
from operations.support import running
from waiting import eventually

RETENTION = 12.0
MARK = "2"
"""KILN_USED_MARK_SECONDS of both operators: in-use engines are re-marked every 2 s."""


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A second cluster sharing the store."""
    with cluster_running(tmp_path_factory.mktemp("field-other")) as cluster:
        install_crds(cluster)
        yield cluster


def gc(kube: Cluster, store: str, s3_endpoint: str, *args: str,
       ) -> subprocess.Popen[str]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "AWS_ENDPOINT_URL": s3_endpoint,
           "KILN_GC_MIN_RETENTION": "1s"}  # the tests' retentions are seconds
    return subprocess.Popen([sys.executable, "-m", "kiln.cli", "gc", "--store", store, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run_gc(kube: Cluster, store: str, s3_endpoint: str, *args: str) -> str:
    process = gc(kube, store, s3_endpoint, *args)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    return out


def engine_key(kube: Cluster, namespace: str, name: str) -> str:
    (engine,) = get_eb(kube, namespace, name)["status"]["engines"]
    return str(engine["key"])


def whole(s3: Any, bucket: str) -> dict[str, bool]:
    """Each committed engine: whether every file its manifest names is there."""
    store = open_store(f"s3://{bucket}/")
    names = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
             for o in page.get("Contents", [])}
    found = {}
    for key in store.list_keys():
        manifest = store.read_manifest(key)
        if manifest is not None:
            found[key] = all(f"engines/{key}/{manifest.upload}/{f.path}" in names
                             for f in manifest.files)
    return found


@pytest.mark.timeout(400)
def test_gc_deletes_only_what_neither_cluster_uses(
        kube: Cluster, other: Cluster, release: tuple[Path, str], namespace: str,
        weights: str, builders: LocalProcessRunner, s3_client: Any, s3_endpoint: str,
        bucket: str, tmp_path: Path) -> None:
    store = f"s3://{bucket}/"
    os.environ.setdefault("AWS_ENDPOINT_URL", s3_endpoint)
    client.CoreV1Api(other.api_client).create_namespace({"metadata": {"name": namespace}})
    other_release = install_release(other, namespace)
    here = Operator(kube, operator_env(release[0], s3_endpoint, store,
                                       KILN_USED_MARK_SECONDS=MARK),
                    tmp_path / "here.log", args=["-n", namespace])
    there = Operator(other, operator_env(other_release[0], s3_endpoint, store,
                                         KILN_USED_MARK_SECONDS=MARK),
                     tmp_path / "there.log", args=["-n", namespace])
    other_builders = LocalProcessRunner(other.api_client,
                                        extra_env={"AWS_ENDPOINT_URL": s3_endpoint})
    with other_builders, running(here), running(there):
        for cluster, prefix, base in ((kube, "a", 10), (other, "b", 20)):
            for i, name in enumerate(("keep", "drop")):
                create(cluster, namespace, engine_build(f"{prefix}-{name}", weights,
                                                        max_batch_size=base + i))
        for cluster, prefix in ((kube, "a"), (other, "b")):
            for name in ("keep", "drop"):
                eventually(lambda c=cluster, n=f"{prefix}-{name}": ready(c, namespace, n),
                           timeout=90, interval=0.5)
        keys = {f"{p}-{n}": engine_key(c, namespace, f"{p}-{n}")
                for c, p in ((kube, "a"), (other, "b")) for n in ("keep", "drop")}
        for cluster, prefix in ((kube, "a"), (other, "b")):
            client.CustomObjectsApi(cluster.api_client).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "enginebuilds", f"{prefix}-drop")
        time.sleep(RETENTION + 3)  # the dropped engines' marks age past the retention

        before = whole(s3_client, bucket)
        assert set(before) == set(keys.values()) and all(before.values())
        listed = run_gc(kube, store, s3_endpoint, "--retention", f"{RETENTION:.0f}s")
        assert whole(s3_client, bucket) == before, "a dry run deleted something"
        for name, key in keys.items():
            assert (f"delete  {key}" in listed) == name.endswith("-drop"), (name, listed)
        assert f"keep    {keys['b-keep']}" in listed  # not referenced here, used there

        done = run_gc(kube, store, s3_endpoint, "--retention", f"{RETENTION:.0f}s",
                      "--apply")
        assert "2 engines" in done, done
        left = whole(s3_client, bucket)
        assert left == {keys["a-keep"]: True, keys["b-keep"]: True}, (left, done)
        # And from the other cluster: the same, nothing more.
        run_gc(other, store, s3_endpoint, "--retention", f"{RETENTION:.0f}s", "--apply")
        assert whole(s3_client, bucket) == left
        metrics_report = open_store(store).get_blob("gc-report.json")
        assert metrics_report is not None and b'"reclaimed_bytes"' in metrics_report


def test_gc_killed_mid_delete_leaves_no_manifest_without_its_files(
        kube: Cluster, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{bucket}/", endpoint_url=s3_endpoint)
    src = tmp_path / "engine"
    src.mkdir()
    for i in range(200):
        (src / f"rank{i}.engine").write_bytes(os.urandom(64))
    keys = [f"{i:064x}" for i in range(1, 16)]
    for key in keys:
        store.upload(key, src)
    time.sleep(1.5)
    process = gc(kube, f"s3://{bucket}/", s3_endpoint, "--retention", "1s", "--apply",
                 "--uploads-after", "1s")
    eventually(lambda: len(store.list_keys()) < len(keys), timeout=60, interval=0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = whole(s3_client, bucket)
    assert all(state.values()), state  # every manifest still has every file
    assert 0 < len(state) < len(keys), f"the kill did not land mid-delete: {len(state)} left"
    time.sleep(1.5)
    run_gc(kube, f"s3://{bucket}/", s3_endpoint, "--retention", "1s", "--apply",
           "--uploads-after", "1s")
    objects = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket) for o in page.get("Contents", [])]
    assert [o for o in objects if o.startswith("engines/")] == [], objects[:5]
