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
        assert reconciler.reconcile(BODY, Broken()).result == "unexpected"  # type: ignore[arg-type]
        first = reconciler.next_try("ns", "llama")
        reconciler.shell.backoff.clock = lambda: 1e12  # the backoff has passed
        assert reconciler.reconcile(BODY, Broken()).result == "unexpected"  # type: ignore[arg-type]
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1
    after = metrics.REGISTRY.get_sample_value(
        "kiln_unexpected_errors_total", {"kind": "EngineBuild", "type": "RuntimeError"})
    assert after == before + 2
    last = reconciler.shell.backoff.last(("ns", "llama"))
    assert first is not None and last is not None and last.attempt == 2 and last.delay == 4
    message = next(c["message"] for c in kube.statuses[-1]["conditions"]
                   if c["type"] == "Reconciling")
    assert message.startswith("Retrying InternalError: RuntimeError: boom (attempt 2, next in 4s")


ED_BODY = {"apiVersion": "kiln.dev/v1alpha1", "kind": "EngineDeployment",
           "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
           "spec": {"engineBuildRef": {"name": "llama"}}}


class ServingWorld:
    """An EngineDeployment's world; ``broken``: every answer is a bug."""

    def __init__(self, broken: bool = False) -> None:
        self.broken, self.reads = broken, 0

    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        if self.broken:
            raise RuntimeError("boom")
        return None  # not created yet: the status says it waits for it

    def deployments(self, namespace: str, name: str) -> list[Any]:
        return []

    def gpu_nodes(self) -> list[Any]:
        return []

    def serving_pods(self, namespace: str, name: str) -> list[Any]:
        return []


def test_an_unexpected_exception_of_a_serving_reconcile_backs_off_too(
        caplog: pytest.LogCaptureFixture) -> None:
    """It once left the last backoff's due time behind: retried at once, in a loop."""
    from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
    kube = Kube()
    reconciler = EngineDeploymentReconciler(kube, OperatorConfig(), lambda body, event: None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            outcome = reconciler.reconcile(ED_BODY, ServingWorld(broken=True))  # type: ignore[arg-type]
            assert outcome.error is not None and outcome.error.reason == "InternalError"
            skipped = reconciler.reconcile(ED_BODY, ServingWorld(broken=True))  # type: ignore[arg-type]
            assert skipped.result == "backing_off", "not tried again before its next try"
            reconciler.shell.backoff.clock = lambda: 1e12  # the backoff has passed
    assert len([r for r in caplog.records if "Traceback" in r.getMessage()]) == 1
    last = reconciler.shell.backoff.last(("ns", "chat"))
    assert last is not None and last.attempt == 2
    reconciler.shell.backoff.clock = lambda: last.at
    wait = reconciler.next_try("ns", "chat")
    assert wait is not None and wait > 3  # not 0: no pass at once


def test_a_backing_off_serving_pass_waits_unless_what_it_read_changed() -> None:
    from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
    from kiln.errors import Unavailable

    class Failing(Kube):
        def patch_status(self, plural: str, namespace: str, name: str,
                         patch: dict[str, Any]) -> None:
            super().patch_status(plural, namespace, name, patch)
            if "observedGeneration" in patch.get("status", patch):
                raise Unavailable("the API server is busy")

    kube = Failing()
    reconciler = EngineDeploymentReconciler(kube, OperatorConfig(), lambda body, event: None)  # type: ignore[arg-type]
    world = ServingWorld()
    assert reconciler.reconcile(ED_BODY, world).result == "retry"  # type: ignore[arg-type]
    writes = len(kube.statuses)
    skipped = reconciler.reconcile(ED_BODY, world)  # type: ignore[arg-type]
    assert skipped.result == "backing_off" and len(kube.statuses) == writes
    edited = {**ED_BODY, "metadata": {**ED_BODY["metadata"], "generation": 2}}
    assert reconciler.reconcile(edited, world).result == "retry"  # type: ignore[arg-type]  # its spec moved: at once
    assert len(kube.statuses) > writes
