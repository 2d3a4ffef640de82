"""The cluster is the memory: a status someone else wrote is repaired from the facts within a
resync (kiln's own last write does not override it), and an object the operator's model
cannot read (a CRD out of step with the operator) says why in status and is not retried in a
loop; every pass is counted by kind and result on ``/metrics``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from e2e.support import ROOT, Operator
from field.support import (
    UNSCHEDULABLE,
    conditions,
    create,
    custom,
    engine_build,
    engine_deployment,
    get,
)
from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
FORGED = {"phase": "Ready", "conditions": [
    {"type": "Ready", "status": "True", "reason": "Forged", "message": "not kiln's",
     "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


def test_a_status_someone_else_wrote_is_repaired_within_a_resync(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=UNSCHEDULABLE),
           engine_deployment("chat", "llama"))

    def settled(plural: str, name: str) -> bool:
        obj = get(kube, namespace, plural, name)
        return "Ready" in conditions(obj) and conditions(obj)["Ready"][0] == "False"

    eventually(lambda: settled(EB_PLURAL, "llama") and settled(ED_PLURAL, "chat"))
    operator.resynced(EB_PLURAL)
    kiln_wrote = {p: get(kube, namespace, p, n)["status"]
                  for p, n in ((EB_PLURAL, "llama"), (ED_PLURAL, "chat"))}
    for plural, name in ((EB_PLURAL, "llama"), (ED_PLURAL, "chat")):
        custom(kube).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name,
            {"status": FORGED if plural == EB_PLURAL else {"conditions": FORGED["conditions"]}})
    assert conditions(get(kube, namespace, EB_PLURAL, "llama"))["Ready"] == ("True", "Forged")
    operator.resynced(EB_PLURAL)
    operator.resynced(ED_PLURAL)
    for plural, name in ((EB_PLURAL, "llama"), (ED_PLURAL, "chat")):
        status = get(kube, namespace, plural, name)["status"]
        assert conditions({"status": status})["Ready"][0] == "False", (plural, status)
        assert status.get("phase") == kiln_wrote[plural].get("phase"), (plural, status)
        assert said(status) == said(kiln_wrote[plural]), plural


def said(status: dict[str, object]) -> list[tuple[object, ...]]:
    """What the conditions say (their transition times moved with the forgery; messages
    move with the builds)."""
    return [(c["type"], c["status"], c.get("reason"))  # type: ignore[index]
            for c in status.get("conditions") or []]  # type: ignore[attr-defined]


@pytest.fixture
def unchecked_extra_args(kube: Cluster) -> Iterator[None]:
    """The EngineBuild CRD without its per-item checks of ``spec.build.extraArgs``: a CRD
    out of step with the operator's model (an upgrade half done); restored afterwards."""
    path = ("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/build/"
            "properties/extraArgs/items/x-kubernetes-validations")
    kube.kubectl("patch", "crd", f"{EB_PLURAL}.{GROUP}", "--type=json",
                 "-p", json.dumps([{"op": "remove", "path": path}]))
    try:
        yield
    finally:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                     str(ROOT / "crds" / f"{EB_PLURAL}.{GROUP}.yaml"))


def test_an_object_the_operator_cannot_read_is_stalled_with_the_field_and_backs_off(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        unchecked_extra_args: None) -> None:
    body = engine_build("odd", weights, targets=UNSCHEDULABLE,
                        build={"backend": "tensorrt", "extraArgs": ["--no-such-flag"]})

    def created() -> bool:  # the API server takes the relaxed schema a moment later
        try:
            create(kube, namespace, body)
        except client.ApiException as error:
            if error.status != 422:
                raise
            return False
        return True

    eventually(created, timeout=30)

    def stalled() -> tuple[str, str] | None:
        found = conditions(get(kube, namespace, EB_PLURAL, "odd")).get("Stalled")
        return found if found and found[0] == "True" else None

    assert eventually(stalled) == ("True", "InvalidObject")
    obj = get(kube, namespace, EB_PLURAL, "odd")
    message = next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert "spec.build.extraArgs.0" in message and "--no-such-flag" in message
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    version = obj["metadata"]["resourceVersion"]
    operator.resynced(EB_PLURAL)
    operator.resynced(EB_PLURAL)
    assert get(kube, namespace, EB_PLURAL, "odd")["metadata"]["resourceVersion"] == version, (
        "a rejected object is not written again while it stays as it is")
    assert not [line for line in operator.log().splitlines()
                if f"{namespace}/odd failed" in line], "no traceback, no error per pass"
    assert operator.passes("EngineBuild", "stalled") > 0
