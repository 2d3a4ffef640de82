"""An exception kiln does not know is logged with its traceback once, counted, said in status
as ``Retrying InternalError`` and retried after a growing backoff; it never escapes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kiln import metrics
from kiln.config import OperatorConfig
from kiln.engine_build.reconciler import EngineBuildReconciler


class Kube:
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    def patch_status(self, plural: str, namespace: str, name: str,
                     patch: dict[str, Any]) -> None:
        self.statuses.append(patch)

    def secret_version(self, namespace: str, name: str) -> str | None:
        return None


class Broken:
    """A world whose every answer is a bug."""

    def referencing(self, namespace: str, build: str) -> list[dict[str, Any]]:
        raise RuntimeError("boom")


BODY = {"apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
        "metadata": {"name": "llama", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}],
                 "output": {"store": "s3://engines/"}}}


def test_an_unexpected_exception_is_logged_once_counted_and_retried_with_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    kube = Kube()
    reconciler = EngineBuildReconciler(kube, OperatorConfig(), lambda body, event: None)  # type: ignore[arg-type]
    before = metrics.REGISTRY.get_sample_value(
        "kiln_unexpected_errors_total", {"kind": "EngineBuild", "type": "RuntimeError"}) or 0
    with caplog.at_level(logging.WARNING):
        assert reconciler.reconcile(BODY, Broken()) is None  # type: ignore[arg-type]
        first = reconciler.next_try("ns", "llama")
        reconciler.backoff.clock = lambda: 1e12  # the backoff has passed
        assert reconciler.reconcile(BODY, Broken()) is None  # type: ignore[arg-type]
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1
    after = metrics.REGISTRY.get_sample_value(
        "kiln_unexpected_errors_total", {"kind": "EngineBuild", "type": "RuntimeError"})
    assert after == before + 2
    last = reconciler.backoff.last(("ns", "llama"))
    assert first is not None and last is not None and last.attempt == 2 and last.delay == 4
    message = next(c["message"] for c in kube.statuses[-1]["conditions"]
                   if c["type"] == "Reconciling")
    assert message.startswith("Retrying InternalError: RuntimeError: boom (attempt 2, next in 4s")
