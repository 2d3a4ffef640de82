"""Plan an EngineBuild from what exists: keys, engines in the store, build Jobs.

Pure: given the object, its resolved targets and keys, the manifests found and the Jobs
observed, it says which Jobs must exist, which the object no longer wants, the status,
and the Events for what changed. Running it twice on the same facts gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kiln.api import (
    BuildSpec,
    EngineBuild,
    EngineBuildStatus,
    EngineState,
    EngineStatus,
    Startup,
    Weights,
)
from kiln.contract.key import short_key
from kiln.contract.manifest import Manifest
from kiln.contract.termination import Failure
from kiln.domain import catalogue
from kiln.domain.status import Event, set_conditions
from kiln.engine_build.jobs import ObservedJob, job_name
from kiln.engine_build.pending import Stuck
from kiln.engine_build.targets import ResolvedTarget
from kiln.trtllm import refusals


@dataclass(frozen=True)
class Want:
    """One effective target and its engine key."""

    target: ResolvedTarget
    key: str
    uri: str


@dataclass
class Plan:
    status: EngineBuildStatus
    create: list[Want] = field(default_factory=list)
    """Targets whose Job must exist (create it, or join it as an owner)."""
    release: list[ObservedJob] = field(default_factory=list)
    """Jobs this object owns whose key it no longer wants."""
    replace: list[ObservedJob] = field(default_factory=list)
    """Jobs to delete before creating them again: failed ones (the spec changed since), and
    finished ones whose engine is no longer in the store."""
    events: list[Event] = field(default_factory=list)


def _from_manifest(entry: EngineStatus, manifest: Manifest) -> EngineStatus:
    versions = manifest.versions
    return entry.model_copy(update={
        "build_seconds": manifest.build_seconds,
        "size_bytes": manifest.total_bytes,
        "trtllm_version": versions.get("tensorrt_llm") or versions.get("trtllm"),
        "tensorrt_version": versions.get("tensorrt"),
        "plugins": dict(manifest.built) or None,
        "message": " ".join(manifest.overridden) or None,
        "upload": manifest.upload or None,
        "startup": Startup(runtime=manifest.artifacts.runtime,
                           cold_seconds=manifest.artifacts.cold_seconds,
                           warm_seconds=manifest.artifacts.warm_seconds,
                           artifact_bytes=manifest.artifacts.bytes)
        if manifest.artifacts else None,
    })


def unsupported(build: BuildSpec, target: ResolvedTarget) -> str | None:
    """Why the catalogue, or trtllm-build's refusal of a flag on this compute capability
    (kiln.trtllm.refusals), says ``build`` cannot run on ``target``, or None. The CRD's CEL
    checks ``spec.targets``; auto targets (an EngineDeployment's GPUs, with ``targets: []``)
    are checked here, before any Job."""
    q = build.quantization
    where: catalogue.GPU | str
    try:
        where = catalogue.by_name(target.name)
    except KeyError:
        where = target.compute_capability
    answer = catalogue.supports(where, build.backend, q.algo, q.kv_cache)
    if not answer.ok:
        return answer.reason
    major, _, minor = target.compute_capability.partition(".")
    sm = int(major) * 10 + int(minor or 0)
    for rule in refusals.flag_refusals(build.extra_args, sm):
        given = [a for a in build.extra_args
                 if a[2:].partition("=")[0] in rule.plugin_names()]
        return (f"extraArgs {' '.join(given)}: refused by trtllm-build on compute capability "
                f"{target.compute_capability} ({rule.id}, {rule.source}): {rule.effect}")
    return None


LOST = ("EngineMissing", "EngineDamaged")
"""The reasons an engine that was ready is built again (its message starts with one)."""


def _lost(want: Want, prior: EngineStatus | None, manifest: Manifest | None,
          lost: dict[str, str]) -> str | None:
    """Why the engine of ``want`` is built again, when status says it was ready and the
    store no longer has it (deleted, set aside as damaged, or no longer signed); else None.
    The status is the memory: the pass after this one sees it ``Building``."""
    if (manifest is not None or prior is None or prior.key != want.key
            or prior.state not in ("Ready", "Cached")):
        return None
    return lost.get(want.key) or (f"EngineMissing: engine {short_key(want.key)} is no longer "
                                  f"in the store at {want.uri}; building it again")


def _engine(want: Want, prior: EngineStatus | None, manifest: Manifest | None,
            job: ObservedJob | None, failure: Failure | None,
            retry_failed: bool, uid: str, foreign: bool = False,
            why_not: str | None = None, lost: str | None = None) -> tuple[EngineStatus, bool]:
    """The status entry of one target, and whether its Job must exist."""
    t = want.target
    entry = EngineStatus(target=t.name, gpu_product=t.gpu_product,
                         compute_capability=t.compute_capability, key=want.key, uri=want.uri)
    if why_not is not None:
        return entry.model_copy(update={
            "state": "Failed", "job": None,
            "message": f"Unsupported: {t.gpu_product} ({t.name}): {why_not}"}), False
    same_key = prior is not None and prior.key == want.key
    if manifest is not None:
        # Built here when this object owns the key's Job, finished or not: the manifest can
        # land before the Job is marked Complete (an operator restarted mid-build sees that).
        ours = job is not None and uid in job.owner_uids
        built_here = ours or (same_key and prior is not None
                              and prior.state in ("Ready", "Building"))
        state: EngineState = "Ready" if built_here else "Cached"
        entry = _from_manifest(entry, manifest).model_copy(update={
            "state": state, "job": job.name if job else None})
        return entry, False
    if lost is not None:
        return entry.model_copy(update={"state": "Building", "job": job_name(want.key),
                                        "message": lost}), True
    if job is not None and job.state == "Active":
        said = (prior.message if same_key and prior is not None and prior.state == "Building"
                and (prior.message or "").startswith(LOST) else None)
        return entry.model_copy(update={"state": "Building", "job": job.name,
                                        "message": said}), True
    if job is not None and job.state == "Succeeded" and foreign:
        # The store holds a manifest this Job did not write (unsigned): build again.
        return entry.model_copy(update={"state": "Building", "job": job.name}), True
    if job is not None and job.state == "Succeeded":
        return entry.model_copy(update={
            "state": "Failed", "job": job.name,
            "message": f"ManifestMissing: the build Job succeeded but {want.uri}manifest.json "
                       "is not in the store"}), False
    if job is not None and job.state == "Failed" and retry_failed:
        return entry.model_copy(update={"state": "Building", "job": job.name}), True
    if job is not None and job.state == "Failed":
        why = failure or job.failure or Failure("JobFailed", "the build Job failed")
        return entry.model_copy(update={
            "state": "Failed", "job": job.name, "message": f"{why.reason}: {why.message}"}), False
    if same_key and prior is not None and prior.state == "Failed" and not retry_failed:
        return entry.model_copy(update={"state": "Failed", "message": prior.message}), False
    return entry.model_copy(update={"state": "Building", "job": job_name(want.key)}), True


def _carry_previous(entry: EngineStatus, prior: EngineStatus | None) -> EngineStatus:
    """Keep naming the engine served before while a new key builds."""
    if entry.state in ("Ready", "Cached") or prior is None:
        return entry
    if prior.key != entry.key and prior.state in ("Ready", "Cached"):
        return entry.model_copy(update={"previous_key": prior.key, "previous_uri": prior.uri})
    if prior.previous_key:
        return entry.model_copy(update={"previous_key": prior.previous_key,
                                        "previous_uri": prior.previous_uri})
    return entry


def _events(engines: list[EngineStatus], prior: dict[str, EngineStatus]) -> list[Event]:
    events = []
    for e in engines:
        before = prior.get(e.target)
        if before is not None and (before.key, before.state) == (e.key, e.state):
            continue
        short = short_key(e.key or "")
        if e.state == "Building":
            events.append(Event("Normal", "BuildStarted",
                                f"building engine {short} for {e.target} in Job {e.job}"))
        elif e.state == "Ready":
            events.append(Event("Normal", "EngineReady", f"engine {short} for {e.target} "
                                f"is ready at {e.uri}"))
            if e.message:
                events.append(Event("Warning", "PluginsOverridden",
                                    f"engine {short} for {e.target}: {e.message}"))
        elif e.state == "Cached":
            events.append(Event("Normal", "EngineCached",
                                f"engine {short} for {e.target} found in the store at {e.uri}"))
        else:
            events.append(Event("Warning", "BuildFailed",
                                f"engine {short} for {e.target}: {e.message}"))
    return events


def plan(eb: EngineBuild, wants: list[Want], *, identity: str, checked_at: datetime | None,
         source: str, auto_targets: list[str], manifests: dict[str, Manifest | None],
         jobs: dict[str, ObservedJob], failures: dict[str, Failure], uid: str,
         foreign: frozenset[str] = frozenset(), stuck: dict[str, Stuck] | None = None,
         lost: dict[str, str] | None = None) -> Plan:
    """The plan for one EngineBuild; ``jobs``, ``manifests`` (signed ones only) and ``stuck``
    (why a running Job's pod does not run) are keyed by engine key; ``auto_targets`` are what
    its EngineDeployments need now; ``foreign``: keys whose succeeded Job's manifest was
    replaced by another writer's (built again); ``lost``: what to say of an engine that was
    ready and is no longer in the store (``EngineMissing: ...``, ``EngineDamaged: ...``),
    by key."""
    old = eb.status or EngineBuildStatus()
    generation = int(eb.metadata.get("generation") or 0)
    # A failed engine is built again only after the spec changed since it was reported.
    retry_failed = old.observed_generation is not None and old.observed_generation != generation
    prior = {e.target: e for e in old.engines}
    result = Plan(status=EngineBuildStatus())
    engines = []
    for want in wants:
        before = prior.get(want.target.name)
        why_not = unsupported(eb.spec.build, want.target)
        gone = None if why_not else _lost(want, before, manifests.get(want.key), lost or {})
        entry, needs_job = _engine(want, before, manifests.get(want.key), jobs.get(want.key),
                                   failures.get(want.key), retry_failed, uid,
                                   want.key in foreign, why_not, gone)
        if gone is not None:
            reason, _, message = gone.partition(": ")
            result.events.append(Event("Warning", reason, f"engine {short_key(want.key)} for "
                                       f"{want.target.name}: {message}"))
        why = (stuck or {}).get(want.key)
        if why is not None and entry.state == "Building":
            entry = entry.model_copy(update={"message": f"{why.reason}: {why.message}"})
        engines.append(_carry_previous(entry, before))
        if needs_job:
            result.create.append(want)
            stale = jobs.get(want.key)
            if stale is not None and (stale.state == "Failed" or want.key in foreign or (
                    gone is not None and stale.state == "Succeeded")):
                result.replace.append(stale)
    wanted = {w.key for w in wants}
    result.release = [j for j in jobs.values() if uid in j.owner_uids and j.key not in wanted]

    states = {e.state for e in engines}
    blocked = [(e, why) for e in engines if e.state == "Building"
               and (why := (stuck or {}).get(e.key or "")) and not why.waiting]
    if not engines:
        phase, ready, reason, message = ("Pending", False, "NoTargets",
                                         "no targets: list spec.targets, or reference this "
                                         "build from an EngineDeployment")
    elif "Failed" in states:
        failed = [e for e in engines if e.state == "Failed"]
        phase, ready, reason = "Failed", False, "BuildFailed"
        message = "; ".join(f"{e.target}: {e.message}" for e in failed)
    elif blocked:
        phase, ready = "Pending", False
        reason = next((w.reason for _, w in blocked if w.stalled), blocked[0][1].reason)
        message = "; ".join(f"{e.target}: {w.reason}: {w.message}" for e, w in blocked)
    elif states <= {"Ready", "Cached"}:
        phase, ready, reason = "Ready", True, "EnginesReady"
        message = f"{len(engines)} engine(s) ready"
    else:
        building = [e.target for e in engines if e.state == "Building"]
        phase, ready, reason = "Building", False, "Building"
        message = f"building for {', '.join(building)}"
    halted = phase == "Failed" or any(w.stalled for _, w in blocked)
    conditions = set_conditions(old.conditions, generation=generation, ready=ready,
                                reconciling=phase in ("Pending", "Building") and bool(engines)
                                and not halted, stalled=halted, reason=reason, message=message)
    result.status = EngineBuildStatus(
        observed_generation=generation, phase=phase, conditions=conditions,
        weights=Weights(identity=identity, checked_at=checked_at, source=source),
        auto_targets=auto_targets, engines=engines,
        gpus=",".join(e.target for e in engines) or None,
        engine_keys=",".join(short_key(e.key or "") for e in engines) or None,
    )
    if old.weights and old.weights.identity and old.weights.identity != identity:
        result.events.append(Event(
            "Normal", "WeightsChanged",
            f"weights changed ({short_key(identity)}): building new engines"))
    if auto_targets != old.auto_targets:
        result.events.append(Event("Normal", "AutoTargets", "GPU products served by "
                                   "EngineDeployments: " + (", ".join(auto_targets) or "none")))
    result.events += _events(engines, prior)
    was = next((c.reason for c in old.conditions if c.type == "Ready"), None)
    if blocked and was != reason:
        result.events.append(Event("Warning", reason, message))
    return result


def stalled(eb: EngineBuild, reason: str, message: str, *, settling: bool = False,
            auto_targets: list[str] | None = None) -> tuple[EngineBuildStatus, list[Event]]:
    """The status of an EngineBuild whose work cannot start: ``Stalled`` with the error
    (``Failed``), or, ``settling``, ``Reconciling`` while its weights still move (``Pending``);
    the rest of its status as it was. A Warning Event when the reason is new."""
    old = eb.status or EngineBuildStatus()
    generation = int(eb.metadata.get("generation") or 0)
    conditions = set_conditions(old.conditions, generation=generation, ready=False,
                                reconciling=settling, stalled=not settling, reason=reason,
                                message=f"{reason}: {message}")
    status = old.model_copy(update={
        "observed_generation": generation, "conditions": conditions,
        "phase": "Pending" if settling else "Failed",
        "auto_targets": old.auto_targets if auto_targets is None else auto_targets})
    was = next((c for c in old.conditions
                if c.type == ("Reconciling" if settling else "Stalled")), None)
    events = []
    if was is None or was.status != "True" or was.reason != reason:
        events.append(Event("Normal" if settling else "Warning", reason, message))
    return status, events


def retrying(eb: EngineBuild, reason: str, message: str) -> tuple[EngineBuildStatus,
                                                                    list[Event]]:
    """The status of an EngineBuild whose pass failed in a way that may heal: ``Reconciling``
    with ``message`` (``Retrying <reason>: ...``), the rest of its status as it was. A Warning
    Event when the reason is new."""
    old = eb.status or EngineBuildStatus()
    generation = int(eb.metadata.get("generation") or 0)
    conditions = set_conditions(old.conditions, generation=generation, ready=False,
                                reconciling=True, stalled=False, reason=reason,
                                message=message)
    phase = old.phase if old.phase in ("Pending", "Building") else "Pending"
    # observedGeneration stays: this spec was not applied (a Failed engine is retried once
    # a pass applies the new spec).
    status = old.model_copy(update={"conditions": conditions, "phase": phase})
    was = next((c for c in old.conditions if c.type == "Reconciling"), None)
    events = []
    if was is None or was.status != "True" or was.reason != reason:
        events.append(Event("Warning", reason, message))
    return status, events
