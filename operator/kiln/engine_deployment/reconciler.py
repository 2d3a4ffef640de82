"""The EngineDeployment reconciler: gathers facts (pool, EngineBuild, children), plans,
acts.

Level-based: every call recomputes from the object, the GPU nodes, the EngineBuild's status
and the owned children as the watches show them (a child missing or edited is applied again;
one as rendered costs no request), so running it twice, or after a crash, changes nothing. Called
from the work queue's threads (``kiln.handlers.workqueue``), which never run one object in
two threads at once; a lock per object also keeps other callers from interleaving. It is the
only writer of EngineDeployment status (a stall included) and writes nothing else's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kiln import ED_PLURAL, metrics
from kiln.api import EngineBuild, EngineDeployment, EngineDeploymentStatus
from kiln.config import OperatorConfig
from kiln.contract.key import short_key
from kiln.domain import pod_policy
from kiln.domain.labels import HASH_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.domain.pool import GpuNode, pool_products
from kiln.domain.status import Event, set_conditions
from kiln.engine_deployment import render
from kiln.engine_deployment.children import ObservedChild, drifted
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.plan import Decision, decide, summarize
from kiln.engine_deployment.trouble import Trouble, trouble
from kiln.errors import KilnError
from kiln.kube.client import Kube
from kiln.reconcile.shell import Outcome, Pass, Shell, parse
from kiln.reconcile.written import WrittenStatus
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
EventSink = Callable[[dict[str, Any], Event], None]


class World(Protocol):
    """What the operator last saw (Kopf's indexes)."""

    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def gpu_nodes(self) -> list[GpuNode]: ...

    def deployments(self, namespace: str, owner: str) -> list[ObservedDeployment]: ...

    def serving_pods(self, namespace: str, owner: str) -> list[ObservedPod]: ...

    def children(self, namespace: str, owner: str) -> list[ObservedChild]: ...


class EngineDeploymentReconciler:
    """Runs in the shell; what exists of the children is read from the watches
    (``World``), never remembered."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.kube = kube
        self.config = config
        self.emit = emit
        self.clock = clock or (lambda: datetime.now(UTC).replace(microsecond=0))
        self.written = WrittenStatus(
            lambda namespace, name, patch: kube.patch_status(ED_PLURAL, namespace, name, patch))
        self.shell = Shell("EngineDeployment", self.written, emit, log)
        """The per-object lock, backoff and error policy both reconcilers share."""
        self.trust = Trust.from_config(config)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept of a deleted object."""
        self.shell.forget(namespace, name)
        metrics.forget_engines_served(f"{namespace}/{name}")

    # -- the loop --------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], world: World) -> Outcome[Decision]:
        """Bring one EngineDeployment's children and its status in line with what exists, in
        the shell (``kiln.reconcile.shell``: its error policy, lock and backoff). A failure
        that may heal is retried after a per-object backoff, or at once when what it read
        changed (its spec, its EngineBuild, its Deployments, the pool: serving follows its
        EngineBuild at once)."""
        return self.shell.run(body, Pass(
            run=lambda fresh: self._reconcile(fresh, world),
            inputs=lambda fresh: _inputs(fresh, world),
            retrying=self._retrying, stalled=self._stalled))

    def next_try(self, namespace: str, name: str) -> float | None:
        """Seconds until a backing-off object is due again, or None."""
        return self.shell.next_try(namespace, name)

    def _retrying(self, body: dict[str, Any], error: KilnError,
                  message: str) -> tuple[dict[str, Any], list[Event]]:
        """``Retrying ...`` in ``Reconciling``, not ``Ready`` (what serves may be stale
        meanwhile); ``observedGeneration`` stays: this spec was not applied."""
        ed = parse(EngineDeployment, body)
        generation = int(body["metadata"].get("generation") or 0)
        conditions = set_conditions(ed.status.conditions if ed.status else [],
                                    generation=generation, ready=False, reconciling=True,
                                    stalled=False, reason=error.reason, message=message)
        return {**(body.get("status") or {}),
                "conditions": [c.to_dict() for c in conditions]}, []

    def _stalled(self, body: dict[str, Any],
                 error: KilnError) -> tuple[dict[str, Any], list[Event]]:
        ed = parse(EngineDeployment, body)
        generation = int(body["metadata"].get("generation") or 0)
        conditions = set_conditions(ed.status.conditions if ed.status else [],
                                    generation=generation, ready=False, reconciling=False,
                                    stalled=True, reason=error.reason,
                                    message=f"{error.reason}: {error.message}")
        return ({**(body.get("status") or {}), "observedGeneration": generation,
                 "conditions": [c.to_dict() for c in conditions]},
                [Event("Warning", error.reason, error.message)])

    def _reconcile(self, body: dict[str, Any], world: World) -> Decision:
        ed = parse(EngineDeployment, body)
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        uid = str(body["metadata"]["uid"])
        ref = ed.spec.engine_build_ref.name
        eb_body = world.engine_build(namespace, ref)
        eb = parse(EngineBuild, eb_body) if eb_body else None
        owned = [d for d in world.deployments(namespace, name) if uid in d.owner_uids]
        pool = pool_products(world.gpu_nodes(), ed.spec.pool.node_selector)
        try:
            decision = decide(ed, eb, pool, owned, self.clock())
        except KeyError as error:
            decision = Decision(stalled=("UnknownGPU", str(error.args[0])))
        if (ed.spec.server.kind == "triton" and not ed.spec.server.image
                and not self.config.triton_image and not decision.stalled):
            decision = Decision(stalled=(
                "NoServerImage", "server.kind triton needs server.image (a Triton TensorRT-LLM "
                "image with the builder's TensorRT-LLM version), or the operator's "
                "KILN_TRITON_IMAGE"))
        problems = pod_policy.security_problems(
            ed.spec.server.security_context, self.config.pod_security,
            "spec.server.securityContext")
        if problems and not decision.stalled:
            decision = Decision(stalled=("PodOverrideNotAllowed", pod_policy.message(
                problems, self.config.pod_security, self.config.allowed_priority_classes)))
        hashes: dict[str, str] = {}
        if eb is not None and not decision.stalled and not decision.pending:
            hashes = self._apply(ed, eb, decision, owned, world.children(namespace, name))
        _count_served(namespace, name, decision, owned, applied=bool(hashes))
        status, events = summarize(ed, decision, owned, hashes)
        if not decision.stalled and not decision.pending:
            status, events = _with_trouble(ed, status, events, decision, owned,
                                           world.serving_pods(namespace, name))
        self.written.write(body, status.to_dict())
        for event in events:
            self.emit(body, event)
        return decision

    def _apply(self, ed: EngineDeployment, eb: EngineBuild, decision: Decision,
               owned: list[ObservedDeployment],
               children: list[ObservedChild]) -> dict[str, str]:
        """Apply Deployments that differ, delete unwanted ones, apply the other children that
        are missing or drifted; the rendered hashes."""
        namespace = str(ed.metadata["namespace"])
        current = {d.name: d for d in owned}
        others = {(c.kind, c.name): c for c in children}
        hashes = {}
        self._apply_child(render.render_trust(ed, self.trust.bundle), others)
        if ed.spec.server.kind == "trtllm-serve":  # what the pods mount, before the pods
            self._apply_child(render.render_llm_api_config(ed, eb), others)
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
            found = self.kube.read_child("Deployment", namespace, name)
            refs = (found or {}).get("metadata", {}).get("ownerReferences") or []
            if found is None or not any(r.get("uid") == ed.metadata.get("uid")
                                        and r.get("controller") is True for r in refs):
                continue  # gone, or not this EngineDeployment's: nothing of it changes
            log.info("deleting Deployment %s/%s: its GPU product is no longer served",
                     namespace, name)
            self.kube.delete_deployment(namespace, name, uid=found["metadata"]["uid"],
                                        resource_version=found["metadata"]["resourceVersion"])
        for obj in (render.render_service(ed), render.render_pdb(ed)):
            self._apply_child(obj, others)
        return hashes

    def _apply_child(self, obj: dict[str, Any],
                     seen: Mapping[tuple[str, str], ObservedChild]) -> None:
        """Apply a Service, budget or ConfigMap that the watch shows missing or different
        from ``obj`` in kiln's part (``children.drifted``); one as rendered costs no request."""
        meta = obj["metadata"]
        found = seen.get((obj["kind"], meta["name"]))
        if not drifted(obj, found):
            return
        log.info("applying %s %s/%s (%s)", obj["kind"], meta["namespace"], meta["name"],
                 "missing" if found is None else "changed")
        self.kube.apply(obj)


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


def _with_trouble(ed: EngineDeployment, status: EngineDeploymentStatus, events: list[Event],
                  decision: Decision, owned: list[ObservedDeployment],
                  pods: list[ObservedPod]) -> tuple[EngineDeploymentStatus, list[Event]]:
    """The status with the reason a rollout is stuck (an init container's failure, a crash
    loop, the progress deadline, an unschedulable pod), naming the product and the pod."""
    by_name = {d.name: d for d in owned}
    found: list[Trouble] = [t for s in decision.serves if (d := by_name.get(s.deployment))
                            and (t := trouble(s.label, d, pods, s.engine_key,
                                              rebuilding=s.rebuilding))]
    if not found:
        return status, events
    halted = [t for t in found if t.stalled]
    first = (halted or found)[0]
    old = ed.status.conditions if ed.status else []
    conditions = set_conditions(
        old, generation=int(ed.metadata.get("generation") or 0), ready=False,
        reconciling=not halted, stalled=bool(halted), reason=first.reason,
        message="; ".join(f"{t.reason}: {t.message}" for t in found))
    was = next((c.reason for c in old if c.type == "Ready"), None)
    if was != first.reason:
        events = [*events, Event("Warning", first.reason, first.message)]
    return status.model_copy(update={"conditions": conditions}), events


def _inputs(body: Mapping[str, Any], world: World) -> tuple[Any, ...]:
    """What a failed pass depended on: the spec (generation), its EngineBuild, its
    Deployments and the GPU pool as they were; a change of any retries at once."""
    namespace, name = str(body["metadata"]["namespace"]), str(body["metadata"]["name"])
    ref = str(((body.get("spec") or {}).get("engineBuildRef") or {}).get("name", ""))
    eb = world.engine_build(namespace, ref) or {}
    deployments = sorted((d.name, d.spec_hash, d.ready_replicas)
                         for d in world.deployments(namespace, name))
    selector = ((body.get("spec") or {}).get("pool") or {}).get("nodeSelector") or {}
    return (body["metadata"].get("generation"),
            (eb.get("metadata") or {}).get("resourceVersion"), tuple(deployments),
            tuple(sorted(pool_products(world.gpu_nodes(), selector).items())))
