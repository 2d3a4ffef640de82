"""EngineDeployment handlers: a change to an EngineDeployment, its EngineBuild, one of its
children (Deployments, Service, budget, ConfigMaps), or the GPU nodes marks the
EngineDeployments concerned due (and the EngineBuilds whose auto targets they decide); a work
queue reconciles them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

import kopf

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.domain.labels import ED_LABEL
from kiln.domain.pods import Seen, observe_pod
from kiln.domain.pool import GpuNode, gpu_node
from kiln.engine_build.engines import report_of
from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
from kiln.handlers import context, engine_build, leadership
from kiln.handlers.changes import BeyondStatus
from kiln.handlers.indexes import Indexes
from kiln.handlers.relists import Key, relists
from kiln.handlers.workqueue import WorkQueue

log = logging.getLogger(__name__)


@functools.cache
def reconciler() -> EngineDeploymentReconciler:
    return EngineDeploymentReconciler(context.kube(), context.config(), context.emit)


@leadership.new_term
def _fresh_reconciler() -> None:
    """A new term plans from the cluster: the reconciler's caches, backoffs and its memory
    of its own writes start empty."""
    reconciler.cache_clear()
    reconciler()  # made here, on the event loop, before any worker asks for it


def _reconcile(body: dict[str, Any], world: Indexes) -> None:
    """Reconcile in the shell, which maps every error to status and a backoff; this only
    keeps a worker alive should the shell itself fail."""
    try:
        reconciler().reconcile(body, world)
    except Exception:
        log.exception("reconcile of %s/%s failed outside its shell",
                      body["metadata"]["namespace"], body["metadata"]["name"])


WORKERS = 4


def _namespace(ref: tuple[str, str]) -> str:
    """Whose share of the workers a reconcile takes: its namespace's (a tenant's)."""
    return ref[0]


_queue: WorkQueue[tuple[str, str]] = WorkQueue(WORKERS, group=_namespace)
"""EngineDeployments due for a reconcile (see ``workqueue``): a GPU node's change marks them
all, and returns; each then runs once, however many events marked it."""
STUCK_SECONDS = 600.0
"""A reconcile running longer than this is hung: the liveness probe fails."""


@leadership.health_check
def stuck() -> str | None:
    """An EngineDeployment worker hung in one reconcile for longer than ``STUCK_SECONDS``."""
    return _queue.hung("EngineDeployment workers", STUCK_SECONDS)


@leadership.while_leading("kiln serving reconcile workers")
def run_queue(kwargs: dict[str, Any]) -> Coroutine[Any, Any, None]:
    """The reconcile workers over Kopf's indexes; a new leader reconciles every
    EngineDeployment once."""
    world = Indexes(kwargs)

    def work(ref: tuple[str, str], _: bool) -> None:
        ed = world.named(*ref)
        if ed is not None and not ed["metadata"].get("deletionTimestamp"):
            _reconcile(ed, world)
            delay = reconciler().next_try(*ref)
            if delay is not None:
                _queue.add_later(ref, delay)

    for ed in world.every():
        _queue.add((ed["metadata"]["namespace"], ed["metadata"]["name"]), periodic=True)
    return _queue.run(work)


def _mark(ed: Mapping[str, Any]) -> None:
    _queue.add((ed["metadata"]["namespace"], ed["metadata"]["name"]))


def _build_of(ed: Mapping[str, Any]) -> str:
    return str((ed.get("spec") or {}).get("engineBuildRef", {}).get("name", ""))


_refs: dict[str, tuple[str, str]] = {}
"""The EngineBuild each EngineDeployment (by uid) referenced when last seen, so that a changed
reference also marks the EngineBuild it left (the sweep would find it within a resync)."""


_eds_seen = BeyondStatus()
"""A status write of kiln's marks nothing (each pass would mark the next one)."""


@kopf.on.event(GROUP, VERSION, ED_PLURAL)
async def engine_deployment_changed(event: kopf.RawEvent, body: kopf.Body,
                                    **_: Any) -> None:
    """A change of an EngineDeployment marks the EngineBuilds it references and referenced
    due (their auto targets follow what EngineDeployments need, status included), and itself
    unless only its status moved; a deleted one is forgotten (its children go with it: they
    are owned)."""
    meta = body["metadata"]
    relists.saw(ED_PLURAL, event["type"], meta)
    namespace, ref = str(meta["namespace"]), _build_of(body)
    before = _refs.pop(meta["uid"], None)
    if before is not None and before != (namespace, ref):
        engine_build.mark(*before)
    engine_build.mark(namespace, ref)
    if event["type"] != "DELETED":
        _refs[meta["uid"]] = (namespace, ref)
    if not _eds_seen.moved(event["type"], body):
        return  # its status only
    if event["type"] == "DELETED":
        reconciler().forget(namespace, meta["name"])
        return
    if not meta.get("deletionTimestamp"):
        _mark(body)


