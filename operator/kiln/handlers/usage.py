"""Marks the engines this cluster uses (every EngineBuild's Ready or Cached engine and the
previous one, and the engine every serving Deployment runs) used in their store, at most once
per ``KILN_USED_MARK_SECONDS`` each, so that ``kiln gc`` run from any cluster sharing the
store keeps them; and exports what the last GC reported.

It runs while leading, as soon as a term starts (not one interval later), then every
``interval()``; an EngineBuild reporting an engine it has not marked yet wakes it at once.
Each marker says how often its writer re-marks (``every``), so a GC keeps the engine for at
least two of those. A store that refuses a mark is counted (``kiln_used_mark_failures``) and
warned about once per store and term.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import kopf

from kiln import EB_PLURAL, GROUP, VERSION, metrics
from kiln.api import EngineBuild
from kiln.contract import layout
from kiln.errors import KilnError
from kiln.gc import collect
from kiln.handlers import context, leadership
from kiln.handlers.indexes import Indexes
from kiln.store import EngineStore, open_store

log = logging.getLogger(__name__)

_stores: dict[str, EngineStore] = {}
_marked: dict[tuple[str, str], float] = {}
"""(store, key) -> when this process last marked (or found marked) it."""
_marked_keys: set[str] = set()
_warned: set[str] = set()
"""Stores warned about in this term."""
_due: set[tuple[str, str]] = set()
"""EngineBuilds that reported an engine not marked yet."""
_wake: dict[str, asyncio.Event] = {}
_round: dict[str, float] = {}
STUCK_SECONDS = 600.0


def _store(uri: str) -> EngineStore:
    if uri not in _stores:
        _stores[uri] = open_store(uri)
    return _stores[uri]


def interval() -> float:
    """How often the marking runs."""
    return max(1.0, min(600.0, context.config().used_mark_seconds / 4))


def _used_keys(body: dict[str, Any]) -> list[str]:
    keys = []
    for engine in (body.get("status") or {}).get("engines") or []:
        keys.append(engine.get("previousKey"))
        if engine.get("state") in ("Ready", "Cached"):
            keys.append(engine.get("key"))
    return [k for k in keys if k]


def _mark(uri: str, key: str, now: float) -> None:
    every = context.config().used_mark_seconds
    if now - _marked.get((uri, key), -every) < every:
        return
    try:
        _store(uri).mark_used(key, context.identity(), unless_within=every, every=every)
    except (KilnError, OSError) as error:
        metrics.record_used_mark_failure(uri)
        if uri not in _warned:
            _warned.add(uri)
            log.warning("could not mark engine %s used in %s (a GC may delete engines this "
                        "cluster uses; kiln_used_mark_failures counts each): %s", key[:12],
                        uri, error)
        return
    _marked[(uri, key)] = now
    _marked_keys.add(key)


def _mark_build(ref: tuple[str, str], body: dict[str, Any], now: float,
                stores: set[str]) -> None:
    keys = _used_keys(body)
    if not keys:
        return
    try:
        uri = context.engine_builds().engines.store_uri(str(ref[0]),
                                                        EngineBuild.model_validate(body))
    except (KilnError, ValueError):
        return
    stores.add(uri)
    for key in keys:
        _mark(uri, key, now)


def sweep(indices: dict[str, Any]) -> None:
    """Mark every engine in use; export the GC's last report of each store."""
    now = time.monotonic()
    stores: set[str] = set()
    indexes = Indexes(indices)
    for ref, body in indexes.every_engine_build():
        _mark_build(ref, body, now, stores)
    for ed in indexes.every():
        meta = ed["metadata"]
        for deployment in indexes.deployments(meta["namespace"], meta["name"]):
            key, where = deployment.engine_key, deployment.engine_uri
            if key and where:
                try:
                    store = layout.store_of(where, key)
                except ValueError:
                    continue  # not an engine URI kiln wrote
                _mark(store, key, now)
    for uri in stores:
        try:
            report = collect.last_report(_store(uri))
        except (KilnError, OSError, ValueError):
            continue
        if report is not None:
            metrics.set_store(uri, engines=int(report["engines"]), size=int(report["bytes"]),
                              reclaimed=int(report["reclaimed_bytes"]))


def mark_due(indices: dict[str, Any]) -> None:
    """Mark the engines of the EngineBuilds that reported new ones."""
    now = time.monotonic()
    indexes = Indexes(indices)
    while _due:
        ref = _due.pop()
        body = indexes.engine_build(*ref)
        if body is not None:
            _mark_build(ref, body, now, set())


async def run_forever(indices: dict[str, Any]) -> None:
    """At once, then every ``interval()`` or when woken."""
    _warned.clear()
    wake = _wake["event"] = asyncio.Event()
    full = True
    while True:
        _round["started"] = time.monotonic()
        try:
            await asyncio.to_thread(sweep if full else mark_due, indices)
        except Exception:
            log.exception("marking the engines in use failed; it runs again in %.0f s",
                          interval())
        finally:
            _round.pop("started", None)
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), interval())
            full = False
        except TimeoutError:
            full = True


@leadership.while_leading("kiln usage marks")
def start(kwargs: dict[str, Any]) -> Coroutine[Any, Any, None]:
    return run_forever(kwargs)


@kopf.on.event(GROUP, VERSION, EB_PLURAL)
async def engine_build_reported(body: kopf.Body, namespace: str | None, name: str | None,
                                **_: Any) -> None:
    """An EngineBuild reported a Ready or Cached engine this process has not marked: mark it
    now (a GC may run before the next round)."""
    if namespace is None or name is None:
        return
    if any(key not in _marked_keys for key in _used_keys(dict(body))):
        _due.add((namespace, name))
        wake = _wake.get("event")
        if wake is not None:
            wake.set()


@leadership.health_check
def stuck() -> str | None:
    """A round that has run for longer than ``STUCK_SECONDS`` (a hung store) is dead."""
    started = _round.get("started")
    if started is not None and time.monotonic() - started > STUCK_SECONDS:
        return f"marking engines used has run for {time.monotonic() - started:.0f} s"
    return None
