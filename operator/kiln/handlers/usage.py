"""Marks the engines this cluster references (every EngineBuild's current and previous ones)
used in their store, at most once per ``KILN_USED_MARK_SECONDS`` each, so that ``kiln gc`` run
from any cluster sharing the store keeps them; and exports what the last GC reported."""

from __future__ import annotations

import logging
import time
from typing import Any

from kiln import gc, metrics
from kiln.api import EngineBuild
from kiln.errors import KilnError
from kiln.handlers import context
from kiln.handlers.indexes import Indexes
from kiln.store import EngineStore, open_store

log = logging.getLogger(__name__)

_stores: dict[str, EngineStore] = {}
_marked: dict[tuple[str, str], float] = {}
"""(store, key) -> when this process last marked (or found marked) it."""


def _store(uri: str) -> EngineStore:
    if uri not in _stores:
        _stores[uri] = open_store(uri)
    return _stores[uri]


def interval() -> float:
    """How often the sweep below runs."""
    return max(1.0, min(600.0, context.config().used_mark_seconds / 4))


def sweep(indices: dict[str, Any]) -> None:
    """Run by the operator-wide sweep (while leading)."""
    every = context.config().used_mark_seconds
    now = time.monotonic()
    stores: set[str] = set()
    for ref, body in Indexes(indices).every_engine_build():
        try:
            uri = context.engine_builds().store_uri(str(ref[0]),
                                                    EngineBuild.model_validate(body))
        except (KilnError, ValueError):
            continue
        stores.add(uri)
        for engine in (body.get("status") or {}).get("engines") or []:
            keys = [engine.get("previousKey")]
            if engine.get("state") in ("Ready", "Cached"):
                keys.append(engine.get("key"))
            for key in filter(None, keys):
                if now - _marked.get((uri, key), -every) < every:
                    continue
                try:
                    _store(uri).mark_used(key, context.identity(), unless_within=every)
                except (KilnError, OSError) as error:
                    log.warning("could not mark engine %s used in %s: %s", key[:12], uri, error)
                    continue
                _marked[(uri, key)] = now
    for uri in stores:
        try:
            report = gc.last_report(_store(uri))
        except (KilnError, OSError, ValueError):
            continue
        if report is not None:
            metrics.set_store(uri, engines=int(report["engines"]), size=int(report["bytes"]),
                              reclaimed=int(report["reclaimed_bytes"]))