@kopf.on.event(GROUP, VERSION, EB_PLURAL)
async def engine_build_for_serving(body: kopf.Body, namespace: str | None, name: str,
                                   **kwargs: Any) -> None:
    """An EngineBuild changed (engines ready, new keys): mark what serves it due."""
    for ed in Indexes(kwargs).referencing(str(namespace), name):
        _mark(ed)


async def serving_child_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                                resource: kopf.Resource, **kwargs: Any) -> None:
    """One of an EngineDeployment's children had an event (a Deployment's rollout progress,
    a Service, budget or ConfigMap deleted or edited, or kiln's own write): mark its owner
    due; the pass compares the child with what it renders."""
    meta = body["metadata"]
    relists.saw(resource.plural, event["type"], meta)
    owner = Indexes(kwargs).named(str(namespace), (meta.get("labels") or {}).get(ED_LABEL, ""))
    uids = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
    if owner is not None and owner["metadata"]["uid"] in uids:
        _mark(owner)


for _resource in (("apps", "v1", "deployments"), ("v1", "services"),
                  ("policy", "v1", "poddisruptionbudgets"), ("v1", "configmaps")):
    kopf.on.event(*_resource, labels={ED_LABEL: kopf.PRESENT},
                  id=f"serving_{_resource[-1]}_changed")(serving_child_changed)


_pods_seen = Seen()
"""What each serving pod last told: heartbeats of its status mark nothing."""


@kopf.on.event("v1", "pods", labels={ED_LABEL: kopf.PRESENT})
async def serving_pod_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                              uid: str, **kwargs: Any) -> None:
    """A serving pod moved (an init container failed, the server crash-loops, it cannot be
    scheduled): mark its EngineDeployment due, and its EngineBuild when the pod reports the
    engine missing or damaged (the EngineBuild checks it)."""
    relists.saw("pods", event["type"], body["metadata"])
    observed = observe_pod(dict(body))
    if not _pods_seen.moved(event["type"], uid, observed):
        return
    owner = Indexes(kwargs).named(str(namespace), body["metadata"]["labels"][ED_LABEL])
    if owner is not None:
        _mark(owner)
        if report_of(observed) is not None:
            engine_build.mark(str(namespace), _build_of(owner))


_nodes_seen: dict[str, GpuNode | None] = {}


@kopf.on.event("v1", "nodes")
async def node_changed(event: kopf.RawEvent, body: kopf.Body, name: str,
                       **kwargs: Any) -> None:
    """A GPU node came, went or changed labels: reconcile every EngineDeployment (their pools
    may have changed). Heartbeats and other status updates are ignored, on the event loop."""
    relists.saw("nodes", event["type"], body["metadata"])
    node = None if event["type"] == "DELETED" else gpu_node(dict(body))
    changed = _nodes_seen.get(name) != node
    if node is None:
        _nodes_seen.pop(name, None)
    else:
        _nodes_seen[name] = node
    if event["type"] is None or not changed:
        return  # the initial listing, or nothing a pool depends on
    log.info("GPU node %s %s", name, "gone" if node is None else f"is {node.product}")
    for ed in Indexes(kwargs).every():
        _mark(ed)
        engine_build.mark(str(ed["metadata"]["namespace"]), _build_of(ed))


def sweep(indices: dict[str, Any]) -> None:
    """Run by the operator-wide sweep, the safety net: mark every EngineDeployment due."""
    for ed in Indexes(indices).every():
        _queue.add_threadsafe((ed["metadata"]["namespace"], ed["metadata"]["name"]),
                              periodic=True)


def _forget(plural: str, key: Key, indices: dict[str, Any]) -> None:
    """What a DELETED event of a dropped object (``relists``) would have forgotten (a node's
    last labels are kept while a node of its name is indexed again)."""
    namespace, name, uid = key
    world = Indexes(indices)
    if plural == ED_PLURAL:
        _eds_seen.forget(str(uid))
        _refs.pop(str(uid), None)
        reconciler().forget(str(namespace), str(name))  # a new one of its name starts afresh
    elif plural == "pods":
        _pods_seen.forget(str(uid))
    elif plural == "nodes" and not any(n.name == name for n in world.gpu_nodes()):
        _nodes_seen.pop(str(name), None)


relists.on_drop(_forget, sweep)
