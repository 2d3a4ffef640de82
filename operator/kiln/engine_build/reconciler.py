"""The EngineBuild reconciler: gathers the facts of one EngineBuild once (weights, store,
Jobs, the EngineDeployments that reference it and their pods' reports), plans (pure:
``kiln.engine_build.plan``), acts (``job_writes``), writes status.

Level-based: every call recomputes from the object, the Jobs, the store and the
EngineDeployments, so running it twice, or after a crash, changes nothing; what must survive
a restart is read back from the status kiln wrote (the weights identity, engine states and
failures). It runs in the reconcile shell (``kiln.reconcile.shell``) and is the only writer of
EngineBuild status. Its collaborators: ``weights`` (the identity), ``engines`` (the engines in
the store: trusted manifests, signing, healing), ``job_writes`` (the key's Job).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import urllib3

from kiln import EB_PLURAL, metrics
from kiln.api import EngineBuild, EngineDeployment, parse_duration
from kiln.config import OperatorConfig
from kiln.contract import layout
from kiln.contract.key import engine_key, short_key
from kiln.contract.manifest import Manifest
from kiln.contract.termination import Failure
from kiln.domain.aot import warmup_for
from kiln.domain.pods import ObservedPod
from kiln.domain.pool import GpuNode, auto_targets, needed_products
from kiln.domain.status import Event
from kiln.engine_build.engines import Engines, Report, Wake, reports
from kiln.engine_build.job_writes import Build, JobWrites
from kiln.engine_build.jobs import ObservedJob
from kiln.engine_build.pending import CreateFailure, Stuck, stuck
from kiln.engine_build.plan import Plan, Want, plan, retrying, stalled
from kiln.engine_build.queued import ObservedWorkload
from kiln.engine_build.targets import effective
from kiln.engine_build.weights import Identity, Weights, source_label
from kiln.errors import KilnError
from kiln.kube.client import Kube
from kiln.reconcile.shell import Outcome, Pass, Shell, parse
from kiln.reconcile.written import WrittenStatus
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
EventSink = Callable[[dict[str, Any], Event], None]


class BuildWorld(Protocol):
    """What the operator last saw (Kopf's indexes): build Jobs, the EngineDeployments that
    reference an EngineBuild, the GPU nodes."""

    def by_key(self, namespace: str, key: str) -> ObservedJob | None: ...

    def owned_by(self, uid: str) -> list[ObservedJob]: ...

    def referencing(self, namespace: str, build: str) -> list[dict[str, Any]]: ...

    def gpu_nodes(self) -> list[GpuNode]: ...

    def job_pods(self, namespace: str, job: str) -> list[ObservedPod]: ...

    def create_failure(self, namespace: str, job: str) -> CreateFailure | None: ...

    def workload(self, namespace: str, job: str) -> ObservedWorkload | None: ...

    def serving_pods(self, namespace: str, owner: str) -> list[ObservedPod]: ...


@dataclass(frozen=True)
class Facts:
    """What one pass knows of one EngineBuild, gathered once, before it plans."""

    build: Build
    weights: Identity
    auto: list[str]
    wants: list[Want]
    observed: dict[str, ObservedJob]
    """The Jobs of the wanted keys, by key."""
    owned: dict[str, ObservedJob]
    """Every Job this EngineBuild owns, by key."""
    failures: dict[str, Failure]
    manifests: dict[str, Manifest | None]
    foreign: frozenset[str]
    stuck: dict[str, Stuck]
    lost: dict[str, str]


@dataclass(frozen=True)
class Settling:
    """No identity accepted yet, and the weights still move: why."""

    auto: list[str]
    why: str


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class EngineBuildReconciler:
    """The collaborators, and the builders' verdicts read from failed Jobs' pods (kept once
    found: the pods may be gone by the next pass). None of the caches decides an outcome a
    restart would decide differently: each is read back from status or re-read. ``wake``
    marks an EngineBuild due (an engine it asked about was set aside)."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink,
                 clock: Callable[[], datetime] = _now, wake: Wake | None = None) -> None:
        self.kube = kube
        self.config = config
        self.emit = emit
        self.clock = clock
        self.trust = Trust.from_config(config)
        self.weights = Weights(kube, config, clock)
        self.engines = Engines(config, self.trust, wake)
        """Engines in the store: trusted manifests, signing, healing."""
        self.jobs = JobWrites(kube, config, self.trust)
        self._failures: dict[tuple[str, str], Failure | None] = {}
        self.written = WrittenStatus(
            lambda namespace, name, patch: kube.patch_status(EB_PLURAL, namespace, name, patch))
        self.shell = Shell("EngineBuild", self.written, emit, log)
        """The per-object lock, backoff and error policy both reconcilers share."""

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is cached for a deleted object."""
        self.shell.forget(namespace, name)
        self.weights.forget(namespace, name)

    def reconcile(self, body: Mapping[str, Any], world: BuildWorld) -> Outcome[Plan]:
        """Bring one EngineBuild's Jobs and status in line with what exists, in the shell
        (``kiln.reconcile.shell``: its error policy, lock and backoff)."""
        return self.shell.run(body, Pass(
            run=lambda fresh: self._pass(fresh, world), inputs=self._inputs,
            retrying=self._retrying, stalled=self._stalled))

    def next_try(self, namespace: str, name: str) -> float | None:
        """Seconds until a backing-off object is due again, or None."""
        return self.shell.next_try(namespace, name)

    def _pass(self, body: dict[str, Any], world: BuildWorld) -> Plan:
        meta = body["metadata"]
        return self._reconcile(meta["namespace"], meta["name"], str(meta["uid"]),
                               parse(EngineBuild, body), body, world)

    def _inputs(self, body: dict[str, Any]) -> tuple[Any, ...]:
        """What a failed pass depended on besides the world: the spec and the versions of the
        Secrets it references (``credentialsSecret``, the store Secret): a read each, made only
        while the object backs off, so a Secret's update retries at the next resync. (Watching
        Secrets would need list/watch on every Secret of the cluster: kiln reads only the ones
        named, one at a time.)"""
        namespace, eb = body["metadata"]["namespace"], parse(EngineBuild, body)
        versions = []
        for secret in (eb.spec.model.credentials_secret, self.config.store_secret):
            try:
                versions.append(self.kube.secret_version(namespace, secret) if secret else None)
            except (KilnError, urllib3.exceptions.HTTPError, OSError):  # the server is down
                versions.append("unreadable")
        return (eb.metadata.get("generation"), eb.spec.model.credentials_secret, *versions)

    def _retrying(self, body: dict[str, Any], error: KilnError,
                  message: str) -> tuple[dict[str, Any], list[Event]]:
        status, events = retrying(parse(EngineBuild, body), error.reason, message)
        return status.to_dict(), events

    def _stalled(self, body: dict[str, Any],
                 error: KilnError) -> tuple[dict[str, Any], list[Event]]:
        status, events = stalled(parse(EngineBuild, body), error.reason, error.message)
        return status.to_dict(), events

    def _reconcile(self, namespace: str, name: str, uid: str, eb: EngineBuild,
                   body: dict[str, Any], world: BuildWorld) -> Plan:
        facts = self._facts(namespace, name, uid, eb, world)
        if isinstance(facts, Settling):
            return self._settle(body, eb, facts.auto, facts.why)
        result = plan(eb, facts.wants, identity=facts.weights.identity,
                      checked_at=facts.weights.checked_at, source=source_label(eb),
                      auto_targets=facts.auto, manifests=facts.manifests,
                      jobs={**facts.owned, **facts.observed}, failures=facts.failures, uid=uid,
                      foreign=facts.foreign, stuck=facts.stuck, lost=facts.lost)
        self._act(facts, result)
        self.written.write(body, result.status.to_dict())
        for event in result.events:
            self.emit(body, event)
        _record(uid, result)
        return result

    def _facts(self, namespace: str, name: str, uid: str, eb: EngineBuild,
               world: BuildWorld) -> Facts | Settling:
        """Everything the plan needs, each read once. The weights are read again before the
        keys are computed when a Job of this object saw them change (``WeightsChanged``)."""
        store = self.engines.store_uri(namespace, eb)
        image = self.jobs.image(eb)
        self.jobs.check_pod_policy(eb)
        auto = self._auto_targets(namespace, name, eb, world)
        owned = {j.key: j for j in world.owned_by(uid)}
        failed = {j.name: f for j in owned.values()
                  if j.state == "Failed" and (f := self._failure(namespace, j, world))}
        weights, settling = self.weights.accepted(
            namespace, eb, moved=self.weights.moved(namespace, eb, failed))
        if weights is None:
            return Settling(auto, settling or "")
        build = Build(namespace, name, uid, eb, image, store, weights.identity,
                      self.weights.origin(namespace, eb), self.weights.endpoints(namespace, eb),
                      self.weights.calibration(namespace, eb, weights.read_at))
        shared = self.weights.shared_origin(namespace, eb)
        common = None if shared is None else self.weights.calibration(
            namespace, eb, weights.read_at, shared=True)
        warmup = warmup_for(eb.spec.build, self.config.warmup_runtime)
        wants = []
        for t in effective(eb.spec, auto):
            keys = [engine_key(weights_identity=build.identity, origin=origin,
                               build=eb.spec.build, builder_image=image,
                               gpu_product=t.gpu_product,
                               compute_capability=t.compute_capability, calibration=calibration,
                               warmup=warmup)
                    for origin, calibration in ((build.origin, build.calibration),
                                                (shared, common)) if origin is not None]
            # the platform's engine of these weights (build namespace), if it has one
            key = keys[-1] if len(keys) > 1 and self.engines.shared(
                store, keys[-1], namespace) else keys[0]
            wants.append(Want(t, key, layout.engine_uri(store, key)))
        observed = {w.key: j for w in wants if (j := self.jobs.job(world, namespace, w.key))}
        for key in self.jobs.replace_outdated(
                build, wants, observed, lambda jobs: self._stuck(namespace, eb, jobs, world)):
            observed.pop(key)
        failures = {k: f for k, j in observed.items()
                    if j.state == "Failed" and (f := self._failure(namespace, j, world))}
        said = self._reports(namespace, name, [w.key for w in wants], world)
        for want in wants:  # what serving pods report is checked before it is read
            self.engines.heed(store, want.key, said.get(want.key, []), (namespace, name))
        manifests = {w.key: self.engines.manifest(store, w.key, namespace, observed.get(w.key))
                     for w in wants}
        foreign = set()
        for want in wants:
            job = observed.get(want.key)
            if manifests[want.key] is None and job is not None and job.state == "Succeeded":
                manifests[want.key], stray = self._sign_built(build, want, job)
                if stray:
                    foreign.add(want.key)
        return Facts(build, weights, auto, wants, observed, owned, failures, manifests,
                     frozenset(foreign), self._stuck(namespace, eb, observed, world),
                     self._lost(store, [k for k, m in manifests.items() if m is None], said))

    def _act(self, facts: Facts, result: Plan) -> None:
        """Replace, create or join, and release Jobs as planned."""
        build = facts.build
        for job in result.replace:
            self._failures.pop((build.namespace, job.name), None)
            self.weights.replaced(build.namespace, job.name)
            self.jobs.replace(build.namespace, job)
        replaced = {j.key for j in result.replace}
        for want in result.create:
            seen = facts.observed.get(want.key)
            if seen is not None and want.key not in replaced and build.uid in seen.owner_uids:
                continue  # the Job exists and is ours: nothing to write
            self.jobs.ensure(build, want,
                             exists=seen is not None and want.key not in replaced)
        for job in result.release:
            self.jobs.release(build.namespace, job, build.uid)

    def _sign_built(self, build: Build, want: Want,
                    job: ObservedJob) -> tuple[Manifest | None, bool]:
        """Sign what the key's own Job (succeeded) wrote, once the Job is kiln's render of the
        key (``ForeignJob`` otherwise); (manifest, foreign) as ``Engines.sign_built``."""
        body = self.jobs.read_built(build, want, job)
        if body is None:
            return None, False
        return self.engines.sign_built(build.store, want.key, body,
                                       self.kube.job_pods(build.namespace, job.name))

    def _lost(self, uri: str, keys: list[str],
              said: dict[str, list[Report]]) -> dict[str, str]:
        """What to say of each engine in ``keys`` that is absent (the plan uses it for those
        that were ready): set aside as damaged, else missing, and who reported it."""
        found = {}
        for key in keys:
            finding = self.engines.finding(uri, key)
            where = f"reported by pod {said[key][0].pod} ({said[key][0].reason}); " if (
                said.get(key)) else ""
            found[key] = (
                f"EngineDamaged: {finding.message}; the engine is set aside at "
                f"{finding.where}; {where}building engine {short_key(key)} again"
                if finding is not None else
                f"EngineMissing: engine {short_key(key)} is no longer in {uri} (deleted, or "
                f"its manifest no longer verifies); {where}building it again")
        return found

    def _failure(self, namespace: str, job: ObservedJob, world: BuildWorld) -> Failure | None:
        """The builder's verdict from a failed Job's pods (the index); kept once found, as
        the pods may be gone by the next pass."""
        ref = (namespace, job.name)
        if self._failures.get(ref) is None:
            pods = sorted(world.job_pods(namespace, job.name),
                          key=lambda p: p.created.timestamp() if p.created else 0.0)
            found = [p.failure for p in pods if p.failure is not None]
            self._failures[ref] = found[-1] if found else None
        return self._failures[ref]

    def _stuck(self, namespace: str, eb: EngineBuild, observed: dict[str, ObservedJob],
               world: BuildWorld) -> dict[str, Stuck]:
        """Why each running Job's pod does not run, from the pod and Event indexes."""
        timeout = parse_duration(eb.spec.job.pending_timeout)
        found = {}
        for key, job in observed.items():
            if job.state != "Active":
                continue
            created = world.create_failure(namespace, job.name)
            if created is not None and (job.uid is None or created.job_uid not in (None,
                                                                                   job.uid)):
                created = None  # about an earlier Job of this name (Events outlive Jobs)
            why = stuck(job.name, world.job_pods(namespace, job.name), created, self.clock(),
                        timeout, job.created, queue=job.queue if job.suspended else None,
                        workload=world.workload(namespace, job.name))
            if why is not None:
                found[key] = why
        return found

    def _reports(self, namespace: str, name: str, keys: list[str],
                 world: BuildWorld) -> dict[str, list[Report]]:
        """What the serving pods of the EngineDeployments that reference this EngineBuild
        report of its engines (missing, damaged), by key."""
        pods = [pod for ed in world.referencing(namespace, name)
                if (ed.get("spec") or {}).get("engineBuildRef", {}).get("name") == name
                for pod in world.serving_pods(namespace, ed["metadata"]["name"])]
        return reports(pods, keys)

    def _auto_targets(self, namespace: str, name: str, eb: EngineBuild,
                      world: BuildWorld) -> list[str]:
        """The GPU products the EngineDeployments that reference this build now serve on."""
        serving = [ed for b in world.referencing(namespace, name)
                   if not b["metadata"].get("deletionTimestamp") and (ed := _readable(b))]
        serving = [ed for ed in serving if ed.spec.engine_build_ref.name == name]
        return auto_targets(eb.spec, needed_products(serving, world.gpu_nodes()))

    def _settle(self, body: dict[str, Any], eb: EngineBuild, auto: list[str],
                why: str) -> Plan:
        """No identity accepted yet and the weights still move: say so, build nothing."""
        status, events = stalled(eb, "WeightsSettling", why, settling=True,
                                 auto_targets=auto)
        self.written.write(body, status.to_dict())
        for event in events:
            self.emit(body, event)
        return Plan(status=status)


def _readable(body: dict[str, Any]) -> EngineDeployment | None:
    """An EngineDeployment, or None when the operator cannot read it (it says so itself)."""
    try:
        return parse(EngineDeployment, body)
    except KilnError:
        return None


def _record(uid: str, result: Plan) -> None:
    """Count what changed for the metrics (once per engine and object: reconciles repeat)."""
    for entry in result.status.engines:
        once = f"{uid}/{entry.key}"
        if entry.state == "Cached":
            metrics.record_cache(True, once=once)
        elif entry.state == "Building":
            metrics.record_cache(False, once=once)
        elif entry.state == "Ready":
            metrics.record_build_succeeded(entry.build_seconds, once=once)
        elif entry.state == "Failed":
            reason = (entry.message or "").split(":", 1)[0]
            metrics.record_build_failed(reason, once=once)
