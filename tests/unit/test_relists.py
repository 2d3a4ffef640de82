"""What a watch re-list no longer lists is dropped from Kopf's indexes; nothing else is."""

from __future__ import annotations

from typing import Any

from kopf._core.engines.indexing import Index  # the indexes Kopf hands to handlers

from kiln.handlers.relists import Relists


def meta(name: str, namespace: str | None = "ns") -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "uid": f"uid-{name}"}


def test_an_object_the_re_list_did_not_list_is_gone_once_the_listing_is_over() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    for name in ("a", "b", "c"):
        relists.saw("jobs", None, meta(name))  # the first listing
    now[0] = 100
    relists.saw("jobs", "MODIFIED", meta("b"))
    relists.saw("jobs", "ADDED", meta("d"))
    relists.saw("jobs", "DELETED", meta("c"))
    assert relists.gone() == []  # no re-list: a quiet object is not a gone one
    now[0] = 200
    relists.saw("jobs", None, meta("b"))  # the re-list: "a" was deleted meanwhile
    now[0] = 205
    relists.saw("jobs", None, meta("d"))
    assert relists.gone() == []  # still listing
    now[0] = 216
    assert relists.gone() == [("jobs", ("ns", "a", "uid-a"))]
    assert relists.gone() == []  # once
    relists.saw("jobs", "ADDED", meta("e"))  # created after the re-list
    now[0] = 300
    assert relists.gone() == []


def test_a_namespaced_operator_judges_each_namespace_by_its_own_listing() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    relists.clusterwide = False
    for name, namespace in (("a", "one"), ("b", "one"), ("c", "two")):
        relists.saw("pods", None, meta(name, namespace))
    now[0] = 100
    relists.saw("pods", None, meta("b", "one"))  # only namespace one's stream re-lists
    now[0] = 120
    assert relists.gone() == [("pods", ("one", "a", "uid-a"))]  # "c" was not listed again


def test_kinds_are_separate_streams() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    relists.saw("jobs", None, meta("j"))
    relists.saw("deployments", None, meta("d"))
    now[0] = 100
    relists.saw("jobs", None, meta("other"))
    now[0] = 120
    assert relists.gone() == [("jobs", ("ns", "j", "uid-j"))]


def test_dropping_removes_the_object_from_every_index_of_its_kind() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    indices: dict[str, Index[Any, Any]] = {
        name: Index() for name in ("build_pods", "serving_pods", "build_jobs")}
    for name in ("gone", "kept"):
        key = ("ns", name, f"uid-{name}")
        indices["build_pods"]._replace(key, {("ns", name): name})
        indices["build_jobs"]._replace(key, {("ns", name): name})
        relists.saw("pods", None, meta(name))
    now[0] = 100
    relists.saw("pods", None, meta("kept"))
    now[0] = 120
    assert relists.drop_gone(indices) == 1
    assert list(indices["build_pods"]) == [("ns", "kept")]
    assert len(indices["build_jobs"]) == 2  # another kind: its own stream
    assert relists.drop_gone(indices) == 0
