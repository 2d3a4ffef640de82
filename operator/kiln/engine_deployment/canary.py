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
from kiln.contract.gate import Figures, GateReport
from kiln.contract.key import short_key
from kiln.domain.labels import HASH_ANNOTATION, TEMPLATE_ANNOTATION, TRACK_LABEL
from kiln.domain.pods import ObservedPod
from kiln.domain.podspec import spec_hash
from kiln.domain.status import Event
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.plan import Decision, Serve
from kiln.engine_deployment.trouble import trouble

REFUSED: tuple[RolloutPhase, ...] = ("Rejected", "RolledBack")
UNDER_WAY: tuple[RolloutPhase, ...] = ("Progressing", "Analyzing", "Promoting")
HISTORY = 16
"""Rollouts kept in status (refused keys are kept before others)."""


@dataclass(frozen=True)
class GateRun:
    """A gate Job as observed: finished or not, and its report."""

    name: str
    finished: bool
    succeeded: bool
    report: GateReport | None = None
    message: str = ""


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


def canary_name(deployment: str) -> str:
    """``<deployment>-canary``, at most 63 characters."""
    name = f"{deployment}-canary"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(deployment.encode()).hexdigest()[:6]
    return f"{deployment[:63 - 14]}-{digest}-canary"


def gate_job_name(ed_name: str, product: str, key: str) -> str:
    """The gate Job of ``key`` on ``product``: one per key and product, never run twice."""
    digest = hashlib.sha256(product.encode()).hexdigest()[:5]
    return f"{ed_name[:40]}-gate-{key[:10]}-{digest}"


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
            new.ttft_p99_ms > gate.max_ttft_p99_ratio * old.ttft_p99_ms):
        failed.append(("TtftRegressed", f"TTFT p99 {_ms(new.ttft_p99_ms)} > "
                       f"{gate.max_ttft_p99_ratio} x {_ms(old.ttft_p99_ms)}"))
    if new.throughput is None or old.throughput is None or (
            new.throughput < gate.min_throughput_ratio * old.throughput):
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


