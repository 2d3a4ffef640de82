"""The reconcile shell: one error policy for both kinds, one metric per outcome, and a memory
of its own writes that gives way to the cluster's copy once the watch delivers it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kiln import metrics
from kiln.config import OperatorConfig
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
from kiln.reconcile.written import WrittenStatus


def total(kind: str, result: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "kiln_reconcile_total", {"kind": kind, "result": result}) or 0.0


class Kube:
    """Status writes, answered as the API server does: the object with a new version."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.version = 100

    def patch_status(self, plural: str, namespace: str, name: str,
                     patch: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(patch)
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}

    def secret_version(self, namespace: str, name: str) -> str | None:
        return None


UNREADABLE = {"apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
              "metadata": {"name": "llama", "namespace": "ns", "uid": "u", "generation": 3,
                           "resourceVersion": "7"},
              "spec": {"model": {"source": "s3://models/llama/"},
                       "build": {"backend": "tensorrt", "extraArgs": ["--no-such-flag"]}},
              "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True",
                                                           "reason": "Built"}]}}


def test_an_object_the_model_rejects_is_stalled_with_the_field_and_not_parsed_again(
        caplog: pytest.LogCaptureFixture) -> None:
    kube = Kube()
    events: list[Any] = []
    reconciler = EngineBuildReconciler(kube, OperatorConfig(),  # type: ignore[arg-type]
                                       lambda body, event: events.append(event))
    before = total("EngineBuild", "stalled")
    with caplog.at_level(logging.WARNING):
        outcome = reconciler.reconcile(UNREADABLE, world=None)  # type: ignore[arg-type]
        again = reconciler.reconcile(UNREADABLE, world=None)  # type: ignore[arg-type]
    assert outcome.result == again.result == "stalled"
    assert outcome.error is not None and outcome.error.reason == "InvalidObject"
    (written,) = kube.statuses
    conditions = {c["type"]: c for c in written["conditions"]}
    assert conditions["Stalled"]["status"] == "True"
    assert "spec.build.extraArgs.0" in conditions["Stalled"]["message"]
    assert conditions["Ready"]["status"] == "False"
    assert written["observedGeneration"] == 3 and written["phase"] == "Ready"  # the rest kept
    assert [e.reason for e in events] == ["InvalidObject"]
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert total("EngineBuild", "stalled") == before + 2
    edited = {**UNREADABLE, "metadata": {**UNREADABLE["metadata"], "generation": 4}}
    reconciler.reconcile(edited, world=None)  # type: ignore[arg-type]
    assert len(kube.statuses) == 2, "a new generation is read again"


class Unreachable:
    """An EngineDeployment's world whose every read fails as a dead connection does."""

    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise ConnectionResetError("connection reset by peer")

    def deployments(self, namespace: str, owner: str) -> list[Any]:
        return []

    def gpu_nodes(self) -> list[Any]:
        return []

    def serving_pods(self, namespace: str, owner: str) -> list[Any]:
        return []


def test_a_healing_failure_counts_the_same_for_both_kinds() -> None:
    """EngineDeployment failures that heal were not counted in ``kiln_reconcile_errors``."""
    kube = Kube()
    reconciler = EngineDeploymentReconciler(kube, OperatorConfig(),  # type: ignore[arg-type]
                                            lambda body, event: None)
    body = {"apiVersion": "kiln.dev/v1alpha1", "kind": "EngineDeployment",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"engineBuildRef": {"name": "llama"}}}
    errors = metrics.REGISTRY.get_sample_value(
        "kiln_reconcile_errors_total", {"kind": "EngineDeployment"}) or 0.0
    retries = total("EngineDeployment", "retry")
    outcome = reconciler.reconcile(body, Unreachable())  # type: ignore[arg-type]
    assert outcome.result == "retry" and outcome.error is not None
    assert outcome.error.reason == "Unreachable"
    assert total("EngineDeployment", "retry") == retries + 1
    assert metrics.REGISTRY.get_sample_value(
        "kiln_reconcile_errors_total", {"kind": "EngineDeployment"}) == errors + 1
    message = next(c["message"] for c in kube.statuses[-1]["conditions"]
                   if c["type"] == "Reconciling")
    assert message.startswith("Retrying Unreachable: ConnectionResetError")
    assert reconciler.reconcile(body, Unreachable()).result == "backing_off"  # type: ignore[arg-type]


def body(version: str, status: dict[str, Any], uid: str = "u") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "x", "uid": uid,
                         "resourceVersion": version}, "status": status}


def test_its_own_write_is_read_over_an_older_copy_only() -> None:
    kube = Kube()
    written = WrittenStatus(lambda ns, name, patch: kube.patch_status("x", ns, name, patch))
    assert written.write(body("100", {"phase": "Building"}), {"phase": "Ready"})  # -> 101
    assert written.overlay(body("100", {"phase": "Building"}))["status"] == {"phase": "Ready"}
    # The watch delivered a newer copy (someone else wrote after kiln): the cluster wins.
    forged = body("102", {"phase": "Failed"})
    assert written.overlay(forged)["status"] == {"phase": "Failed"}
    assert written.overlay(body("100", {"phase": "Building"}))["status"] == {
        "phase": "Building"}, "the entry is gone once the watch caught up"


def test_a_write_to_an_object_of_another_uid_is_not_read_over_it() -> None:
    kube = Kube()
    written = WrittenStatus(lambda ns, name, patch: kube.patch_status("x", ns, name, patch))
    written.write(body("100", {}), {"phase": "Ready"})
    assert written.overlay(body("50", {}, uid="v"))["status"] == {}


def test_the_clusters_copy_wins_after_an_etcd_restore_and_two_writes_read_over_a_lag() -> None:
    kube = Kube()
    written = WrittenStatus(lambda ns, name, patch: kube.patch_status("x", ns, name, patch))
    written.write(body("100", {"phase": "Building"}), {"phase": "Ready"})  # -> 101
    assert written.overlay(body("40", {"phase": "Old"}))["status"] == {"phase": "Old"}, (
        "a version kiln did not write over (a restore) is the cluster's")
    written.write(body("100", {"phase": "Building"}), {"phase": "Ready"})  # -> 102
    lagging = written.overlay(body("100", {"phase": "Building"}))
    written.write(lagging, {"phase": "Failed"})  # -> 103, the watch still at 100
    assert written.overlay(body("102", {"phase": "Ready"}))["status"] == {"phase": "Failed"}
    assert written.overlay(body("103", {"phase": "Failed"}))["status"] == {"phase": "Failed"}
    assert written.overlay(body("102", {"phase": "Ready"}))["status"] == {"phase": "Ready"}


def test_a_rejected_objects_status_is_repaired_and_a_rejected_status_alone_is_rewritten(
) -> None:
    kube = Kube()
    reconciler = EngineBuildReconciler(kube, OperatorConfig(),  # type: ignore[arg-type]
                                       lambda body, event: None)
    reconciler.reconcile(UNREADABLE, world=None)  # type: ignore[arg-type]
    forged = {**UNREADABLE, "metadata": {**UNREADABLE["metadata"], "resourceVersion": "500"}}
    reconciler.reconcile(forged, world=None)  # type: ignore[arg-type]
    assert len(kube.statuses) == 2, "a status someone else wrote is stalled again"
    from kiln.api import EngineBuild
    from kiln.reconcile.shell import parse
    odd_status = {**UNREADABLE, "spec": {"model": {"source": "s3://models/llama/"}},
                  "status": {"phase": "NoSuchPhase"}}
    assert parse(EngineBuild, odd_status).status is None
