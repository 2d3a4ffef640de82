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
from kiln.api import Condition, EngineBuild, EngineDeployment, EngineDeploymentStatus
from kiln.config import OperatorConfig
from kiln.contract.key import short_key
from kiln.domain import aot, pod_policy
from kiln.domain.labels import HASH_ANNOTATION, KEY_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.domain.pool import GpuNode, pool_products
from kiln.domain.status import Event, set_conditions
from kiln.engine_deployment import canary, render
from kiln.engine_deployment.children import ObservedChild, drifted
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.gate_job import render_gate_job
from kiln.engine_deployment.plan import Decision, decide, summarize
from kiln.engine_deployment.trouble import Trouble, trouble
from kiln.errors import KilnError
from kiln.kube.client import Kube
from kiln.reconcile.shell import Outcome, Pass, Shell, parse
from kiln.reconcile.written import WrittenStatus
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
EventSink = Callable[[dict[str, Any], Event], None]
ARTIFACTS_STALE = "ArtifactsStale"
"""A condition: some serving pods found their engine's artifact set made for another GPU,
driver or server image, and serve without it."""


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
        mine = [d for d in world.deployments(namespace, name) if uid in d.owner_uids]
        owned = [d for d in mine if not d.canary]
        canaries = [d for d in mine if d.canary]
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
        steered: canary.Steered | None = None
        under_way = any(r.phase in canary.UNDER_WAY for r in (ed.status.rollouts
                                                               if ed.status else []))
        if eb is not None and not decision.stalled and not decision.pending and (
                ed.spec.rollout is not None or canaries or under_way):
            steered = canary.steer(ed, decision, owned, canaries,
                                   world.serving_pods(namespace, name), self._gate_runs(ed),
                                   self.clock())
            decision = steered.decision
        if eb is not None and not decision.stalled and not decision.pending:
            hashes = self._apply(ed, eb, decision, owned, world.children(namespace, name))
            if steered is not None:
                self._apply_canaries(ed, eb, steered, canaries)
        _count_served(namespace, name, decision, owned, applied=bool(hashes))
        status, events = summarize(ed, decision, owned, hashes)
        if not decision.stalled and not decision.pending:
            pods = world.serving_pods(namespace, name)
            status, events = _with_trouble(ed, status, events, decision, owned, pods)
            if eb is not None:
                status = _with_startup(ed, eb, status, pods,
                                       aot.warmup_for(eb.spec.build, self.config.warmup_runtime)
                                       is not None)
        if steered is not None:
            status, events = _with_rollouts(ed, status, events, steered)
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

    def _gate_runs(self, ed: EngineDeployment) -> dict[str, canary.GateRun]:
        """The gate Jobs of the rollouts being analysed as they are now (read only then; a
        Job is this rollout's by its owner and annotations, never by its name alone), with
        the report of a finished one."""
        namespace, name = str(ed.metadata["namespace"]), str(ed.metadata["name"])
        uid = str(ed.metadata["uid"])
        runs: dict[str, canary.GateRun] = {}
        for record in ed.status.rollouts if ed.status else []:
            if record.phase != "Analyzing":
                continue
            job_name = canary.gate_job_name(name, record.gpu_product, record.canary_key,
                                            record.gate_attempts or 0)
            job = self.kube.read_job(namespace, job_name)
            if job is None:
                continue
            if not canary.is_gate_of(job, uid, record.gpu_product, record.canary_key):
                runs[job_name] = canary.GateRun(job_name, False, False, foreign=True)
                continue
            runs[job_name] = canary.observe_gate(
                job, self.kube.job_pods(namespace, job_name) if canary.finished(job) else [])
        return runs

    def _apply_canaries(self, ed: EngineDeployment, eb: EngineBuild, steered: canary.Steered,
                        seen: list[ObservedDeployment]) -> None:
        """Apply the canary Deployments that differ, delete the unwanted ones, create the gate
        Jobs that are due."""
        namespace = str(ed.metadata["namespace"])
        by_name = {d.name: d for d in seen}
        for want in steered.canaries:
            main = render.render_deployment(ed, eb, want.serve, self.config)
            obj = canary.render_canary(main, want.serve.deployment, want.replicas)
            found = by_name.get(want.serve.deployment)
            if found is None or found.spec_hash != obj["metadata"]["annotations"][
                    HASH_ANNOTATION]:
                log.info("applying canary Deployment %s/%s (engine %s)", namespace,
                         want.serve.deployment, short_key(want.serve.engine_key or ""))
                self.kube.apply(obj)
        for name in steered.delete:
            found_obj = self.kube.read_child("Deployment", namespace, name)
            if found_obj is None:
                continue
            log.info("deleting canary Deployment %s/%s", namespace, name)
            self.kube.delete_deployment(namespace, name, uid=found_obj["metadata"]["uid"])
        for gate in steered.gates:
            log.info("creating gate Job %s/%s (engine %s on %s)", namespace, gate.name,
                     short_key(gate.key), gate.product)
            self.kube.create_job(render_gate_job(ed, eb, gate, self.config))

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


