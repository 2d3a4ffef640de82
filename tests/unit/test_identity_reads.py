"""Weights identity reads are single flight: callers arriving while a read runs share the
next one, and nobody is handed a read that started before it asked."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kiln.api import EngineBuild
from kiln.config import OperatorConfig
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.sources import WeightsIdentity


class SlowSource:
    """A source whose identity changes with every read (so sharing is visible)."""

    def __init__(self) -> None:
        self.reads = 0
        self.lock = threading.Lock()

    def identity(self) -> Any:
        with self.lock:
            self.reads += 1
            n = self.reads
        time.sleep(0.2)
        return WeightsIdentity(f"read-{n}", "s3")


def eb(name: str) -> EngineBuild:
    return EngineBuild.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}]}})


def test_a_burst_shares_reads_and_a_later_caller_reads_again() -> None:
    reconciler = EngineBuildReconciler(None, OperatorConfig(), lambda body, event: None)  # type: ignore[arg-type]
    source = SlowSource()
    reconciler.weights._source = lambda namespace, build: (("s3://models/llama/",), source)  # type: ignore[method-assign]
    with ThreadPoolExecutor(20) as pool:
        weights = reconciler.weights
        digests = list(pool.map(lambda i: weights._read_identity("ns", eb(f"b{i}")).digest,
                                range(20)))
    # The first caller reads; the 19 that arrived meanwhile share at most one more read.
    assert source.reads <= 2, source.reads
    assert set(digests) <= {"read-1", "read-2"}
    # One arriving after those reads ended is given a read of its own.
    assert reconciler.weights._read_identity("ns", eb("late")).digest == f"read-{source.reads}"
    assert source.reads <= 3 and digests.count(f"read-{source.reads}") == 0
