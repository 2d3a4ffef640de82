"""``kiln gc``'s decisions on a filesystem store: references listed again just before each
delete, a marker's writer's interval, the retention's floor; and the operator's marking: at
once when a term starts, at once when an EngineBuild reports an engine, for serving
Deployments too, and a failing store counted and warned about once per term."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kiln import metrics
from kiln.errors import InvalidInput, Unavailable
from kiln.gc import collect
from kiln.store import open_store
from kiln.store.base import EngineStore

KEY = "a" * 64
OTHER = "b" * 64


def stored(tmp_path: Path, *keys: str) -> EngineStore:
    src = tmp_path / "engine"
    src.mkdir(exist_ok=True)
    (src / "rank0.engine").write_bytes(os.urandom(64))
    (tmp_path / "store").mkdir(exist_ok=True)
    store = open_store(f"file://{tmp_path}/store")
    for key in keys:
        store.upload(key, src)
    return store


def age(store: EngineStore, key: str, seconds: float) -> None:
    path = Path(store.uri.removeprefix("file://")) / "engines" / key / "last-used"
    if not path.exists():
        store.mark_used(key, "test")
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_a_key_referenced_meanwhile_is_not_deleted(tmp_path: Path) -> None:
    store = stored(tmp_path, KEY, OTHER)
    age(store, KEY, 100)
    age(store, OTHER, 100)
    now_referenced = {KEY}  # an EngineBuild reported KEY Cached after the first listing
    report = collect.collect(store, set(), retention=10, apply=True, uploads_after=3600,
                        say=lambda _: None, recheck=lambda: now_referenced)
    assert report.deleted == [OTHER]
    assert store.has(KEY) and not store.has(OTHER)


def test_a_marker_younger_than_two_of_its_writers_intervals_is_kept(tmp_path: Path) -> None:
    store = stored(tmp_path, KEY, OTHER)
    store.mark_used(KEY, "cluster-b", every=86400)  # re-marked daily at most
    store.mark_used(OTHER, "cluster-b", every=60)
    age(store, KEY, 2 * 3600)
    age(store, OTHER, 2 * 3600)
    report = collect.collect(store, set(), retention=3600, apply=True, uploads_after=3600,
                        say=lambda _: None)
    assert report.deleted == [OTHER] and report.kept_in_use == [KEY]


def test_a_retention_below_the_floor_is_refused() -> None:
    with pytest.raises(InvalidInput, match="below the floor of 3600 s"):
        collect.check_retention(collect.seconds("10m"), env={})
    assert collect.check_retention(collect.seconds("7d"), env={}) == 7 * 86400
    assert collect.check_retention(5, env={collect.MIN_RETENTION_ENV: "1s"}) == 5


class Deployment:
    def __init__(self, key: str, uri: str) -> None:
        self.engine_key, self.engine_uri = key, f"{uri}engines/{key}/"


def test_marking_starts_with_the_term_and_follows_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from kiln.handlers import usage

    store = stored(tmp_path, KEY, OTHER)
    uri = store.uri
    builds: dict[tuple[str, str], dict[str, Any]] = {}

    class FakeIndexes:
        def __init__(self, _: Any) -> None:
            pass

        def every_engine_build(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
            return list(builds.items())

        def engine_build(self, ns: str, name: str) -> dict[str, Any] | None:
            return builds.get((ns, name))

        def every(self) -> list[dict[str, Any]]:
            return [{"metadata": {"namespace": "ns", "name": "ed"}}]

        def deployments(self, ns: str, name: str) -> list[Deployment]:
            return [Deployment(OTHER, uri)]

    class Engines:
        def store_uri(self, namespace: str, eb: Any) -> str:
            return uri

    class Builds:
        engines = Engines()

    class Config:
        used_mark_seconds = 4000.0

    monkeypatch.setattr(usage, "Indexes", FakeIndexes)
    monkeypatch.setattr(usage.EngineBuild, "model_validate", lambda body: body)
    monkeypatch.setattr(usage.context, "engine_builds", Builds)
    monkeypatch.setattr(usage.context, "config", Config)
    monkeypatch.setattr(usage.context, "identity", lambda: "replica-a")
    from kiln.gc.marks import Marks
    fresh = Marks("replica-a", 4000.0, open_=lambda _: store)
    monkeypatch.setattr(usage, "marks", lambda: fresh)
    monkeypatch.setattr(usage, "_due", set())

    async def scenario() -> None:
        task = asyncio.create_task(usage.run_forever({}))
        await asyncio.sleep(0.3)  # the term's first round: at once, not after 1000 s
        assert store.last_used(OTHER) is not None  # what a serving Deployment runs
        assert store.last_used(KEY) is None
        builds[("ns", "eb")] = {"status": {"engines": [{"key": KEY, "state": "Cached"}]}}
        await usage.engine_build_reported(body=builds[("ns", "eb")], namespace="ns",
                                          name="eb")
        await asyncio.sleep(0.3)
        found = store.last_used(KEY)
        assert found is not None and found[1] == 4000.0
        task.cancel()

    asyncio.run(scenario())

    def broken(*_: Any, **__: Any) -> bool:
        raise Unavailable("the store said no")

    monkeypatch.setattr(store, "mark_used", broken)
    fresh._marked.clear()
    fresh.marked_keys.clear()
    before = metrics.USED_MARK_FAILURES.labels(store=uri)._value.get()
    with caplog.at_level(logging.WARNING, logger="kiln.gc.marks"):
        usage.sweep({})
        usage.sweep({})
    assert metrics.USED_MARK_FAILURES.labels(store=uri)._value.get() == before + 4
    assert len([r for r in caplog.records if "could not mark" in r.message]) == 1
