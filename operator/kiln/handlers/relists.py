"""Objects deleted while a watch was away, dropped from Kopf's indexes.

Kopf drops an object's index entries on its DELETED event only. A watch that comes back with
a resource version the API server no longer has (410 Gone: after a restart of the API server,
a long disconnect) lists again instead, and the deletions in between are never delivered: the
indexes would keep those objects for ever (a build Job deleted then looks Running, a serving
Deployment looks present, a GPU node gone still looks in the pool).

A re-list shows as events of type None for objects kiln has seen before. Once they have been
quiet for ``QUIET_SECONDS``, kiln lists every indexed kind once (with the watches' own
selectors; cluster-wide, or per namespace when it watches namespaces) and drops from the
indexes each object the list does not have and no event has told of since the list began;
then it marks everything due. One list per kind and re-list, none while nothing re-lists
(the initial listing is not a re-list). It runs on every replica: a standby that takes over
reconciles from indexes already repaired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import kopf

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.handlers import context
from kiln.handlers.settings import SERVER_SIDE_LABELS

log = logging.getLogger(__name__)

QUIET_SECONDS = 10.0
"""A re-list is over when no event of type None of a known object came for this long."""
LONGEST_SECONDS = 60.0
"""Re-lists that keep coming (a watch that flaps) are checked this long after the first."""
RETRY_CAP_SECONDS = 300.0
"""A check that failed is tried again after the quiet, doubling up to this."""

Key = tuple[Any, Any, Any]
"""An object as Kopf's indexes key it: (namespace, name, uid)."""


@dataclass(frozen=True)
class Kind:
    """An indexed kind: its name, API path, the watch's label selector, its indexes."""

    name: str
    api: str
    plural: str
    selector: str | None
    indexes: tuple[str, ...]
    namespaced: bool = True


KINDS = {k.plural: k for k in (
    Kind("Job", "/apis/batch/v1", "jobs", SERVER_SIDE_LABELS["batch", "jobs"],
         ("build_jobs",)),
    Kind("Pod", "/api/v1", "pods", SERVER_SIDE_LABELS["v1", "pods"],
         ("build_pods", "serving_pods")),
    Kind("Deployment", "/apis/apps/v1", "deployments",
         SERVER_SIDE_LABELS["apps", "deployments"], ("serving_deployments",)),
    Kind("Service", "/api/v1", "services", SERVER_SIDE_LABELS["v1", "services"],
         ("serving_services",)),
    Kind("PodDisruptionBudget", "/apis/policy/v1", "poddisruptionbudgets",
         SERVER_SIDE_LABELS["policy", "poddisruptionbudgets"], ("serving_budgets",)),
    Kind("ConfigMap", "/api/v1", "configmaps", SERVER_SIDE_LABELS["v1", "configmaps"],
         ("serving_configmaps",)),
    Kind("Node", "/api/v1", "nodes", None, ("gpu_nodes",), namespaced=False),
    Kind("EngineBuild", f"/apis/{GROUP}/{VERSION}", EB_PLURAL, None, ("engine_builds",)),
    Kind("EngineDeployment", f"/apis/{GROUP}/{VERSION}", ED_PLURAL, None,
         ("engine_deployments",)),
)}
"""Each kind whose events reach ``Relists.saw`` (``kiln.handlers.indexes``). Events' own
index (``build_create_failures``) is not here: an Event lost that way leaves a stale
``FailedCreate``, read only while its Job has no newer pod."""

Lister = Callable[[Kind, str | None], set[str]]
"""The uids of a kind's objects now (in a namespace, or everywhere for None)."""


class _Discarding(Protocol):
    def _discard(self, key: Key) -> None: ...


