"""EngineBuild handlers: every change to an EngineBuild or to one of its Jobs marks it due;
a work queue reconciles it."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import kopf

from kiln import EB_PLURAL, GROUP, VERSION
from kiln.domain.labels import KEY_LABEL
from kiln.domain.pods import Seen, observe_pod
from kiln.engine_build.jobs import ObservedJob, observe
from kiln.engine_build.queued import GROUP as KUEUE_GROUP
from kiln.engine_build.queued import PLURAL as WORKLOADS
from kiln.engine_build.queued import VERSION as KUEUE_VERSION
from kiln.engine_build.queued import ObservedWorkload, observe_workload
from kiln.handlers import context, leadership
from kiln.handlers.changes import BeyondStatus
from kiln.handlers.indexes import (
    Indexes,
    create_failure,
    is_build_create_failure,
    is_build_workload,
)
from kiln.handlers.relists import Key, relists
from kiln.handlers.workqueue import WorkQueue

log = logging.getLogger(__name__)
WORKERS = 8
"""Reconciles at once: each mostly waits on the API server or the store."""


def _reconcile(body: dict[str, Any], indexes: Indexes) -> None:
    """Reconcile in the shell, which maps every error to status and a backoff; this only
    keeps a worker alive should the shell itself fail."""
    try:
        context.engine_builds().reconcile(body, indexes)
    except Exception:
        log.exception("reconcile of %s/%s failed outside its shell",
                      body["metadata"]["namespace"], body["metadata"]["name"])


@leadership.new_term
def _fresh_reconciler() -> None:
    """A new term plans from the cluster: the reconciler's caches, backoffs and its memory
    of its own writes start empty."""
    context.engine_builds.cache_clear()
    context.engine_builds()  # made here, on the event loop, before any worker asks for it


Ref = tuple[str, str]
def _namespace(ref: tuple[str, str]) -> str:
    """Whose share of the workers a reconcile takes: its namespace's (a tenant's)."""
    return ref[0]


_queue: WorkQueue[Ref] = WorkQueue(WORKERS, group=_namespace)
"""EngineBuilds due for a reconcile: the handlers below only mark them (see ``workqueue``)."""
STUCK_SECONDS = 600.0
"""A reconcile running longer than this is hung: the liveness probe fails."""


@leadership.health_check
def stuck() -> str | None:
    """A EngineBuild worker hung in one reconcile for longer than ``STUCK_SECONDS``."""
    return _queue.hung("EngineBuild workers", STUCK_SECONDS)


@leadership.while_leading("kiln reconcile workers")
def run_queue(kwargs: dict[str, Any]) -> Coroutine[Any, Any, None]:
    """The reconcile workers, over Kopf's indexes; a new leader reconciles every EngineBuild
    once (changes it saw while standing by are marked already)."""
    indexes = Indexes(kwargs)

    def work(ref: Ref, _moved: bool) -> None:
        body = indexes.engine_build(*ref)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            _reconcile(body, indexes)
            delay = context.engine_builds().next_try(*ref)
            if delay is not None:
                _queue.add_later(ref, delay)

    for ref, _ in indexes.every_engine_build():
        _queue.add(ref, periodic=True)
    return _queue.run(work)


def _mark(namespace: str, name: str) -> None:
    _queue.add((namespace, name))


def mark(namespace: str, name: str) -> None:
    """Mark an EngineBuild due (on the event loop): its EngineDeployments or pool changed, or
    a serving pod reports its engine missing or damaged."""
    if name:
        _mark(namespace, name)


def mark_threadsafe(namespace: str, name: str) -> None:
    """Mark an EngineBuild due from another thread."""
    _queue.add_threadsafe((namespace, name))


_ebs_seen = BeyondStatus()
"""A status write of kiln's marks nothing (each pass would mark the next one)."""


@kopf.on.event(GROUP, VERSION, EB_PLURAL)
async def engine_build_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                               name: str, **_: Any) -> None:
    """A change of an EngineBuild beyond its status (kiln's own write) marks it due."""
    relists.saw(EB_PLURAL, event["type"], body["metadata"])
    if not _ebs_seen.moved(event["type"], body):
        return
    if event["type"] == "DELETED":
        context.engine_builds().forget(str(namespace), name)
        return
    if not body["metadata"].get("deletionTimestamp"):
        _mark(str(namespace), name)


