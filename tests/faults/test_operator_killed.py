"""SIGKILL the operator at random moments while builds run: one Job per key, all Ready.

``BUILDS`` EngineBuilds (100, each a real kiln-builder run) and ``KILLS`` SIGKILLs (3), 2 to
10 s apart: while objects are created, Jobs created, pods run and statuses written. Override
with KILN_FAULT_BUILDS, KILN_FAULT_KILLS, KILN_FAULT_SEED (the seed is printed).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

import pytest

from e2e.support import Operator
from faults.support import ENGINES, TARGETS, all_ready, check_built_once_each, create, engine_build
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from waiting import eventually

BUILDS = int(os.environ.get("KILN_FAULT_BUILDS", "100"))
KILLS = int(os.environ.get("KILN_FAULT_KILLS", "3"))
SEED = int(os.environ.get("KILN_FAULT_SEED", str(random.randrange(1 << 30))))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("builds", "kills", "seed"), [(BUILDS, KILLS, SEED)])
def test_operator_sigkilled_during_builds(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        builders: LocalProcessRunner, s3_client: Any, builds: int, kills: int,
        seed: int) -> None:
    rng = random.Random(seed)
    names = [f"b{i}" for i in range(builds)]
    killed_at = []
    started = time.monotonic()
    # Kills land while objects are still being created, while Jobs are created, while
    # pods run and while statuses are written: a random pause before each.
    moments = list(itertools.accumulate(rng.uniform(2.0, 10.0) for _ in range(kills)))
    pending = list(moments)
    for i, name in enumerate(names):
        create(kube, namespace, engine_build(name, weights, gpu=TARGETS[i % len(TARGETS)],
                                             max_batch_size=8 + i))
        time.sleep(rng.uniform(0.0, 0.3))
        if pending and time.monotonic() - started >= pending[0]:
            pending.pop(0)
            operator.kill()
            killed_at.append(round(time.monotonic() - started, 2))
            operator.start()
    for moment in pending:
        time.sleep(max(0.0, moment - (time.monotonic() - started)))
        operator.kill()
        killed_at.append(round(time.monotonic() - started, 2))
        operator.start()
    assert len(killed_at) == kills
    print(f"seed {seed}: {builds} builds, SIGKILLs at {killed_at} s")

    # 100 local builders share 2 cores with another tier under ./dev test's workers: the
    # property is that all end Ready, not how soon (speed lives in the bench)
    eventually(lambda: not all_ready(kube, namespace, names), timeout=480, interval=1)
    keys = check_built_once_each(kube, namespace, names, s3_client, ENGINES)
    assert len(set(keys.values())) == builds
    # Exactly one build per key: each Job ran one pod, and it succeeded.
    runs = eventually(lambda: [f for f in builders.finished if f.namespace == namespace]
                      if sum(f.namespace == namespace for f in builders.finished) >= builds
                      else [], timeout=30)
    per_job = {f.name.rsplit("-", 1)[0]: 0 for f in runs}
    for f in runs:
        per_job[f.name.rsplit("-", 1)[0]] += 1
    assert sorted(per_job.values()) == [1] * builds, per_job
