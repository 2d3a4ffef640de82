"""The EngineDeployment reconciler: gathers facts (pool, EngineBuild, Deployments), plans,
acts.

Level-based: every call recomputes from the object, the GPU nodes, the EngineBuild's status
and the owned Deployments, so running it twice, or after a crash, changes nothing. Called
from the work queue's threads (``kiln.handlers.workqueue``), which never run one object in
two threads at once; a lock per object also keeps other callers from interleaving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kiln import EB_PLURAL, ED_PLURAL, metrics
from kiln.api import EngineBuild, EngineDeployment
from kiln.config import OperatorConfig
from kiln.engine_deployment import render
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.plan import Decision, auto_targets, decide, served_products, summarize
from kiln.engine_deployment.pods import ServingFailure
from kiln.engine_deployment.pool import GpuNode, pool_products
from kiln.key import short_key
from kiln.kube import Kube
from kiln.labels import HASH_ANNOTATION
from kiln.status import Event

log = logging.getLogger(__name__)
REAPPLY_SECONDS = 600.0
"""Service and PodDisruptionBudget are applied again after this long (or when they change)."""
EventSink = Callable[[dict[str, Any], Event], None]


class World(Protocol):
    """What the operator last saw (Kopf's indexes)."""

    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def gpu_nodes(self) -> list[GpuNode]: ...

    def deployments(self, namespace: str, owner: str) -> list[ObservedDeployment]: ...

    def serving_failures(self, namespace: str, owner: str) -> list[ServingFailure]:
        """What kiln's programs in the owner's serving pods refused (``pods``)."""
        ...

    def referencing(self, namespace: str, build: str) -> list[dict[str, Any]]:
        """EngineDeployments whose ``engineBuildRef`` names ``build``."""
        ...


def needed_products(bodies: list[Mapping[str, Any]], build: str,
                    nodes: list[GpuNode]) -> dict[str, str]:
    """GPU products the EngineDeployments referencing ``build`` serve on."""
    products: dict[str, str] = {}
    for body in bodies:
        ed = EngineDeployment.model_validate(dict(body))
        if ed.spec.engine_build_ref.name != build:
            continue
        try:
            products |= served_products(ed, pool_products(nodes, ed.spec.pool.node_selector))
        except KeyError:
            continue  # an unknown GPU name: that object is stalled, it needs nothing
    return products


class EngineDeploymentReconciler:
    """Holds per-object locks and what was last applied of Services and budgets."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink) -> None:
        self.kube = kube
        self.config = config
        self.emit = emit
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._applied: dict[tuple[str, str, str], tuple[str, float]] = {}

    def _lock(self, *ref: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((ref[0], ref[1], ref[2]), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((ED_PLURAL, namespace, name), None)
        for kind in ("Service", "PodDisruptionBudget"):
            self._applied.pop((kind, namespace, name), None)
        metrics.forget_engines_served(f"{namespace}/{name}")

    # -- the loop --------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], world: World) -> Decision:
        """Bring one EngineDeployment's children, its build's auto targets and its status in
        line with what exists."""
        meta = body["metadata"]
        with self._lock(ED_PLURAL, meta["namespace"], meta["name"]):
            return self._reconcile(dict(body), world)

    def _reconcile(self, body: dict[str, Any], world: World) -> Decision:
        ed = EngineDeployment.model_validate(body)
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        uid = str(body["metadata"]["uid"])
        ref = ed.spec.engine_build_ref.name
        eb_body = world.engine_build(namespace, ref)
        eb = EngineBuild.model_validate(eb_body) if eb_body else None
        nodes = world.gpu_nodes()
        owned = [d for d in world.deployments(namespace, name) if uid in d.owner_uids]
        try:
            products = served_products(ed, pool_products(nodes, ed.spec.pool.node_selector))
        except KeyError as error:
            decision = Decision(stalled=("UnknownGPU", str(error.args[0])))
        else:
            decision = decide(ed, eb, products, owned)
        if (ed.spec.server.kind == "triton" and not ed.spec.server.image
                and not self.config.triton_image and not decision.stalled):
            decision = Decision(stalled=(
                "NoServerImage", "server.kind triton needs server.image (a Triton TensorRT-LLM "
                "image with the builder's TensorRT-LLM version), or the operator's "
                "KILN_TRITON_IMAGE"))
        hashes: dict[str, str] = {}
        if eb is not None and not decision.stalled and not decision.pending:
            hashes = self._apply(ed, eb, decision, owned)
        if eb_body is not None:
            self.sync_auto_targets(namespace, ref, world, current=body, seen=eb_body)
        _count_served(namespace, name, decision, owned, applied=bool(hashes))
        status, events = summarize(ed, decision, owned, hashes,
                                   world.serving_failures(namespace, name))
        new = status.to_dict()
        old = body.get("status") or {}
        if new != old:
            self.kube.patch_status(ED_PLURAL, namespace, name,
                                   {**{k: None for k in old if k not in new}, **new})
        for event in events:
            self.emit(body, event)
        return decision

    def _apply(self, ed: EngineDeployment, eb: EngineBuild, decision: Decision,
               owned: list[ObservedDeployment]) -> dict[str, str]:
        """Apply Deployments that differ, delete unwanted ones; the rendered hashes."""
        namespace = str(ed.metadata["namespace"])
        current = {d.name: d for d in owned}
        hashes = {}
        for serve in decision.serves:
            deployment = render.render_deployment(ed, eb, serve, self.config)
            digest = deployment["metadata"]["annotations"][HASH_ANNOTATION]
            hashes[serve.deployment] = digest
            seen = current.get(serve.deployment)
            if seen is None or seen.spec_hash != digest:
                log.info("applying Deployment %s/%s (%s, %s %s)", namespace, serve.deployment,
                         serve.label, serve.mode, short_key(serve.engine_key or "checkpoint"))
                self.kube.apply(deployment)
        for name in decision.delete:
            log.info("deleting Deployment %s/%s: its GPU product is no longer served",
                     namespace, name)
            self.kube.delete_deployment(namespace, name)
        children = [render.render_service(ed), render.render_pdb(ed)]
        if ed.spec.server.kind == "trtllm-serve":
            children.insert(0, render.render_llm_api_config(ed, eb))
        for obj in children:
            self._apply_cached(obj)
        return hashes

    def _apply_cached(self, obj: dict[str, Any]) -> None:
        ref = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        digest = render.spec_hash(obj)
        before = self._applied.get(ref)
        if before and before[0] == digest and time.monotonic() - before[1] < REAPPLY_SECONDS:
            return
        self.kube.apply(obj)
        self._applied[ref] = (digest, time.monotonic())

    # -- the EngineBuild's auto targets ----------------------------------------------------------

    def sync_auto_targets(self, namespace: str, build: str, world: World, *,
                          current: Mapping[str, Any] | None = None, gone: str | None = None,
                          seen: Mapping[str, Any] | None = None) -> list[str] | None:
        """Make the EngineBuild's ``status.autoTargets`` what its EngineDeployments need.

        ``current`` is a fresher copy of one referencing object than the index has; ``gone``
        the uid of one just deleted; ``seen`` the EngineBuild as the index has it (compared
        first, so that nothing is read when nothing changes). Returns the new list, if
        written.
        """
        with self._lock(EB_PLURAL, namespace, build):
            peers = {str(b["metadata"]["uid"]): dict(b)
                     for b in world.referencing(namespace, build)}
            if current is not None:
                peers[str(current["metadata"]["uid"])] = dict(current)
            peers.pop(gone or "", None)
            products = needed_products(list(peers.values()), build, world.gpu_nodes())
            if seen is not None and _differs(seen, products) is None:
                return None
            for _ in range(4):  # compare-and-swap on the fresh object
                body = self.kube.read_custom(EB_PLURAL, namespace, build)
                if body is None:
                    return None
                wanted = _differs(body, products)
                if wanted is None:
                    return None
                version = str(body["metadata"]["resourceVersion"])
                if self.kube.patch_status_at(EB_PLURAL, namespace, build,
                                             {"autoTargets": wanted}, version):
                    log.info("EngineBuild %s/%s autoTargets: %s", namespace, build, wanted)
                    self.emit(body, Event("Normal", "AutoTargets",
                                          "GPU products served by EngineDeployments: "
                                          + (", ".join(wanted) or "none")))
                    return wanted
        return None


def _count_served(namespace: str, name: str, decision: Decision,
                  owned: list[ObservedDeployment], *, applied: bool) -> None:
    """``kiln_engines_served``: this object's Deployments by what they serve (the ones just
    applied as rendered, the others as observed)."""
    modes = {d.name: d.mode for d in owned if d.name not in decision.delete}
    if applied:
        modes |= {s.deployment: s.mode for s in decision.serves}
    counts = {mode: 0 for mode in metrics.SERVING_MODES}
    for mode in modes.values():
        if mode in counts:
            counts[mode] += 1
    metrics.set_engines_served(f"{namespace}/{name}", counts)


def _differs(body: Mapping[str, Any], products: Mapping[str, str]) -> list[str] | None:
    """The auto targets ``products`` need, if the EngineBuild has others; else None."""
    eb = EngineBuild.model_validate(dict(body))
    wanted = auto_targets(eb.spec, products)
    return None if wanted == (eb.status.auto_targets if eb.status else []) else wanted
