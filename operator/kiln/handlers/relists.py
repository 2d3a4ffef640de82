"""Objects a watch re-list no longer lists, dropped from Kopf's indexes.

Kopf drops an object's index entries on its DELETED event only. A watch that comes back with
a resource version the API server no longer has (410 Gone: after a restart of the API server,
a long disconnect) lists again instead, and the deletions in between are never delivered: the
indexes keep those objects for ever (a build Job deleted then looks Running, a serving
Deployment looks present). Kopf gives every object a re-list still has one event of type None;
so an object of that stream seen last before the listing began, once the listing is over, is
gone. Its entries are dropped from every index of its kind on the event loop (where Kopf
writes them), before a sweep: that sweep then reconciles what depended on it. No request is
made.

A stream is the whole cluster, or one namespace when the operator watches namespaces. A
listing that finds none of kiln's objects of a kind (every one deleted meanwhile) brings no
event, so it is not seen: a watch with no object left to index is not judged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)

QUIET_SECONDS = 10.0
"""A listing is over when no event of type None came for this long; one that comes after
that begins a new listing."""

Key = tuple[Any, Any, Any]
"""An object as Kopf's indexes key it: (namespace, name, uid)."""

INDEXES = {
    "jobs": ("Job", ("build_jobs",)),
    "pods": ("Pod", ("build_pods", "serving_pods")),
    "deployments": ("Deployment", ("serving_deployments",)),
    "nodes": ("Node", ("gpu_nodes",)),
    "enginebuilds": ("EngineBuild", ("engine_builds",)),
    "enginedeployments": ("EngineDeployment", ("engine_deployments",)),
}
"""Each kind whose events reach ``Relists.saw`` (by plural): its name and its indexes
(``kiln.handlers.indexes``). Events' own index (``build_create_failures``) is not here: an
Event lost that way only leaves a stale ``FailedCreate``, read while its Job has no pod."""


class _Discarding(Protocol):
    def _discard(self, key: Key) -> None: ...


class Relists:
    """When each indexed object last had an event, and when each stream last listed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 quiet: float = QUIET_SECONDS) -> None:
        self.clock, self.quiet = clock, quiet
        self.clusterwide = True
        """Whether Kopf watches the whole cluster (one stream per kind) or namespaces."""
        self._last: dict[str, dict[Key, float]] = {}
        self._listing: dict[tuple[str, str | None], tuple[float, float]] = {}
        """(kind, namespace or None) -> (first, latest) event of type None of its listing."""

    def saw(self, kind: str, event_type: str | None, meta: Mapping[str, Any]) -> None:
        """An event of ``kind`` (a plural of ``INDEXES``), on the event loop."""
        key: Key = (meta.get("namespace"), meta.get("name"), meta.get("uid"))
        now = self.clock()
        if event_type == "DELETED":
            self._last.get(kind, {}).pop(key, None)
            return
        if event_type is None:
            stream = (kind, None if self.clusterwide else key[0])
            first, latest = self._listing.get(stream, (now, now))
            if now - latest > self.quiet:
                first = now  # a new listing (the first one at start, then re-lists)
            self._listing[stream] = (first, now)
        self._last.setdefault(kind, {})[key] = now

    def gone(self) -> list[tuple[str, Key]]:
        """Objects the last listing of their stream, over now, did not list (each once)."""
        now = self.clock()
        found = []
        for (kind, namespace), (first, latest) in self._listing.items():
            if now - latest < self.quiet:
                continue  # still listing
            last = self._last.get(kind, {})
            for key, at in list(last.items()):
                if at < first and (namespace is None or key[0] == namespace):
                    found.append((kind, key))
                    del last[key]
        return found

    def drop_gone(self, indices: Mapping[str, Any]) -> int:
        """Drop what ``gone`` finds from Kopf's ``indices`` (on the event loop); how many."""
        found = self.gone()
        for kind, key in found:
            namespace, name, _ = key
            what, indexes = INDEXES[kind]
            log.info("dropped %s %s from the indexes: a watch re-list no longer lists it (its "
                     "deletion never arrived)", what, f"{namespace}/{name}" if namespace else name)
            for index in indexes:
                # Kopf's indexers' own protocol (kopf.Index keeps no public way to drop one).
                cast(_Discarding, indices[index])._discard(key)
        return len(found)


relists = Relists()
"""The operator's: the handlers report every event of an indexed kind to it."""
