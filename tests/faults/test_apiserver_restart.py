"""The API server restarts while the operator reconciles: the operator (the same process,
never restarted) catches up within a minute.

It keeps its tier's apiserver down for a while (``restarts_apiserver``: it runs after the
tier's other tests).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.support import Operator, get_eb
from faults.support import (
    ENGINES,
    TARGETS,
    all_ready,
    build_jobs,
    check_built_once_each,
    create,
    engine_build,
)
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from waiting import eventually

BEFORE, AFTER = 6, 3
DOWN_SECONDS = 4.0
"""How long the apiserver stays down: the requests in flight fail, and the retries after them."""


@pytest.mark.restarts_apiserver(down=DOWN_SECONDS)
@pytest.mark.timeout(240)
def test_apiserver_restart_during_reconciliation(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_client: Any) -> None:
    assert operator.process is not None
    pid = operator.process.pid
    names = [f"r{i}" for i in range(BEFORE + AFTER)]
    for i, name in enumerate(names[:BEFORE]):
        create(kube, namespace, engine_build(name, weights, gpu=TARGETS[i % len(TARGETS)],
                                             max_batch_size=100 + i))
    # Down while Jobs are being created and statuses written for the objects just made.
    kube.stop_component("kube-apiserver")
    time.sleep(DOWN_SECONDS)
    kube.start_apiserver()
    restarted = time.monotonic()
    for i, name in enumerate(names[BEFORE:], start=BEFORE):
        create(kube, namespace, engine_build(name, weights, gpu=TARGETS[i % len(TARGETS)],
                                             max_batch_size=100 + i))
    try:
        eventually(lambda: not all_ready(kube, namespace, names), timeout=60, interval=1)
    except AssertionError:
        left = {n: (get_eb(kube, namespace, n).get("status") or {}).get("engines")
                for n in all_ready(kube, namespace, names)}
        jobs = {j.metadata.name: (j.status.active, j.status.succeeded, j.status.failed)
                for j in build_jobs(kube, namespace)}
        raise AssertionError(f"not Ready a minute after the restart: {left}; "
                             f"Jobs (active, succeeded, failed): {jobs}") from None
    print(f"all {len(names)} Ready {time.monotonic() - restarted:.1f}s after the restart")
    assert operator.process.poll() is None and operator.process.pid == pid, (
        "the operator restarted")
    check_built_once_each(kube, namespace, names, s3_client, ENGINES)
