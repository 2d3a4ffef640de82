"""A deletion the operator's watch never delivers: its watch comes back after the API server
restarted (the old resource version is gone: 410, a re-list), and the Job was deleted in
between. Kopf's indexes keep what the re-list no longer lists; kiln must not trust them.

It restarts its tier's apiserver (``restarts_apiserver``: it runs after the tier's other
tests, and before those that keep it down for longer).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator, get_eb
from faults.support import ENGINES, build_jobs, check_built_once_each, create, engine_build
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from waiting import eventually

RESYNC_SECONDS = 5  # the fault operator's KILN_RESYNC_SECONDS


@pytest.mark.restarts_apiserver
@pytest.mark.timeout(240)
def test_a_job_deleted_while_the_watch_was_away_is_recreated_within_a_resync(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_client: Any) -> None:
    assert operator.process is not None
    builders.pause()  # the build pod stays Running: the EngineBuild stays Building
    try:
        create(kube, namespace, engine_build("relist", weights, max_batch_size=77))
        (job,) = eventually(lambda: build_jobs(kube, namespace), timeout=60)
        # The operator away while the API server restarts (its watches end) and while the
        # Job is deleted, then history compacted: its watches come back to 410 Gone and list
        # again; no DELETED event reaches it.
        operator.process.send_signal(signal.SIGSTOP)
        try:
            kube.stop_component("kube-apiserver")
            kube.start_apiserver()
            client.BatchV1Api(kube.api_client).delete_namespaced_job(
                job.metadata.name, namespace, propagation_policy="Background")
            eventually(lambda: not build_jobs(kube, namespace), timeout=30)
            kube.compact_etcd()  # the deletion's event is history no watch can resume from
        finally:
            operator.process.send_signal(signal.SIGCONT)
        back = time.monotonic()

        def recreated() -> Any:
            return next((j for j in build_jobs(kube, namespace)
                         if j.metadata.name == job.metadata.name
                         and j.metadata.uid != job.metadata.uid), None)
        # The watch reconnects (410, a re-list) within seconds; the next resync repairs.
        eventually(recreated, timeout=20 + 2 * RESYNC_SECONDS, interval=0.5)
        print(f"Job recreated {time.monotonic() - back:.1f}s after the operator resumed")
        assert (get_eb(kube, namespace, "relist").get("status") or {}).get(
            "phase") == "Building"
    finally:
        builders.resume()
    eventually(lambda: (get_eb(kube, namespace, "relist").get("status") or {}).get(
        "phase") == "Ready", timeout=120)
    check_built_once_each(kube, namespace, ["relist"], s3_client, ENGINES)
