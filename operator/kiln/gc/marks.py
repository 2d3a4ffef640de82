"""Used-marks: the engines a cluster uses, marked used in their store at most once per
``KILN_USED_MARK_SECONDS`` each, so that ``kiln gc`` run from any cluster sharing the store
keeps them; and the last GC's figures as metrics.

Each marker says how often its writer re-marks (``every``), so a GC keeps the engine for at
least two of those. A store that refuses a mark is counted (``kiln_used_mark_failures``) and
warned about once per store and leadership term. What was marked is kept to save writes; a GC
never relies on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kiln import metrics
from kiln.contract import layout
from kiln.errors import KilnError
from kiln.gc import collect
from kiln.store import EngineStore, open_store

log = logging.getLogger(__name__)


def used_keys(body: dict[str, Any]) -> list[str]:
    """The engines an EngineBuild's status says it uses: Ready or Cached, and the previous."""
    keys = []
    for engine in (body.get("status") or {}).get("engines") or []:
        keys.append(engine.get("previousKey"))
        if engine.get("state") in ("Ready", "Cached"):
            keys.append(engine.get("key"))
    return [k for k in keys if k]


class Marks:
    """What this process marked, per store and key; the stores it opened."""

    def __init__(self, identity: str, every: float,
                 open_: Callable[[str], EngineStore] = open_store) -> None:
        self.identity, self.every, self._open = identity, every, open_
        self._stores: dict[str, EngineStore] = {}
        self._marked: dict[tuple[str, str], float] = {}
        """(store, key) -> when this process last marked (or found marked) it."""
        self.marked_keys: set[str] = set()
        self._warned: set[str] = set()

    def new_term(self) -> None:
        """A new leadership term warns again about a store that refuses marks."""
        self._warned.clear()

    def store(self, uri: str) -> EngineStore:
        if uri not in self._stores:
            self._stores[uri] = self._open(uri)
        return self._stores[uri]

    def mark(self, uri: str, key: str, now: float) -> None:
        """Mark ``key`` used in ``uri`` unless this process did within ``every``."""
        if now - self._marked.get((uri, key), -self.every) < self.every:
            return
        try:
            self.store(uri).mark_used(key, self.identity, unless_within=self.every,
                                      every=self.every)
        except (KilnError, OSError) as error:
            metrics.record_used_mark_failure(uri)
            if uri not in self._warned:
                self._warned.add(uri)
                log.warning("could not mark engine %s used in %s (a GC may delete engines "
                            "this cluster uses; kiln_used_mark_failures counts each): %s",
                            key[:12], uri, error)
            return
        self._marked[(uri, key)] = now
        self.marked_keys.add(key)

    def mark_served(self, served: Iterable[tuple[str, str]], now: float) -> None:
        """Mark what serving Deployments run: (engine key, engine URI) each."""
        for key, where in served:
            try:
                store = layout.store_of(where, key)
            except ValueError:
                continue  # not an engine URI kiln wrote
            self.mark(store, key, now)

    def export(self, stores: Iterable[str]) -> None:
        """The last GC report of each store, as metrics."""
        for uri in stores:
            try:
                report = collect.last_report(self.store(uri))
            except (KilnError, OSError, ValueError):
                continue
            if report is not None:
                metrics.set_store(uri, engines=int(report["engines"]),
                                  size=int(report["bytes"]),
                                  reclaimed=int(report["reclaimed_bytes"]))
