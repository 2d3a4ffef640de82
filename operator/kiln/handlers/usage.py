"""Runs the used-marks (``kiln.gc.marks``) while leading: as soon as a term starts (not one
interval later), then every ``interval()``; an EngineBuild reporting an engine not marked yet
wakes it at once. The handlers here only read the indexes and mark work due.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

import kopf

from kiln import EB_PLURAL, GROUP, VERSION
from kiln.api import EngineBuild
from kiln.errors import KilnError
from kiln.gc.marks import Marks, used_keys
from kiln.handlers import context, leadership
from kiln.handlers.indexes import Indexes

log = logging.getLogger(__name__)

_due: set[tuple[str, str]] = set()
"""EngineBuilds that reported an engine not marked yet."""
_wake: dict[str, asyncio.Event] = {}
_round: dict[str, float] = {}
STUCK_SECONDS = 600.0


@functools.cache
def marks() -> Marks:
    return Marks(context.identity(), context.config().used_mark_seconds)


def interval() -> float:
    """How often the marking runs."""
    return max(1.0, min(600.0, context.config().used_mark_seconds / 4))


def _mark_build(ref: tuple[str, str], body: dict[str, Any], now: float,
                stores: set[str]) -> None:
    keys = used_keys(body)
    if not keys:
        return
    try:
        uri = context.engine_builds().engines.store_uri(str(ref[0]),
                                                        EngineBuild.model_validate(body))
    except (KilnError, ValueError):
        return
    stores.add(uri)
    for key in keys:
        marks().mark(uri, key, now)


def sweep(indices: dict[str, Any]) -> None:
    """Mark every engine in use; export the GC's last report of each store."""
    now = time.monotonic()
    stores: set[str] = set()
    indexes = Indexes(indices)
    for ref, body in indexes.every_engine_build():
        _mark_build(ref, body, now, stores)
    marks().mark_served(((d.engine_key, d.engine_uri) for ed in indexes.every()
                         for d in indexes.deployments(ed["metadata"]["namespace"],
                                                      ed["metadata"]["name"])
                         if d.engine_key and d.engine_uri), now)
    marks().export(stores)


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
    marks().new_term()
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
    if any(key not in marks().marked_keys for key in used_keys(dict(body))):
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