def _with_rollouts(ed: EngineDeployment, status: EngineDeploymentStatus, events: list[Event],
                   steered: canary.Steered) -> tuple[EngineDeploymentStatus, list[Event]]:
    """The status with the rollouts of record, the ``kubectl get`` summary, and the
    conditions a canary under way (Reconciling) or a refused key (Stalled) sets."""
    live = [r for r in steered.rollouts if r.phase in canary.UNDER_WAY]
    refused = [r for r in steered.rollouts if r.phase in canary.REFUSED
               and steered.holding.get(r.gpu_product) == r.canary_key]
    shown = live or refused
    summary = ",".join(f"{r.phase} {short_key(r.canary_key)}" for r in shown) or None
    update: dict[str, Any] = {"rollouts": steered.rollouts, "canary": summary}
    for r in steered.rollouts:
        if r.canary is None or r.stable is None:
            continue
        metrics.set_gate_figures(
            f"{ed.metadata['namespace']}/{ed.metadata['name']}", r.gpu_product, r.canary_key,
            {track: {f: getattr(figures, f) for f in metrics.GATE_FIGURE_NAMES}
             for track, figures in (("canary", r.canary), ("stable", r.stable))},
            r.golden_mismatches)
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    if shown and ready is not None and ready.status == "True":
        first = shown[0]
        conditions = set_conditions(
            status.conditions, generation=int(ed.metadata.get("generation") or 0),
            ready=False, reconciling=bool(live), stalled=not live,
            reason=first.phase if live else "Rejected" if first.phase == "Rejected"
            else "RolledBack",
            message="; ".join(f"{r.gpu_product}: {r.phase} engine {short_key(r.canary_key)}"
                              f": {r.message}" for r in shown))
        update["conditions"] = conditions
    return status.model_copy(update=update), [*events, *steered.events]


def _with_startup(ed: EngineDeployment, eb: EngineBuild, status: EngineDeploymentStatus,
                  pods: list[ObservedPod], sets: bool) -> EngineDeploymentStatus:
    """Each product's measured start and artifact set, from its ready pods of the key it
    serves; ``ArtifactsStale`` while any serving pod found its set made for another GPU,
    driver or image (it serves without it)."""
    products, said = [], []
    off = aot.mismatched(ed.spec.server, eb.spec.build) if sets else []
    for p in status.products:
        mine = sorted((pod for pod in pods if pod.ready and p.engine_key
                       and dict(pod.annotations).get(KEY_ANNOTATION) == p.engine_key),
                      key=lambda pod: pod.name)
        verdicts = [pod.artifacts for pod in mine if pod.artifacts]
        stale = next((v for v in verdicts if v[0] == "Stale"), None)
        state, message = stale or (verdicts[0] if verdicts else (None, None))
        if state is None and off and p.engine_key:
            state, message = "Mismatch", ("artifact set not placed: " + "; ".join(off))
        starts = [pod.start_seconds for pod in mine if pod.start_seconds is not None]
        for pod in mine:
            if pod.start_seconds is not None:
                metrics.record_serving_start(p.gpu_product, (pod.artifacts or ("None",))[0],
                                             pod.start_seconds, once=pod.name)
        products.append(p.model_copy(update={
            "artifacts": state, "artifacts_message": (message or None) and message[:1024],
            "start_seconds": round(max(starts), 3) if starts else None}))
        if state or starts:
            said.append(f"{p.gpu or p.gpu_product} "
                        + (f"{max(starts):.0f}s" if starts else "-")
                        + (f" ({state})" if state else ""))
    stale_ones = [f"{p.gpu or p.gpu_product}: {p.artifacts_message}" for p in products
                  if p.artifacts == "Stale"]
    generation = int(ed.metadata.get("generation") or 0)
    others = [c for c in status.conditions if c.type != ARTIFACTS_STALE]
    condition = Condition(
        type=ARTIFACTS_STALE, status="True" if stale_ones else "False",
        reason=ARTIFACTS_STALE if stale_ones else "ArtifactsValid",
        message="; ".join(stale_ones)[:4096] if stale_ones else "every artifact set served "
        "was made for its nodes' GPU and driver and the server image (or none is served)",
        observed_generation=generation,
        last_transition_time=next(
            (c.last_transition_time for c in (ed.status.conditions if ed.status else [])
             if c.type == ARTIFACTS_STALE
             and c.status == ("True" if stale_ones else "False")),
            datetime.now(UTC)))
    return status.model_copy(update={"products": products,
                                     "conditions": [*others, condition],
                                     "startup": ", ".join(said)[:512] or None})


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
