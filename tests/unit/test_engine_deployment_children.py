"""What the watch keeps of an EngineDeployment's Service, budget and ConfigMaps, and when one
has drifted from what kiln renders (``kiln.engine_deployment.children``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from kiln.engine_deployment.children import drifted, kilns, observe
from kiln.engine_deployment.render import (
    render_llm_api_config,
    render_pdb,
    render_service,
    render_trust,
)
from unit.test_engine_deployment_render import eb, ed

RENDERED = {
    "service": lambda: render_service(ed()),
    "triton service": lambda: render_service(ed(server={"kind": "triton", "image": "t:1"})),
    "budget": lambda: render_pdb(ed()),
    "trust": lambda: render_trust(ed(), "-----BEGIN PUBLIC KEY-----\n"),
    "llm api": lambda: render_llm_api_config(ed(), eb()),
}
IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}
"""What names the object rather than being a field of it."""


def leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from leaves(value, (*path, i))
    else:
        yield path


def changed(obj: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    at: Any = out
    for step in path[:-1]:
        at = at[step]
    old = at[path[-1]]
    at[path[-1]] = (not old) if isinstance(old, bool) else (
        old + 1 if isinstance(old, int) else f"{old}-edited")
    return out


def as_stored(rendered: dict[str, Any]) -> dict[str, Any]:
    """What the API server holds once kiln applied it: defaults, fields of its own and of
    others."""
    obj = copy.deepcopy(rendered)
    meta = obj["metadata"]
    meta |= {"uid": "child-uid", "resourceVersion": "7", "generation": 1,
             "managedFields": [{"manager": "kiln", "operation": "Apply"}]}
    meta["labels"] |= {"argocd.argoproj.io/instance": "app", "team": "x"}
    meta["annotations"] |= {"note": "someone's"}
    if obj["kind"] == "Service":
        obj["spec"] |= {"clusterIP": "10.0.0.7", "sessionAffinity": "None"}
        for port in obj["spec"]["ports"]:
            port["protocol"] = "TCP"
        obj["spec"]["ports"].append({"name": "debug", "port": 9, "protocol": "TCP"})
    if obj["kind"] == "PodDisruptionBudget":
        obj["status"] = {"currentHealthy": 1, "disruptionsAllowed": 1}
    if obj["kind"] == "ConfigMap":
        obj["data"]["extra.yaml"] = "someone's"
    return obj


@pytest.mark.parametrize("which", RENDERED)
def test_a_child_as_rendered_is_no_drift_whatever_others_added(which: str) -> None:
    rendered = RENDERED[which]()
    assert not drifted(rendered, observe(rendered["kind"], as_stored(rendered)))
    assert not drifted(RENDERED[which](), observe(rendered["kind"], rendered))


@pytest.mark.parametrize("which", RENDERED)
def test_a_missing_child_or_one_of_another_owner_drifted(which: str) -> None:
    rendered = RENDERED[which]()
    assert drifted(rendered, None)
    theirs = as_stored(rendered)
    theirs["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Other", "name": "x",
                                              "uid": "not-ours", "controller": True}]
    assert drifted(rendered, observe(rendered["kind"], theirs))


@pytest.mark.parametrize("which", RENDERED)
def test_every_field_kiln_renders_is_compared(which: str) -> None:
    """Whatever render writes, an edit of it is drift: the index keeps it (``FIELDS``)."""
    rendered = RENDERED[which]()
    paths = [p for p in leaves(rendered) if p not in IDENTITY]
    assert len(paths) > 5
    for path in paths:
        edited = observe(rendered["kind"], changed(as_stored(rendered), path))
        assert drifted(rendered, edited), path


def test_configmap_data_is_kept_as_digests() -> None:
    rendered = RENDERED["trust"]()
    kept = observe("ConfigMap", as_stored(rendered)).part["data"]
    assert set(kept) == set(rendered["data"])  # not someone's extra key
    assert all(len(v) == 20 and v not in rendered["data"].values() for v in kept.values())


@pytest.mark.parametrize("which", ["service", "budget"])
def test_a_selector_with_anything_added_is_drift(which: str) -> None:
    """A selector is replaced whole on apply: an extra key routes to nothing, or covers
    nothing (a review found these went unrepaired)."""
    rendered = RENDERED[which]()
    stored = as_stored(rendered)
    if which == "service":
        stored["spec"]["selector"]["extra"] = "x"
    else:
        stored["spec"]["selector"]["matchExpressions"] = [
            {"key": "x", "operator": "Exists"}]
    assert drifted(rendered, observe(rendered["kind"], stored))


def test_a_port_made_udp_is_drift() -> None:
    rendered = RENDERED["service"]()
    stored = as_stored(rendered)
    stored["spec"]["ports"][0]["protocol"] = "UDP"
    assert drifted(rendered, observe("Service", stored))


@pytest.mark.parametrize("which", RENDERED)
def test_only_the_children_kiln_names_under_its_controller_are_kept(which: str) -> None:
    """What a tenant labels like kiln's costs the operator no memory: another name, or no
    EngineDeployment controller, is not kiln's; of kiln's ConfigMaps only its keys."""
    rendered = RENDERED[which]()
    assert kilns(rendered["kind"], as_stored(rendered))
    other = as_stored(rendered)
    other["metadata"]["name"] += "-x"
    assert not kilns(rendered["kind"], other)
    orphan = as_stored(rendered)
    orphan["metadata"]["ownerReferences"] = []
    assert not kilns(rendered["kind"], orphan)
    if rendered["kind"] == "ConfigMap":
        stuffed = as_stored(rendered)
        stuffed["data"] |= {f"k{i}": "v" for i in range(1000)}
        assert set(observe("ConfigMap", stuffed).part["data"]) == set(rendered["data"])
