"""EngineDeployment handlers: a change to an EngineDeployment, its EngineBuild, one of its
Deployments, or the GPU nodes marks the EngineDeployments concerned due; a work queue
reconciles them."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.engine_deployment.pods import serving_failure
from kiln.engine_deployment.pool import GpuNode, gpu_node
from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
from kiln.errors import KilnError
from kiln.handlers import context
from kiln.handlers.indexes import Indexes
from kiln.handlers.workqueue import WorkQueue
from kiln.labels import ED_LABEL

log = logging.getLogger(__name__)


@functools.cache
def reconciler() -> EngineDeploymentReconciler:
    return EngineDeploymentReconciler(context.kube(), context.config(), context.emit)


def _reconcile(body: dict[str, Any], world: Indexes) -> None:
    """Reconcile; a transient error is logged and retried by the sweep (Kopf does not retry
    events)."""
    try:
        reconciler().reconcile(body, world)
    except KilnError as error:
        if not error.retryable:
            context.stall(ED_PLURAL, body, error)
            return
        log.warning("reconcile of %s/%s will be retried: %s: %s",
                    body["metadata"]["namespace"], body["metadata"]["name"], error.reason,
                    error.message)


WORKERS = 4
_queue: WorkQueue[tuple[str, str]] = WorkQueue(WORKERS)
"""EngineDeployments due for a reconcile (see ``workqueue``): a GPU node's change marks them
all, and returns; each then runs once, however many events marked it."""


@kopf.on.startup()
async def start_queue(memo: kopf.Memo, **kwargs: Any) -> None:
    """Start the reconcile workers over Kopf's indexes."""
    world = Indexes(kwargs)

    def work(ref: tuple[str, str], _: bool) -> None:
        ed = world.named(*ref)
        if ed is not None and not ed["metadata"].get("deletionTimestamp"):
            _reconcile(ed, world)

    memo["deployment_queue"] = asyncio.create_task(_queue.run(work),
                                                   name="kiln serving reconcile workers")


@kopf.on.cleanup()
async def stop_queue(memo: kopf.Memo, **_: Any) -> None:
    await context.stop_task(memo, "deployment_queue")


def _mark(ed: Mapping[str, Any]) -> None:
    _queue.add((ed["metadata"]["namespace"], ed["metadata"]["name"]))


@kopf.on.event(GROUP, VERSION, ED_PLURAL)
async def engine_deployment_changed(event: kopf.RawEvent, body: kopf.Body,
                                    **kwargs: Any) -> None:
    """Any change of an EngineDeployment marks it due; a deleted one gives up its auto
    targets (its children go with it: they are owned)."""
    meta = body["metadata"]
    if event["type"] == "DELETED":
        ref = (body.get("spec") or {}).get("engineBuildRef", {}).get("name", "")
        reconciler().forget(meta["namespace"], meta["name"])
        await asyncio.to_thread(reconciler().sync_auto_targets, meta["namespace"], ref,
                                Indexes(kwargs), gone=meta["uid"])
        return
    if not meta.get("deletionTimestamp"):
        _mark(body)


@kopf.on.event(GROUP, VERSION, EB_PLURAL)
async def engine_build_for_serving(body: kopf.Body, namespace: str | None, name: str,
                                   **kwargs: Any) -> None:
    """An EngineBuild changed (engines ready, new keys): mark what serves it due."""
    for ed in Indexes(kwargs).referencing(str(namespace), name):
        _mark(ed)


@kopf.on.event("apps", "v1", "deployments", labels={ED_LABEL: kopf.PRESENT})
async def serving_deployment_changed(body: kopf.Body, namespace: str | None,
                                     **kwargs: Any) -> None:
    """A serving Deployment moved (rollout progress, readiness): mark its owner due."""
    owner = Indexes(kwargs).named(str(namespace), body["metadata"]["labels"][ED_LABEL])
    uids = {ref.get("uid") for ref in body["metadata"].get("ownerReferences") or []}
    if owner is not None and owner["metadata"]["uid"] in uids:
        _mark(owner)


@kopf.on.event("v1", "pods", labels={ED_LABEL: kopf.PRESENT})
async def serving_pod_changed(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
    """A serving pod's kiln program refused (version guard, fetch-engine): mark its owner
    due, so its status says why (other pod changes reach it through the Deployment)."""
    if serving_failure(dict(body)) is None:
        return
    owner = Indexes(kwargs).named(str(namespace), body["metadata"]["labels"][ED_LABEL])
    if owner is not None:
        _mark(owner)


_nodes_seen: dict[str, GpuNode | None] = {}


@kopf.on.event("v1", "nodes")
async def node_changed(event: kopf.RawEvent, body: kopf.Body, name: str,
                       **kwargs: Any) -> None:
    """A GPU node came, went or changed labels: reconcile every EngineDeployment (their pools
    may have changed). Heartbeats and other status updates are ignored, on the event loop."""
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


def sweep(indices: dict[str, Any]) -> None:
    """Run by the operator-wide sweep, the safety net: mark every EngineDeployment due."""
    for ed in Indexes(indices).every():
        _queue.add_threadsafe((ed["metadata"]["namespace"], ed["metadata"]["name"]))