class Relists:
    """When each indexed object last had an event, and whether a re-list wants a check."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 quiet: float = QUIET_SECONDS) -> None:
        self.clock, self.quiet = clock, quiet
        self.clusterwide = True
        """Whether Kopf watches the whole cluster, or namespaces (listed one by one)."""
        self._last: dict[str, dict[Key, float]] = {}
        self._relisted: float | None = None
        """The latest event of type None of an object seen before, not yet checked."""
        self._first: float | None = None
        """The first such event since the last check."""
        self._failures = 0
        self._forget: list[Callable[[str, Key, dict[str, Any]], None]] = []
        self._mark: list[Callable[[dict[str, Any]], None]] = []

    def saw(self, kind: str, event_type: str | None, meta: Mapping[str, Any]) -> None:
        """An event of ``kind`` (a plural of ``KINDS``), on the event loop."""
        key: Key = (meta.get("namespace"), meta.get("name"), meta.get("uid"))
        last = self._last.setdefault(kind, {})
        if event_type == "DELETED":
            last.pop(key, None)
            return
        now = self.clock()
        if event_type is None and key in last:
            self._relisted = now  # listed again: a watch came back to 410 Gone
            if self._first is None:
                self._first = now
        last[key] = now

    def due(self) -> bool:
        """A re-list is over (or re-lists went on for ``LONGEST_SECONDS``), not checked yet;
        after a failed check, once its backoff passed."""
        if self._relisted is None or self._first is None:
            return False
        now = self.clock()
        wait = min(RETRY_CAP_SECONDS, self.quiet * 2.0 ** min(self._failures, 16))
        return now - self._relisted >= wait or now - self._first >= max(wait, LONGEST_SECONDS)

    def retry_later(self) -> None:
        """A check that failed: due again after a backoff."""
        self._failures += 1
        self._relisted = self._first = self.clock()

    def on_drop(self, forget: Callable[[str, Key, dict[str, Any]], None],
                mark: Callable[[dict[str, Any]], None]) -> None:
        """Register what a DELETED event would have done: ``forget`` an object (by plural,
        key and the indexes, which may hold a new object of its name), and ``mark`` what
        depends on it due (from the indexes: a sweep)."""
        self._forget.append(forget)
        self._mark.append(mark)

    def targets(self) -> list[tuple[Kind, str | None]]:
        """What to list: each kind with objects, cluster-wide or per namespace."""
        found: list[tuple[Kind, str | None]] = []
        for plural, last in self._last.items():
            kind = KINDS[plural]
            if not last:
                continue
            if self.clusterwide or not kind.namespaced:
                found.append((kind, None))
            else:
                found += [(kind, ns) for ns in sorted({key[0] for key in last})]
        return found

    def begin(self) -> float:
        """Start a check (on the loop): the re-lists until now are covered by it."""
        self._relisted = self._first = None
        return self.clock()

    def gone(self, listed: Mapping[str, set[str]], began: float) -> list[tuple[str, Key]]:
        """Objects of each kind in ``listed`` (kind -> uids now) that the list lacks and that
        no event told of since ``began`` (on the loop)."""
        return [(plural, key) for plural, uids in listed.items()
                for key, at in self._last.get(plural, {}).items()
                if key[2] not in uids and at < began]

    def drop(self, indices: dict[str, Any], gone: Iterable[tuple[str, Key]]) -> int:
        """Drop ``gone`` from Kopf's ``indices`` and forget them (on the loop); how many."""
        count = 0
        for plural, key in gone:
            kind = KINDS[plural]
            self._last.get(plural, {}).pop(key, None)
            namespace, name, _ = key
            log.info("dropped %s %s from the indexes: it was deleted while a watch was away "
                     "(a re-list no longer has it)", kind.name,
                     f"{namespace}/{name}" if namespace else name)
            for index in kind.indexes:
                # Kopf's indexers' own protocol: kopf.Index has no public way to drop one.
                cast(_Discarding, indices[index])._discard(key)
            for forget in self._forget:
                forget(plural, key, indices)
            count += 1
        if count:
            for mark in self._mark:
                mark(indices)
        return count

    async def check(self, indices: dict[str, Any], lister: Lister) -> int:
        """List what a re-list may have missed and drop what is gone; how many."""
        targets = self.targets()
        began = self.begin()
        listed: dict[str, set[str]] = {}
        failed: list[str] = []
        for kind, namespace in targets:
            if kind.plural in failed:
                continue
            try:
                uids = await asyncio.to_thread(lister, kind, namespace)
            except Exception as error:  # judge the kinds that listed; retry later
                log.warning("could not list %s after a watch re-list: %s", kind.plural, error)
                failed.append(kind.plural)
                listed.pop(kind.plural, None)
                continue
            listed.setdefault(kind.plural, set()).update(uids)
        if failed:
            self.retry_later()
        else:
            self._failures = 0
        return self.drop(indices, self.gone(listed, began))


relists = Relists()
"""The operator's: the handlers report every event of an indexed kind to it."""


def list_uids(kind: Kind, namespace: str | None) -> set[str]:
    """The uids of ``kind``'s objects now, with the watch's selector (a worker thread)."""
    where = f"/namespaces/{namespace}" if namespace else ""
    found = context.kube().api.request(
        "GET", f"{kind.api}{where}/{kind.plural}",
        query={"labelSelector": kind.selector} if kind.selector else None)
    return {str(item["metadata"]["uid"]) for item in (found or {}).get("items") or []}


async def run(indices: dict[str, Any], lister: Lister = list_uids,
              every: float = 1.0) -> None:
    """Check after each re-list, for ever; a check that fails is tried again."""
    while True:
        await asyncio.sleep(every)
        if not relists.due():
            continue
        try:
            await relists.check(indices, lister)
        except Exception as error:  # a bug: logged, tried again after a backoff
            log.exception("could not check the indexes after a watch re-list: %s", error)
            relists.retry_later()


@kopf.on.startup()
async def start(memo: kopf.Memo, **kwargs: Any) -> None:
    """The check, on every replica (it writes nothing)."""
    memo["kiln relists"] = asyncio.create_task(run(kwargs), name="kiln relists")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await context.stop_task(memo, "kiln relists")