_jobs_seen: dict[str, ObservedJob] = {}
"""What each build Job (by uid) last told the planner: other changes reconcile nothing."""


@kopf.on.event("batch", "v1", "jobs", labels={KEY_LABEL: kopf.PRESENT})
async def build_job_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                            uid: str, **_: Any) -> None:
    """A build Job moved (its state, failure or owners): mark every EngineBuild that owns
    it due."""
    relists.saw("jobs", event["type"], body["metadata"])
    observed = observe(dict(body))
    if event["type"] == "DELETED":
        _jobs_seen.pop(uid, None)
    elif _jobs_seen.get(uid) == observed:
        return  # pod counts, ready counts, timestamps: nothing the planner reads
    else:
        _jobs_seen[uid] = observed
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "EngineBuild":
            _mark(str(namespace), ref["name"])


_pods_seen = Seen()
"""What each build pod last told: heartbeats of its status mark nothing."""


def _mark_job_owners(indexes: Indexes, namespace: str, job: str) -> None:
    found = indexes.job_named(namespace, job)
    for owner in found.owner_names if found else ():
        _mark(namespace, owner)


@kopf.on.event("v1", "pods", labels={KEY_LABEL: kopf.PRESENT})
async def build_pod_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                            uid: str, **kwargs: Any) -> None:
    """A build pod moved (scheduled, refused, pulling, failed): mark its Job's EngineBuilds
    due, so their status says why within seconds."""
    relists.saw("pods", event["type"], body["metadata"])
    observed = observe_pod(dict(body))
    if not _pods_seen.moved(event["type"], uid, observed):
        return
    _mark_job_owners(Indexes(kwargs), str(namespace), observed.owner)


@kopf.on.event("v1", "events", when=is_build_create_failure)
async def build_create_failed(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
    """The Job controller could not create a build pod (quota, admission): mark the Job's
    EngineBuilds due."""
    _mark_job_owners(Indexes(kwargs), str(namespace), create_failure(body).job)


_workloads_seen: dict[str, ObservedWorkload] = {}
"""What each build Job's Workload (by uid) last told: Kueue's other writes mark nothing."""


@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, WORKLOADS, when=is_build_workload)
async def build_workload_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                                 uid: str, **kwargs: Any) -> None:
    """Kueue admitted a build Job's Workload, or tells why not: mark its EngineBuilds due."""
    observed = observe_workload(dict(body))
    if observed is None:
        return
    if event["type"] == "DELETED":
        _workloads_seen.pop(uid, None)
    elif _workloads_seen.get(uid) == observed:
        return
    else:
        _workloads_seen[uid] = observed
    _mark_job_owners(Indexes(kwargs), str(namespace), observed.job)


def sweep(indices: dict[str, Any]) -> None:
    """Run by the operator-wide sweep: mark every EngineBuild due, level-based (a Job deleted
    behind kiln's back or an event lost in a re-list is repaired within one round; a pass
    over an object whose facts did not change makes no request). Where ``pollInterval`` is
    due the pass re-reads the weights identity itself."""
    for ref, body in Indexes(indices).every_engine_build():
        if not body["metadata"].get("deletionTimestamp"):
            _queue.add_threadsafe((str(ref[0]), ref[1]), periodic=True)


def _forget(plural: str, key: Key, indices: dict[str, Any]) -> None:
    """What a DELETED event of a dropped object (``relists``) would have forgotten."""
    namespace, name, uid = key
    if plural == "jobs":
        _jobs_seen.pop(str(uid), None)
    elif plural == "pods":
        _pods_seen.forget(str(uid))
    elif plural == EB_PLURAL:
        _ebs_seen.forget(str(uid))  # and its cached identity and backoff: a new object of
        context.engine_builds().forget(str(namespace), str(name))  # its name starts afresh


relists.on_drop(_forget, sweep)
