"""The node under a running build is deleted: kube-controller-manager's pod GC fails the
orphaned pod, the Job controller makes a new one, the scheduler puts it on another node of
the same pool, and the build finishes there."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from faults.support import (
    ENGINES,
    build_jobs,
    check_built_once_each,
    create,
    engine_build,
    job_pods,
    ready,
)
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from waiting import eventually


@pytest.mark.timeout(240)
def test_node_deleted_under_a_running_build(
        kube: Cluster, namespace: str, weights: str, operator: Any,
        builders: LocalProcessRunner, s3_client: Any) -> None:
    core = client.CoreV1Api(kube.api_client)
    pool = nodes.H100
    builders.pause()  # the pod stays Running (kwok) until the node is gone
    lost = None
    try:
        create(kube, namespace, engine_build("lost", weights, gpu="H100-SXM", max_batch_size=5))
        (job,) = eventually(lambda: build_jobs(kube, namespace), timeout=60)
        name = job.metadata.name

        def running() -> list[Any]:
            return [p for p in job_pods(kube, namespace, name)
                    if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]

        (first,) = eventually(running, timeout=60)
        lost = first.spec.node_name
        assert lost in pool.node_names()
        deleted = time.monotonic()
        core.delete_node(lost)

        def replaced() -> list[Any]:
            return [p for p in running() if p.metadata.uid != first.metadata.uid]

        # PodGC deletes pods bound to a missing node after a 40 s quarantine (checked every
        # 20 s); then the Job controller replaces the pod.
        (second,) = eventually(replaced, timeout=150, interval=1)
        print(f"replacement pod Running {time.monotonic() - deleted:.1f}s after node delete")
        assert second.spec.node_name in pool.node_names()
        assert second.spec.node_name != lost
    finally:
        builders.resume()
        if lost is not None:  # give the pool its node back for the tests after this one
            manifest = nodes.node_manifest(pool, lost)
            core.create_node(manifest)
            core.patch_node_status(lost, {"status": manifest["status"]})
    eventually(lambda: ready(kube, namespace, "lost"), timeout=120, interval=0.5)
    check_built_once_each(kube, namespace, ["lost"], s3_client, ENGINES)
    (job,) = build_jobs(kube, namespace)
    # Built on the other node of the pool; the lost pod was the cluster's doing
    # (DisruptionTarget), so it did not count against the Job's backoffLimit.
    done = [p for p in job_pods(kube, namespace, job.metadata.name)
            if p.status.phase == "Succeeded"]
    assert [p.spec.node_name for p in done] == [second.spec.node_name]
    print(f"Job status: succeeded={job.status.succeeded} failed={job.status.failed}")
