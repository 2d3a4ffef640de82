"""Promote only what is proven: with ``spec.rollout``, a product's new engine key serves a
canary Deployment beside the product's own (which keeps the current key), a gate Job compares
the two, and the key takes the rest only if it holds every threshold.

Pure and level-based: the state of each product's rollout is derived from what exists (the
product's Deployment and its key, the canary's Deployment and its pods, the gate Job and its
report) and from the status of record (``status.rollouts``: when the canary was first Ready,
which keys were refused). ``steer`` rewrites the plan's serves accordingly; ``verdict`` holds a
gate report against the thresholds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from kiln.api import (
    PROMOTE_ANNOTATION,
    REJECT_ANNOTATION,
    EngineDeployment,
    GateFigures,
    RolloutPhase,
    RolloutStatus,
    parse_duration,
)
from kiln.contract.gate import Figures, GateReport, parse_report
from kiln.contract.key import short_key
from kiln.contract.termination import parse_failure
from kiln.domain.labels import (
    HASH_ANNOTATION,
    KEY_ANNOTATION,
    TEMPLATE_ANNOTATION,
    TRACK_LABEL,
)
from kiln.domain.pods import ObservedPod
from kiln.domain.podspec import spec_hash
from kiln.domain.status import Event
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.plan import Decision, Serve
from kiln.engine_deployment.trouble import trouble

REFUSED: tuple[RolloutPhase, ...] = ("Rejected", "RolledBack")
UNDER_WAY: tuple[RolloutPhase, ...] = ("Progressing", "Analyzing", "Promoting")
HISTORY = 16
"""Rollouts kept in status; past it the oldest ended ones go first, then the rolled back,
and the rejected last (they keep a refused key from being tried again)."""
GATE_LABEL = "kiln.dev/gate"
"""On a gate Job and its pod: the EngineDeployment it measures for (its pods carry no
``kiln.dev/engine-deployment`` label: no Service, budget or scale selector counts them)."""
PRODUCT_ANNOTATION = "kiln.dev/gpu-product"
"""On a gate Job: the GPU product it measures on (with the key, its identity)."""


@dataclass(frozen=True)
class GateRun:
    """A gate Job as observed: finished or not, and its report."""

    name: str
    finished: bool
    succeeded: bool
    report: GateReport | None = None
    message: str = ""
    transient: bool = False
    """It failed for the infrastructure (evicted, node lost, image not pulled, killed, the
    endpoints not answering), not for what it measured: run it again."""
    foreign: bool = False
    """A Job of that name that is not this rollout's gate (its owner, key or product
    differ)."""


@dataclass(frozen=True)
class CanaryServe:
    """A canary Deployment to apply."""

    serve: Serve
    replicas: int


@dataclass(frozen=True)
class GateWanted:
    """A gate Job to create: the canary's and the stable key's endpoints."""

    product: str
    key: str
    name: str
    canary_url: str
    stable_url: str


@dataclass
class Steered:
    """The plan after the rollouts: what the products' Deployments serve, the canaries."""

    decision: Decision
    canaries: list[CanaryServe] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    """Canary Deployments to remove."""
    gates: list[GateWanted] = field(default_factory=list)
    rollouts: list[RolloutStatus] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    holding: dict[str, str] = field(default_factory=dict)
    """Product → the new key its Deployment is held back from (it keeps serving exactly as
    it is, the old key's own render, while that key is a canary or refused)."""


def canary_name(deployment: str) -> str:
    """``<deployment>-canary``, at most 63 characters."""
    name = f"{deployment}-canary"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(deployment.encode()).hexdigest()[:6]
    return f"{deployment[:63 - 14]}-{digest}-canary"


def gate_job_name(ed_name: str, product: str, key: str, attempt: int = 0) -> str:
    """The gate Job of ``key`` on ``product`` (its ``attempt``-th run): a digest of both
    whole, the identity itself checked on the Job (:func:`is_gate_of`)."""
    digest = hashlib.sha256(f"{product}\n{key}".encode()).hexdigest()[:12]
    return f"{ed_name[:40]}-gate-{digest}-{attempt}"


