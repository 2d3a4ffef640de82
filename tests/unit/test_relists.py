"""After a watch re-list, what the API server no longer has is dropped from Kopf's indexes;
nothing else is, and nothing is listed while nothing re-lists."""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._core.engines.indexing import Index  # the indexes Kopf hands to handlers

from kiln.handlers.relists import KINDS, Key, Kind, Relists


def meta(name: str, namespace: str | None = "ns") -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "uid": f"uid-{name}"}


def key(name: str, namespace: str | None = "ns") -> Key:
    return (namespace, name, f"uid-{name}")


class World:
    """Kopf's indexes of pods and Jobs, and what a list returns now."""

    def __init__(self) -> None:
        self.indices: dict[str, Any] = {
            name: Index() for name in ("build_pods", "serving_pods", "build_jobs")}
        self.live: dict[str, set[str]] = {"pods": set(), "jobs": set()}
        self.listed: list[tuple[str, str | None]] = []

    def index(self, kind: str, name: str, namespace: str | None = "ns") -> None:
        target = {"pods": "build_pods", "jobs": "build_jobs"}[kind]
        self.indices[target]._replace(key(name, namespace), {(namespace, name): name})
        self.live[kind].add(f"uid-{name}")

    def lister(self, kind: Kind, namespace: str | None) -> set[str]:
        self.listed.append((kind.plural, namespace))
        return self.live[kind.plural]

    def check(self, relists: Relists) -> int:
        return asyncio.run(relists.check(self.indices, self.lister))


def test_the_first_listing_lists_nothing_a_re_list_lists_once_and_drops_the_deleted() -> None:
    now = [0.0]
    relists, world = Relists(clock=lambda: now[0], quiet=10), World()
    for name in ("a", "b"):
        world.index("pods", name)
        relists.saw("pods", None, meta(name))  # the initial listing
    world.index("jobs", "j")
    relists.saw("jobs", None, meta("j"))
    now[0] = 100
    assert not relists.due()  # no re-list: nothing is listed, however long
    world.live["pods"].discard("uid-a")  # deleted while the watch was away...
    world.live["jobs"].discard("uid-j")  # ...and so was the only Job: its re-list is empty
    relists.saw("pods", None, meta("b"))  # the re-list
    now[0] = 105
    assert not relists.due()  # still listing
    now[0] = 111
    assert relists.due()
    assert world.check(relists) == 2
    assert sorted(world.listed) == [("jobs", None), ("pods", None)]
    assert list(world.indices["build_pods"]) == [("ns", "b")]
    assert list(world.indices["build_jobs"]) == []
    assert not relists.due()  # once per re-list


def test_an_object_that_had_an_event_since_the_list_began_is_kept() -> None:
    now = [0.0]
    relists, world = Relists(clock=lambda: now[0], quiet=10), World()
    world.index("pods", "a")
    relists.saw("pods", None, meta("a"))
    now[0] = 50
    relists.saw("pods", None, meta("a"))
    now[0] = 70
    began = relists.begin()
    now[0] = 71
    relists.saw("pods", "ADDED", meta("new"))  # created after the list was taken
    assert relists.gone({"pods": {"uid-a"}}, began) == []


def test_a_namespaced_operator_lists_each_namespace_it_indexed() -> None:
    now = [0.0]
    relists, world = Relists(clock=lambda: now[0], quiet=10), World()
    relists.clusterwide = False
    for name, namespace in (("a", "one"), ("c", "two")):
        world.index("pods", name, namespace)
        relists.saw("pods", None, meta(name, namespace))
    now[0] = 100
    relists.saw("pods", None, meta("a", "one"))
    now[0] = 120
    world.check(relists)
    assert world.listed == [("pods", "one"), ("pods", "two")]


def test_a_dropped_object_is_forgotten_and_marks_everything_due() -> None:
    now = [0.0]
    relists, world = Relists(clock=lambda: now[0], quiet=10), World()
    forgotten: list[tuple[str, Key]] = []
    marked: list[int] = []
    relists.on_drop(lambda plural, k, _: forgotten.append((plural, k)),
                    lambda indices: marked.append(len(indices)))
    world.index("pods", "a")
    relists.saw("pods", None, meta("a"))
    relists.saw("pods", None, meta("a"))
    world.live["pods"].clear()
    now[0] = 20
    assert world.check(relists) == 1
    assert forgotten == [("pods", key("a"))] and marked == [3]


def test_a_deleted_object_is_forgotten_and_a_failed_check_is_due_again() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    relists.saw("jobs", None, meta("j"))
    relists.saw("jobs", "DELETED", meta("j"))
    relists.saw("jobs", None, meta("k"))
    assert not relists.due()  # a new object, not a re-list
    relists.saw("jobs", None, meta("k"))
    now[0] = 20
    relists.begin()
    assert not relists.due()
    relists.retry_later()
    now[0] = 31
    assert not relists.due()  # the quiet doubled: 20 s after a failure
    now[0] = 41
    assert relists.due()


def test_re_lists_that_keep_coming_are_checked_after_a_minute() -> None:
    now = [0.0]
    relists = Relists(clock=lambda: now[0], quiet=10)
    relists.saw("jobs", None, meta("j"))
    for second in range(1, 61, 5):  # a watch that flaps: never 10 s quiet
        now[0] = float(second)
        relists.saw("jobs", None, meta("j"))
        assert not relists.due()
    now[0] = 62
    assert relists.due()


def test_every_kind_lists_with_its_watchs_selector() -> None:
    assert KINDS["pods"].selector == "app.kubernetes.io/managed-by=kiln"
    assert KINDS["jobs"].selector == "kiln.dev/engine-key"
    assert not KINDS["nodes"].namespaced