def steer(ed: EngineDeployment, decision: Decision, owned: list[ObservedDeployment],
          canaries: list[ObservedDeployment], pods: list[ObservedPod],
          gates: Mapping[str, GateRun], now: datetime) -> Steered:
    """The plan with each product's new key held to its canary until proven; ``owned`` are
    the products' own Deployments, ``canaries`` the canary Deployments, ``gates`` the gate
    Jobs by name."""
    old = list(ed.status.rollouts if ed.status else [])
    records = {(r.gpu_product, r.canary_key): r for r in old}
    out = Steered(decision=decision)
    by_name = {d.name: d for d in owned}
    canary_by_name = {d.name: d for d in canaries}
    kept_canaries: set[str] = set()
    notes = {str(k): str(v) for k, v in (ed.metadata.get("annotations") or {}).items()}
    serves = []
    for serve in decision.serves:
        current = by_name.get(serve.deployment)
        name = canary_name(serve.deployment)
        new_key = serve.engine_key
        stable_key = current.engine_key if current is not None else None
        rollout = (ed.spec.rollout is not None and current is not None
                   and current.mode == "engine" and serve.mode == "engine"
                   and new_key is not None and stable_key is not None)
        if not rollout or new_key is None:
            serves.append(serve)
            continue
        assert current is not None and stable_key is not None
        if new_key == stable_key:  # the product's Deployment serves the key already
            serves.append(serve)
            record = records.get((serve.product, new_key))
            if record is not None and record.phase == "Promoting":
                done = current.rolled_out and current.spec_hash is not None
                if done:
                    _record(out, record, "Promoted", record.reason or "Promoted", f"engine "
                            f"{short_key(new_key)} serves every replica",
                            Event("Normal", "Promoted", f"{serve.label}: engine "
                                  f"{short_key(new_key)} promoted: it serves every replica"))
                else:
                    kept_canaries.add(name)
                    out.rollouts.append(record)
            continue
        stable = replace(serve, engine_key=stable_key, engine_uri=current.engine_uri,
                         engine_upload=current.engine_upload,
                         backend=current.backend if current.backend in ("tensorrt", "pytorch")
                         else serve.backend)  # type: ignore[arg-type]
        record = records.get((serve.product, new_key)) or RolloutStatus(
            gpu_product=serve.product, phase="Progressing", canary_key=new_key,
            stable_key=stable_key, canary_deployment=name)
        record = record.model_copy(update={"stable_key": stable_key,
                                           "canary_deployment": name})
        label = serve.label
        if _named(notes, REJECT_ANNOTATION, new_key) and record.phase not in REFUSED:
            serves.append(stable)
            _record(out, record, "Rejected", "RejectedByHand", f"engine {short_key(new_key)} "
                    f"rejected by hand ({REJECT_ANNOTATION}); engine {short_key(stable_key)} "
                    "serves on", Event("Warning", "Rejected", f"{label}: engine "
                                       f"{short_key(new_key)} rejected by hand"))
            continue
        if _named(notes, PROMOTE_ANNOTATION, new_key) and record.phase != "Promoting":
            serves.append(serve)
            kept_canaries.add(name)
            _record(out, record, "Promoting", "PromotedByHand", f"engine {short_key(new_key)} "
                    f"promoted by hand ({PROMOTE_ANNOTATION}): rolling onto every replica",
                    Event("Normal", "Promoting", f"{label}: engine {short_key(new_key)} "
                          "promoted by hand"))
            continue
        if record.phase in REFUSED:
            serves.append(stable)
            out.rollouts.append(record)
            continue
        if record.phase == "Promoting":
            serves.append(serve)
            kept_canaries.add(name)
            out.rollouts.append(record)
            continue
        _canary(ed, serve, record, canary_by_name.get(name), current, pods, gates, now, out)
        phase = out.rollouts[-1].phase
        serves.append(serve if phase == "Promoting" else stable)
        if phase in UNDER_WAY:
            kept_canaries.add(name)
    out.decision = replace(decision, serves=serves)
    out.delete = sorted(c.name for c in canaries if c.name not in kept_canaries)
    out.canaries = [c for c in out.canaries if c.serve.deployment in kept_canaries]
    touched = {(r.gpu_product, r.canary_key) for r in out.rollouts}
    history = [r for r in old if (r.gpu_product, r.canary_key) not in touched]
    merged = history + out.rollouts
    refused = [r for r in merged if r.phase in REFUSED]
    others = [r for r in merged if r.phase not in REFUSED]
    out.rollouts = (refused + others)[-HISTORY:] if len(merged) > HISTORY else merged
    return out


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
    out.canaries.append(CanaryServe(replace(serve, deployment=name), canary_replicas(ed)))
    started = Event("Normal", "CanaryStarted", f"{label}: engine {short_key(key)} serves a "
                    f"canary ({name}) beside engine {short_key(record.stable_key or '')}")
    if seen is None or seen.engine_key != key:
        _record(out, record, "Progressing", "CanaryStarting", f"starting canary {name} of "
                f"engine {short_key(key)}", started if record.reason is None else None)
        return
    stuck = trouble(label, seen, pods, key)
    if stuck is not None and stuck.stalled:
        _record(out, record, "RolledBack", stuck.reason, f"canary {name} failed, rolled back;"
                f" engine {short_key(record.stable_key or '')} serves on: {stuck.message}",
                Event("Warning", "RolledBack", f"{label}: canary of engine {short_key(key)} "
                      f"rolled back: {stuck.reason}: {stuck.message}"))
        out.canaries.pop()
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
    job = gate_job_name(str(ed.metadata["name"]), serve.product, key)
    run = gates.get(job)
    if run is None or not run.finished:
        stable_pod = _ready_pod(pods, current.name)
        canary_pod = _ready_pod(pods, seen.name)
        if run is None and stable_pod is not None and canary_pod is not None:
            port = ed.spec.server.port
            out.gates.append(GateWanted(serve.product, key, job, _url(canary_pod, port),
                                        _url(stable_pod, port)))
        _record(out, record, "Analyzing", "GateRunning", f"gate Job {job} compares engine "
                f"{short_key(key)} with {short_key(record.stable_key or '')}",
                ready_since=since, gate_job=job)
        return
    if run.report is None or not run.succeeded:
        _record(out, record, "Rejected", "GateFailed", f"gate Job {job} failed: "
                f"{run.message or 'no report'}; engine {short_key(record.stable_key or '')} "
                "serves on", Event("Warning", "Rejected", f"{label}: engine {short_key(key)}"
                                   f" rejected: gate Job {job} failed: {run.message}"),
                ready_since=since, gate_job=job)
        out.canaries.pop()
        return
    passed, reason, message = verdict(ed, run.report)
    figures = {"ready_since": since, "gate_job": job, "canary": _figures(run.report.canary),
               "stable": _figures(run.report.stable),
               "golden_prompts": run.report.golden_prompts,
               "golden_mismatches": run.report.golden_mismatches}
    if passed:
        _promote(out, record, label, key, reason, message, since, **figures)
        return
    _record(out, record, "Rejected", reason, f"{message}; engine "
            f"{short_key(record.stable_key or '')} serves on",
            Event("Warning", "Rejected", f"{label}: engine {short_key(key)} rejected by the "
                  f"gate: {message}"), **figures)
    out.canaries.pop()


def _promote(out: Steered, record: RolloutStatus, label: str, key: str, reason: str,
             message: str, since: datetime, **figures: Any) -> None:
    """Promote: the product's Deployment takes the key (the serve is switched by the caller
    on the next pass, from the status of record); the canary stays until it has rolled."""
    _record(out, record, "Promoting", reason, f"{message}: rolling onto every replica",
            Event("Normal", "Promoting", f"{label}: engine {short_key(key)} promoted: "
                  f"{message}"), **{"ready_since": since, **figures})