def is_gate_of(job: Mapping[str, Any], uid: str, product: str, key: str) -> bool:
    """Whether ``job`` is the gate of ``key`` on ``product`` of the EngineDeployment ``uid``
    (its controller owner and annotations; never its name alone)."""
    meta = job.get("metadata") or {}
    notes = meta.get("annotations") or {}
    owned = any(r.get("uid") == uid and r.get("controller") is True
                for r in meta.get("ownerReferences") or [])
    return (owned and notes.get(KEY_ANNOTATION) == key
            and notes.get(PRODUCT_ANNOTATION) == product)


def canary_replicas(ed: EngineDeployment) -> int:
    rollout = ed.spec.rollout
    assert rollout is not None
    if rollout.canary.percent is not None:
        return max(1, math.ceil(ed.spec.replicas * rollout.canary.percent / 100))
    return rollout.canary.replicas


def render_canary(deployment: dict[str, Any], name: str, replicas: int) -> dict[str, Any]:
    """The canary's Deployment from the one rendered for the new key: its own name, size and
    ``kiln.dev/track: canary`` label (selector and pods too), hashes recomputed."""
    out = copy.deepcopy(deployment)
    out["metadata"]["name"] = name
    out["metadata"]["labels"][TRACK_LABEL] = "canary"
    spec = out["spec"]
    spec["replicas"] = replicas
    spec["selector"]["matchLabels"][TRACK_LABEL] = "canary"
    template = spec["template"]
    template["metadata"]["labels"][TRACK_LABEL] = "canary"
    template["metadata"]["annotations"].pop(TEMPLATE_ANNOTATION, None)
    template["metadata"]["annotations"][TEMPLATE_ANNOTATION] = spec_hash(template)
    out["metadata"]["annotations"] = {}
    out["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(out)}
    return out


def finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def observe_gate(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> GateRun:
    """A gate Job as observed: the report in its pod's termination message, or why it
    failed. Only ``kiln gate``'s own non-retryable error is the key's failure; a pod that
    wrote nothing (never started: its image not pulled, evicted, its node lost, killed, past
    the deadline) or a retryable error (the endpoints not answering) is the infrastructure's,
    ``transient``."""
    name = str(job["metadata"]["name"])
    if not finished(job):
        return GateRun(name, finished=False, succeeded=False)
    conditions = (job.get("status") or {}).get("conditions") or []
    succeeded = any(c.get("type") == "Complete" and c.get("status") == "True"
                    for c in conditions)
    said = next((f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".rstrip(": ")
                 for c in conditions if c.get("type") == "Failed"
                 and c.get("status") == "True"), "no report")
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("reason"):  # Evicted, NodeLost, ...
            said = f"pod {status['reason']}: {status.get('message') or ''}".rstrip(": ")
        for s in status.get("containerStatuses") or []:
            done = (s.get("state") or {}).get("terminated") or {}
            text = str(done.get("message") or "")
            report = parse_report(text)
            if report is not None:
                return GateRun(name, True, succeeded, report)
            try:
                structured = isinstance(json.loads(text), dict)
            except ValueError:
                structured = False
            failure = parse_failure(text, int(done.get("exitCode") or 0), "gate")
            if structured:
                return GateRun(name, True, succeeded, None,
                               f"{failure.reason}: {failure.message}",
                               transient=failure.retryable)
            if done:
                said = f"{done.get('reason') or 'Terminated'} (exit " \
                       f"{done.get('exitCode')}): {failure.message}"
    return GateRun(name, True, succeeded, None, said[:512], transient=True)


def _named(annotations: Mapping[str, str], name: str, key: str) -> bool:
    value = (annotations.get(name) or "").strip()
    return len(value) >= 12 and key.startswith(value)


def _figures(f: Figures) -> GateFigures:
    return GateFigures(ttft_p50_ms=f.ttft_p50_ms, ttft_p99_ms=f.ttft_p99_ms, itl_ms=f.itl_ms,
                       throughput=f.throughput, error_rate=f.error_rate)


def verdict(ed: EngineDeployment, report: GateReport) -> tuple[bool, str, str]:
    """(passed, reason, message) of a gate report against ``spec.rollout.gate``."""
    assert ed.spec.rollout is not None
    gate = ed.spec.rollout.gate
    new, old = report.canary, report.stable
    figures = (f"TTFT p99 {_ms(new.ttft_p99_ms)} vs {_ms(old.ttft_p99_ms)}, throughput "
               f"{_num(new.throughput)} vs {_num(old.throughput)} tokens/s, errors "
               f"{_num(new.error_rate)}, golden {report.golden_mismatches}/"
               f"{report.golden_prompts} differ")
    failed: list[tuple[str, str]] = []
    if new.error_rate is None or new.error_rate > gate.max_error_rate:
        failed.append(("ErrorRate", f"error rate {_num(new.error_rate)} > "
                       f"{gate.max_error_rate}"))
    if new.ttft_p99_ms is None or old.ttft_p99_ms is None or (
            new.ttft_p99_ms > gate.max_ttft_p99_ratio * old.ttft_p99_ms
            and new.ttft_p99_ms - old.ttft_p99_ms > gate.ttft_p99_floor_ms):
        failed.append(("TtftRegressed", f"TTFT p99 {_ms(new.ttft_p99_ms)} > "
                       f"{gate.max_ttft_p99_ratio} x {_ms(old.ttft_p99_ms)}"))
    if new.throughput is None or old.throughput is None or (
            new.throughput < gate.min_throughput_ratio * old.throughput
            and old.throughput - new.throughput > gate.throughput_floor):
        failed.append(("ThroughputRegressed", f"throughput {_num(new.throughput)} < "
                       f"{gate.min_throughput_ratio} x {_num(old.throughput)} tokens/s"))
    prompts = max(report.golden_prompts, 1)
    if report.golden_mismatches / prompts > gate.golden_tolerance:
        failed.append(("GoldenMismatch", f"{report.golden_mismatches} of "
                       f"{report.golden_prompts} golden answers differ (tolerance "
                       f"{gate.golden_tolerance}): {'; '.join(report.examples[:2])}"))
    if failed:
        return False, failed[0][0], "; ".join(m for _, m in failed) + f" ({figures})"
    return True, "GatePassed", f"every threshold holds ({figures})"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}ms"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _url(pod: ObservedPod, port: int) -> str:
    return f"http://{pod.ip}:{port}"


def _ready_pod(pods: Iterable[ObservedPod], deployment: str) -> ObservedPod | None:
    """A Ready pod of ``deployment`` (its ReplicaSet is ``<deployment>-<hash>``)."""
    return next((p for p in pods if p.ready and p.ip and p.active
                 and p.owner.rpartition("-")[0] == deployment), None)


def stable_name(key: str | None) -> str:
    """What serves while a key is a canary: an engine, or the baseline (the checkpoint)."""
    return f"engine {short_key(key)}" if key else "the baseline (checkpoint, PyTorch backend)"


def steer(ed: EngineDeployment, decision: Decision, owned: list[ObservedDeployment],
          canaries: list[ObservedDeployment], pods: list[ObservedPod],
          gates: Mapping[str, GateRun], now: datetime) -> Steered:
    """The plan with each product's new key held to its canary until proven; ``owned`` are
    the products' own Deployments, ``canaries`` the canary Deployments, ``gates`` the gate
    Jobs by name. A product's Deployment that is held back from a new key is not served
    again: it stays in ``decision.kept``, exactly as it is (the old key's own render)."""
    old = list(ed.status.rollouts if ed.status else [])
    records = {(r.gpu_product, r.canary_key): r for r in old}
    out = Steered(decision=decision)
    by_name = {d.name: d for d in owned}
    canary_by_name = {d.name: d for d in canaries}
    kept_canaries: set[str] = set()
    notes = {str(k): str(v) for k, v in (ed.metadata.get("annotations") or {}).items()}
    serves, kept = [], list(decision.kept)
    for serve in decision.serves:
        current = by_name.get(serve.deployment)
        name = canary_name(serve.deployment)
        new_key = serve.engine_key
        stable_key = current.engine_key if current is not None else None
        serving = current is not None and (
            (current.mode == "engine" and stable_key is not None)
            or current.mode == "fallback")  # the previous engine or the baseline serves
        if (ed.spec.rollout is None or not serving or serve.mode != "engine"
                or new_key is None or current is None):
            serves.append(serve)
            continue
        if new_key == stable_key:  # the product's Deployment serves the key already
            serves.append(serve)
            record = records.get((serve.product, new_key))
            if record is not None and record.phase == "Promoting":
                if current.rolled_out and current.spec_hash is not None:
                    _record(out, record, "Promoted", record.reason or "Promoted", f"engine "
                            f"{short_key(new_key)} serves every replica",
                            Event("Normal", "Promoted", f"{serve.label}: engine "
                                  f"{short_key(new_key)} promoted: it serves every replica"))
                else:
                    kept_canaries.add(name)
                    out.rollouts.append(record)
            continue
        record = records.get((serve.product, new_key))
        if record is None or record.phase in ("Promoted", "Aborted"):
            record = RolloutStatus(gpu_product=serve.product, phase="Progressing",
                                   canary_key=new_key)  # tried afresh
        record = record.model_copy(update={"stable_key": stable_key,
                                           "canary_deployment": name})
        label = serve.label
        by_hand = _by_hand(notes, new_key)
        if by_hand == "conflict":
            out.rollouts.append(record.model_copy(update={
                "message": f"both {PROMOTE_ANNOTATION} and {REJECT_ANNOTATION} name engine "
                           f"{short_key(new_key)}: neither is acted on"}))
            phase = record.phase
        elif by_hand == "reject" and record.phase not in REFUSED:
            _record(out, record, "Rejected", "RejectedByHand", f"engine {short_key(new_key)} "
                    f"rejected by hand ({REJECT_ANNOTATION}); {stable_name(stable_key)} "
                    "serves on", Event("Warning", "Rejected", f"{label}: engine "
                                       f"{short_key(new_key)} rejected by hand"))
            phase = "Rejected"
        elif by_hand == "promote" and record.phase != "Promoting":
            _record(out, record, "Promoting", "PromotedByHand", f"engine {short_key(new_key)} "
                    f"promoted by hand ({PROMOTE_ANNOTATION}): rolling onto every replica",
                    Event("Normal", "Promoting", f"{label}: engine {short_key(new_key)} "
                          "promoted by hand"))
            phase = "Promoting"
        elif record.phase in REFUSED or record.phase == "Promoting":
            out.rollouts.append(record)  # decided: a decision holds for the key
            phase = record.phase
        else:
            _canary(ed, serve, record, canary_by_name.get(name), current, pods, gates, now,
                    out)
            phase = out.rollouts[-1].phase
        if phase == "Promoting":
            serves.append(serve)
            kept_canaries.add(name)
            continue
        kept.append(current.name)  # held: exactly as it is
        out.holding[serve.product] = new_key
        if phase in UNDER_WAY:
            kept_canaries.add(name)
    out.decision = replace(decision, serves=serves, kept=kept,
                           held={**decision.held, **{
                               by_name[s.deployment].name: _held_message(out, s.product)
                               for s in decision.serves if s.product in out.holding}})
    out.delete = sorted(c.name for c in canaries if c.name not in kept_canaries)
    out.canaries = [c for c in out.canaries if c.serve.deployment in kept_canaries]
    touched = {(r.gpu_product, r.canary_key) for r in out.rollouts}
    waiting = {d.product for d in owned if d.name in decision.kept}
    history = [_ended(r, decision, waiting, out) if r.phase in UNDER_WAY else r
               for r in old if (r.gpu_product, r.canary_key) not in touched]
    out.rollouts = trim(history + out.rollouts, touched)
    return out


def _held_message(out: Steered, product: str) -> str:
    key = out.holding[product]
    record = next(r for r in out.rollouts if (r.gpu_product, r.canary_key) == (product, key))
    return (f"serves {stable_name(record.stable_key)} as it is while engine {short_key(key)} "
            f"is {record.phase}")[:1024]


def _by_hand(notes: Mapping[str, str], key: str) -> str | None:
    """``promote``, ``reject``, ``conflict`` (both name the key) or None."""
    promote, reject = (_named(notes, PROMOTE_ANNOTATION, key),
                       _named(notes, REJECT_ANNOTATION, key))
    if promote and reject:
        return "conflict"
    return "promote" if promote else "reject" if reject else None


def _ended(record: RolloutStatus, decision: Decision, waiting: set[str],
           out: Steered) -> RolloutStatus:
    """A rollout under way that no product's plan reached this pass: left as it is where its
    product's Deployment is kept as it is (``waiting``: its EngineBuild's status catching up),
    else ``Aborted``, with why."""
    if record.gpu_product in waiting:
        return record
    serving = {s.product: s for s in decision.serves}
    held = record.gpu_product in out.holding
    serve = serving.get(record.gpu_product)
    if serve is None and not held:
        why = ("Gone", f"GPU product {record.gpu_product} is no longer served")
    elif serve is not None and serve.engine_key == record.canary_key:
        why = ("RolloutRemoved", "spec.rollout was removed: the key rolled onto every replica "
               "without a canary")
    elif held:
        why = ("Superseded", f"engine {short_key(out.holding[record.gpu_product])} is tried "
               "instead")
    else:
        why = ("Superseded", f"the plan serves {stable_name(serve.engine_key if serve else None)}"
               " now")
    message = f"rollout of engine {short_key(record.canary_key)} ended undecided: {why[1]}"
    out.events.append(Event("Normal", "Aborted", f"{record.gpu_product}: {message}"))
    return record.model_copy(update={"phase": "Aborted", "reason": why[0],
                                     "message": message})


def trim(records: list[RolloutStatus], live: set[tuple[str, str]]) -> list[RolloutStatus]:
    """At most ``HISTORY`` records, in their order: the ones this pass acted on are kept;
    past the limit the oldest ended ones go first, then the rolled back, the rejected last."""
    if len(records) <= HISTORY:
        return records
    order = {"Rejected": 2, "RolledBack": 1}
    drop = sorted((i for i, r in enumerate(records)
                   if (r.gpu_product, r.canary_key) not in live),
                  key=lambda i: (order.get(records[i].phase, 0), i))[:len(records) - HISTORY]
    return [r for i, r in enumerate(records) if i not in set(drop)]


def _record(out: Steered, record: RolloutStatus, phase: RolloutPhase, reason: str,
            message: str, event: Event | None = None, **extra: Any) -> None:
    changed = (record.phase, record.reason) != (phase, reason)
    out.rollouts.append(record.model_copy(update={"phase": phase, "reason": reason,
                                                  "message": message, **extra}))
    if event is not None and changed:
        out.events.append(event)


def _canary(ed: EngineDeployment, serve: Serve, record: RolloutStatus,
            seen: ObservedDeployment | None, current: ObservedDeployment,
            pods: list[ObservedPod], gates: Mapping[str, GateRun], now: datetime,
            out: Steered) -> None:
    """One product's canary of a new key: start it, roll it back, analyse it, or promote."""
    assert ed.spec.rollout is not None and serve.engine_key is not None
    rollout, key, label = ed.spec.rollout, serve.engine_key, serve.label
    name = record.canary_deployment or canary_name(serve.deployment)
    stable = stable_name(record.stable_key)
    out.canaries.append(CanaryServe(replace(serve, deployment=name), canary_replicas(ed)))
    started = Event("Normal", "CanaryStarted", f"{label}: engine {short_key(key)} serves a "
                    f"canary ({name}) beside {stable}")
    if seen is None or seen.engine_key != key:
        _record(out, record, "Progressing", "CanaryStarting", f"starting canary {name} of "
                f"engine {short_key(key)}", started if record.reason is None else None)
        return
    stuck = trouble(label, seen, pods, key)
    if stuck is not None and stuck.stalled:
        _record(out, record, "RolledBack", stuck.reason, f"canary {name} failed, rolled back;"
                f" {stable} serves on: {stuck.message}",
                Event("Warning", "RolledBack", f"{label}: canary of engine {short_key(key)} "
                      f"rolled back: {stuck.reason}: {stuck.message}"))
        out.canaries.pop()
        return
    if not seen.rolled_out and seen.replica_failure:
        _record(out, record, "Progressing", "CanaryBlocked", f"canary {name}'s pods cannot be "
                f"created: {seen.replica_failure}; the canary (and then the gate Job) needs "
                f"room beside every pod of {stable}: free quota, or promote or reject the key "
                "by hand", Event("Warning", "CanaryBlocked", f"{label}: canary of engine "
                                 f"{short_key(key)} cannot start: {seen.replica_failure}"))
        return
    if not seen.rolled_out:
        why = f": {stuck.message}" if stuck is not None else ""
        _record(out, record, "Progressing", "CanaryStarting", f"waiting for canary {name} "
                f"to be Ready{why}", started if record.reason is None else None)
        return
    since = record.ready_since or now
    wait = parse_duration(rollout.analysis)
    if now - since < wait:
        _record(out, record, "Analyzing", "AnalysisTime", f"canary {name} Ready since "
                f"{since.isoformat()}; analysis until {(since + wait).isoformat()}",
                ready_since=since)
        return
    if not rollout.gate.enabled:
        _promote(out, record, label, key, "AnalysisPassed", "canary Ready for the analysis "
                 "time (gate off)", since)
        return
    _gate(ed, serve, record, seen, current, pods, gates, since, out)


def _gate(ed: EngineDeployment, serve: Serve, record: RolloutStatus,
          seen: ObservedDeployment, current: ObservedDeployment, pods: list[ObservedPod],
          gates: Mapping[str, GateRun], since: datetime, out: Steered) -> None:
    """The gate of a canary Ready for the analysis time: run it, run it again after an
    infrastructure failure (up to ``gate.retries``), or decide from its report."""
    assert ed.spec.rollout is not None and serve.engine_key is not None
    key, label, gate = serve.engine_key, serve.label, ed.spec.rollout.gate
    stable = stable_name(record.stable_key)
    attempt = record.gate_attempts or 0
    job = gate_job_name(str(ed.metadata["name"]), serve.product, key, attempt)
    run = gates.get(job)
    kept: dict[str, Any] = {"ready_since": since, "gate_job": job,
                            "gate_attempts": attempt or None}
    if run is not None and run.foreign:
        _record(out, record, "Analyzing", "GateJobNameTaken", f"a Job named {job} exists "
                "that is not this rollout's gate (owner, key or product differ); remove it",
                **kept)
        return
    if run is not None and run.finished and run.report is None and run.transient:
        if attempt >= gate.retries:
            _record(out, record, "Analyzing", "GateUnavailable", f"gate Job {job} failed for "
                    f"the infrastructure {attempt + 1} times ({run.message}); the canary "
                    f"waits for a person: annotate {PROMOTE_ANNOTATION} or "
                    f"{REJECT_ANNOTATION} with the key", Event(
                        "Warning", "GateUnavailable", f"{label}: gate of engine "
                        f"{short_key(key)} failed {attempt + 1} times: {run.message}"),
                    **kept)
            return
        _record(out, record, "Analyzing", "GateRetrying", f"gate Job {job} failed for the "
                f"infrastructure ({run.message}); running it again ({attempt + 1} of "
                f"{gate.retries} retries)", Event("Warning", "GateRetrying", f"{label}: gate "
                                                  f"of engine {short_key(key)} failed, run "
                                                  f"again: {run.message}"),
                **{**kept, "gate_attempts": attempt + 1})
        return
    if run is None or not run.finished:
        stable_pod = _ready_pod(pods, current.name)
        canary_pod = _ready_pod(pods, seen.name)
        if run is None and stable_pod is not None and canary_pod is not None:
            port = ed.spec.server.port
            out.gates.append(GateWanted(serve.product, key, job, _url(canary_pod, port),
                                        _url(stable_pod, port)))
        _record(out, record, "Analyzing", "GateRunning", f"gate Job {job} compares engine "
                f"{short_key(key)} with {stable}", **kept)
        return
    if run.report is None or not run.succeeded:
        _record(out, record, "Rejected", "GateFailed", f"gate Job {job} failed: "
                f"{run.message or 'no report'}; {stable} serves on",
                Event("Warning", "Rejected", f"{label}: engine {short_key(key)}"
                      f" rejected: gate Job {job} failed: {run.message}"), **kept)
        out.canaries.pop()
        return
    passed, reason, message = verdict(ed, run.report)
    figures: dict[str, Any] = {**kept, "canary": _figures(run.report.canary),
               "stable": _figures(run.report.stable),
               "golden_prompts": run.report.golden_prompts,
               "golden_mismatches": run.report.golden_mismatches}
    if passed:
        _promote(out, record, label, key, reason, message, since, **figures)
        return
    _record(out, record, "Rejected", reason, f"{message}; {stable} serves on",
            Event("Warning", "Rejected", f"{label}: engine {short_key(key)} rejected by the "
                  f"gate: {message}"), **figures)
    out.canaries.pop()


def _promote(out: Steered, record: RolloutStatus, label: str, key: str, reason: str,
             message: str, since: datetime, **figures: Any) -> None:
    """Promote: the product's Deployment takes the key at once; the canary stays until it
    has rolled."""
    _record(out, record, "Promoting", reason, f"{message}: rolling onto every replica",
            Event("Normal", "Promoting", f"{label}: engine {short_key(key)} promoted: "
                  f"{message}"), **{"ready_since": since, **figures})
