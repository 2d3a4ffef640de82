"""The EngineBuild reconciler: gathers facts (weights, store, Jobs, the EngineDeployments that
reference it), plans, acts.

Level-based: every call recomputes from the object, the Jobs, the store and the
EngineDeployments, so running it twice, or after a crash, changes nothing. What must survive
a restart is read back from the status kiln wrote: the weights identity (the pin with
``onWeightChange: false``), engine states and failures. Called from the work queue's threads
(``kiln.handlers.workqueue``), which never run one object in two threads at once; a lock per
object also keeps other callers from interleaving. It is the only writer of EngineBuild status
(``autoTargets`` and a stall included).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import urllib3

from kiln import EB_PLURAL, metrics
from kiln.api import EngineBuild, EngineDeployment, parse_duration
from kiln.config import OperatorConfig
from kiln.contract import layout
from kiln.contract.key import engine_key, short_key
from kiln.contract.manifest import Manifest
from kiln.contract.task import BuildTask
from kiln.contract.termination import Failure
from kiln.domain.labels import HASH_ANNOTATION, KEY_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.domain.pool import GpuNode, auto_targets, needed_products
from kiln.domain.status import Event
from kiln.engine_build import render, signing
from kiln.engine_build.engines import Engines, Report, Wake, reports
from kiln.engine_build.jobs import ObservedJob, job_name, observe
from kiln.engine_build.pending import CreateFailure, Stuck, stuck
from kiln.engine_build.plan import Plan, Want, plan, retrying, stalled
from kiln.engine_build.targets import effective
from kiln.errors import ImageNotAllowed, KilnError, Unavailable
from kiln.kube.client import Kube
from kiln.reconcile.shell import Outcome, Pass, Shell, parse
from kiln.reconcile.written import WrittenStatus
from kiln.sources import WeightsIdentity, WeightSource, endpoints, open_source, origin_of
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
CREATED_GRACE_SECONDS = 30.0
"""How long a Job created (or joined) here counts as observed before the index shows it."""
MAX_SOURCES = 256
MAX_CACHED = 100_000
"""Entries a cache keyed by source or Job holds before it starts afresh."""
ORIGIN_SECONDS = 300.0
"""How long the origin read from a credentials Secret is kept (a pass reads no Secret)."""
SWAPS = 3
"""Compare-and-swap attempts on a shared Job's owners before the next pass tries again."""
NEVER_RAN = frozenset({"CreateFailed", "Unschedulable", "ImagePullFailed", "ContainerFailed"})
"""Why a Job's pod never ran: a Job of an outdated template is then replaced."""
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

    def serving_pods(self, namespace: str, owner: str) -> list[ObservedPod]: ...


@dataclass
class _Identity:
    fingerprint: tuple[str, ...]
    identity: str
    checked_at: datetime
    """When the identity was first read as it is (``status.weights.checkedAt``)."""
    read_at: float = 0.0
    """When it was last read (monotonic): ``pollInterval`` counts from there."""
    newest: float | None = None
    """When the newest object under the source was written (epoch seconds), if known."""
    uploading: int = 0
    """Uploads in progress under the source."""


@dataclass
class _Read:
    """The last identity read of one source, and when it started."""

    lock: threading.Lock
    started: float = float("-inf")
    found: WeightsIdentity | None = None


def _fingerprint(eb: EngineBuild) -> tuple[str, ...]:
    model = eb.spec.model
    return (model.source, model.revision or "", model.credentials_secret or "")


def source_label(eb: EngineBuild) -> str:
    """``status.weights.source``: the source and its revision, what the identity is of."""
    model = eb.spec.model
    return f"{model.source}@{model.revision}" if model.revision else model.source


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class EngineBuildReconciler:
    """Holds the caches that make reconciles cheap (weights identities, open sources; the
    engines in the store, in ``engines``) and the status this process last wrote. None of
    them decides an outcome a restart would decide differently: each is read back from status
    or re-read. ``wake`` marks an EngineBuild due (an engine it asked about was set aside)."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink,
                 clock: Callable[[], datetime] = _now, wake: Wake | None = None) -> None:
        self.kube = kube
        self.config = config
        self.emit = emit
        self.clock = clock
        self._locks_guard = threading.Lock()
        self._identities: dict[tuple[str, str], _Identity] = {}
        self._origins: dict[tuple[str, str, str | None], tuple[dict[str, str], float]] = {}
        """(namespace, source, credentials Secret) -> (origin, when read)."""
        self.trust = Trust.from_config(config)
        self.engines = Engines(config, self.trust, wake)
        """Engines in the store: trusted manifests, signing, healing."""
        self._failures: dict[tuple[str, str], Failure | None] = {}
        self._sources: OrderedDict[tuple[Any, ...], WeightSource] = OrderedDict()
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self._created: dict[tuple[str, str], tuple[ObservedJob, float]] = {}
        """Jobs this process created or joined, until the index shows them."""
        self._replaced: set[str] = set()
        """Uids of Jobs this process deleted to build their key again: the index may still
        show one for a moment."""
        self._reread_for: set[tuple[str, str]] = set()
        """Failed Jobs (namespace, name) whose ``WeightsChanged`` made a re-read already."""
        self.written = WrittenStatus(
            lambda namespace, name, patch: kube.patch_status(EB_PLURAL, namespace, name, patch))
        self.shell = Shell("EngineBuild", self.written, emit, log)
        """The per-object lock, backoff and error policy both reconcilers share."""

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is cached for a deleted object."""
        self.shell.forget(namespace, name)
        self._identities.pop((namespace, name), None)

    # -- the weights -----------------------------------------------------------------------

    def _credentials(self, namespace: str, eb: EngineBuild) -> dict[str, str] | None:
        secret = eb.spec.model.credentials_secret
        return self.kube.secret_data(namespace, secret) if secret else None

    def _origin(self, namespace: str, eb: EngineBuild) -> dict[str, str]:
        """Where the weights come from, an input of the key (``origin_of``): the endpoint in
        the credentials Secret, read again after ``ORIGIN_SECONDS`` (a pass reads no Secret;
        a pvc:// source needs none: its origin is the namespace, claim and path)."""
        source = eb.spec.model.source
        needs_secret = not source.startswith("pvc://")
        ref = (namespace, source, eb.spec.model.credentials_secret)
        cached = self._origins.get(ref)
        if cached is not None and time.monotonic() - cached[1] < ORIGIN_SECONDS:
            return cached[0]
        origin = origin_of(source, namespace,
                           self._credentials(namespace, eb) if needs_secret else None)
        if len(self._origins) >= MAX_CACHED:
            self._origins.clear()
        self._origins[ref] = (origin, time.monotonic())
        return origin

    def identity(self, namespace: str, eb: EngineBuild, *, refresh: bool = False) -> _Identity:
        """The weights identity: cached; else the one in status, if it was read from this
        source (a restart re-reads nothing); else read. ``refresh`` reads it again."""
        ref = (namespace, str(eb.metadata["name"]))
        cached = self._identities.get(ref)
        fingerprint = _fingerprint(eb)
        if cached and cached.fingerprint == fingerprint and not refresh:
            return cached
        weights = eb.status.weights if eb.status else None
        if (not refresh and weights and weights.identity and weights.checked_at
                and weights.source in (source_label(eb), None)):  # None: written before 0.2
            age = (self.clock() - weights.checked_at).total_seconds()
            entry = _Identity(fingerprint, weights.identity, weights.checked_at,
                              time.monotonic() - max(age, 0.0))
            self._identities[ref] = entry
            return entry
        found = self._read_identity(namespace, eb)
        newest = found.details.get("newest")
        entry = _Identity(fingerprint, found.digest, self.clock(), time.monotonic(),
                          float(newest) if isinstance(newest, int | float) else None,
                          int(found.details.get("uploading") or 0))
        latest = self._identities.get(ref) or cached  # a parallel pass may have read it
        if latest and latest.identity == entry.identity:
            entry.checked_at = latest.checked_at
        elif weights and weights.identity == entry.identity and weights.checked_at:
            entry.checked_at = weights.checked_at
        self._identities[ref] = entry
        return entry

    def _read_identity(self, namespace: str, eb: EngineBuild) -> WeightsIdentity:
        """Read the weights identity, single flight: a read of the same source that started
        after this call began is as fresh as one of its own, so callers arriving together
        (a burst of EngineBuilds of one model) share it."""
        arrived = time.monotonic()
        ref, source = self._source(namespace, eb)
        with self._locks_guard:
            if ref not in self._reads and len(self._reads) >= MAX_SOURCES:
                self._reads.clear()
            read = self._reads.setdefault(ref, _Read(threading.Lock()))
        model = eb.spec.model
        endpoint = endpoints.endpoint_of(model.source, dict(ref[2]) if len(ref) > 2 else None)
        # A slot first: callers waiting for one hanging read must not hold every worker.
        with (endpoints.slot(endpoint, f"read the weights identity of {model.source}"),
              read.lock):
            if read.started >= arrived and read.found is not None:
                return read.found
            started = time.monotonic()
            found = source.identity()
            read.started, read.found = started, found
            return found

    def _source(self, namespace: str, eb: EngineBuild) -> tuple[tuple[Any, ...], WeightSource]:
        """An open source per (URI, revision, credentials), reused: opening one builds an S3
        client, which costs more CPU than the listing an identity read makes."""
        model = eb.spec.model
        credentials = self._credentials(namespace, eb)
        ref = (model.source, model.revision or "", tuple(sorted((credentials or {}).items())))
        with self._locks_guard:
            found = self._sources.get(ref)
            if found is not None:
                self._sources.move_to_end(ref)
                return ref, found
        source = open_source(model.source, credentials=credentials, revision=model.revision)
        with self._locks_guard:
            self._sources[ref] = source
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        return ref, source

    def _poll_due(self, eb: EngineBuild, cached: _Identity | None) -> bool:
        """Whether ``spec.rebuild.pollInterval`` has passed since the identity was read (by
        the wall clock: the time read is in status)."""
        if cached is None or not eb.spec.rebuild.on_weight_change:
            return False
        interval = parse_duration(eb.spec.rebuild.poll_interval)
        return time.monotonic() - cached.read_at >= interval.total_seconds()

    def _settling(self, eb: EngineBuild, weights: _Identity) -> str | None:
        """Why the weights do not hold still yet (an upload in progress), or None."""
        if weights.uploading:
            return f"{weights.uploading} upload(s) in progress under {eb.spec.model.source}"
        if weights.newest is None:
            return None
        settle = parse_duration(eb.spec.rebuild.settle or self.config.rebuild_settle)
        if self.clock().timestamp() - weights.newest >= settle.total_seconds():
            return None
        written = datetime.fromtimestamp(weights.newest, UTC).isoformat()
        return (f"an object under {eb.spec.model.source} was written at {written}; kiln "
                f"builds once the weights have held still for "
                f"{eb.spec.rebuild.settle or self.config.rebuild_settle}")

    # -- the engines ---------------------------------------------------------------------

    def _sign_built(self, uri: str, want: Want, job: ObservedJob, namespace: str,
                    image: str, eb: EngineBuild, uid: str,
                    identity: str, origin: dict[str, str]) -> tuple[Manifest | None, bool]:
        """Sign what the key's own Job (succeeded) wrote, once the Job is kiln's render of the
        key (``ForeignJob`` otherwise); (manifest, foreign) as ``Engines.sign_built``."""
        body = self.kube.read_job(namespace, job.name)
        if body is None or (job.uid is not None and body["metadata"].get("uid") != job.uid):
            return None, False  # gone, or another Job of its name: the next pass reads it
        _foreign_job(body, self._render(namespace, eb, uid, want, image, identity, origin,
                                        uri))
        return self.engines.sign_built(uri, want.key, body,
                                       self.kube.job_pods(namespace, job.name))

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
                        timeout, job.created)
            if why is not None:
                found[key] = why
        return found

    # -- the loop --------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], world: BuildWorld, *,
                  job_moved: bool = False) -> Outcome[Plan]:
        """Bring one EngineBuild's Jobs and status in line with what exists, in the shell
        (``kiln.reconcile.shell``: its error policy, lock and backoff). ``job_moved``: called
        for a change of one of its Jobs; an engine found missing while that Job runs is then
        not looked for again before it finishes."""
        return self.shell.run(body, Pass(
            run=lambda fresh: self._pass(fresh, world, job_moved), inputs=self._inputs,
            retrying=self._retrying, stalled=self._stalled))

    def next_try(self, namespace: str, name: str) -> float | None:
        """Seconds until a backing-off object is due again, or None."""
        return self.shell.next_try(namespace, name)

    def _pass(self, body: dict[str, Any], world: BuildWorld, job_moved: bool) -> Plan:
        meta = body["metadata"]
        return self._reconcile(meta["namespace"], meta["name"], str(meta["uid"]),
                               parse(EngineBuild, body), body, world, job_moved)

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
        serving = [EngineDeployment.model_validate(b) for b in world.referencing(namespace, name)
                   if not b["metadata"].get("deletionTimestamp")]
        serving = [ed for ed in serving if ed.spec.engine_build_ref.name == name]
        return auto_targets(eb.spec, needed_products(serving, world.gpu_nodes()))

    def _wants(self, eb: EngineBuild, auto: list[str], identity: str, origin: dict[str, str],
               store: str, image: str) -> list[Want]:
        wants = []
        for target in effective(eb.spec, auto):
            key = engine_key(weights_identity=identity, origin=origin, build=eb.spec.build,
                             builder_image=image, gpu_product=target.gpu_product,
                             compute_capability=target.compute_capability)
            wants.append(Want(target, key, layout.engine_uri(store, key)))
        return wants

    def _reconcile(self, namespace: str, name: str, uid: str, eb: EngineBuild,
                   body: dict[str, Any], world: BuildWorld, job_moved: bool) -> Plan:
        store = self.engines.store_uri(namespace, eb)
        image = eb.spec.toolchain.image or self.config.builder_image
        _check_image(self.config, image)
        auto = self._auto_targets(namespace, name, eb, world)
        cached = self._identities.get((namespace, name))
        weights = self.identity(namespace, eb, refresh=self._poll_due(eb, cached)
                                or (cached is not None and self._settling(eb, cached)
                                    is not None))
        settling = self._settling(eb, weights)
        accepted = weights
        if settling is not None:
            before = eb.status.weights if eb.status else None
            if (before is None or not before.identity
                    or before.source not in (source_label(eb), None)):
                return self._settle(body, eb, auto, settling)
            log.info("weights of %s/%s are settling (%s): keeping %s", namespace, name,
                     settling, short_key(before.identity))
            accepted = _Identity(weights.fingerprint, before.identity,
                                 before.checked_at or weights.checked_at, weights.read_at)
        origin = self._origin(namespace, eb)
        wants = self._wants(eb, auto, accepted.identity, origin, store, image)
        observed = {w.key: j for w in wants if (j := self._job(world, namespace, w.key))}
        failures = {k: f for k, j in observed.items()
                    if j.state == "Failed" and (f := self._failure(namespace, j, world))}
        if self._weights_moved(namespace, eb, observed, failures):
            moved = self.identity(namespace, eb, refresh=True)
            if self._settling(eb, moved) is None:  # still moving: the next passes settle it
                accepted = moved
                wants = self._wants(eb, auto, accepted.identity, origin, store, image)
                observed = {w.key: j for w in wants
                            if (j := self._job(world, namespace, w.key))}
                failures = {k: f for k, j in observed.items()
                            if j.state == "Failed" and (f := self._failure(namespace, j, world))}
        for key in self._replace_outdated(namespace, uid, eb, wants, observed, world, image,
                                          accepted.identity, origin, store):
            observed.pop(key)
        said = self._reports(namespace, name, [w.key for w in wants], world)
        for want in wants:  # what serving pods report is checked before it is read
            self.engines.heed(store, want.key, said.get(want.key, []), (namespace, name))
        manifests = {w.key: self.engines.manifest(store, w.key, namespace, observed.get(w.key),
                                                  trust_absent=job_moved) for w in wants}
        for key, manifest in manifests.items():
            if manifest is not None:
                self.engines.countersign(store, key)
        foreign = set()
        for want in wants:
            job = observed.get(want.key)
            if manifests[want.key] is None and job is not None and job.state == "Succeeded":
                manifests[want.key], stray = self._sign_built(
                    store, want, job, namespace, image, eb, uid, accepted.identity, origin)
                if stray:
                    foreign.add(want.key)
        owned = {j.key: j for j in world.owned_by(uid)}
        result = plan(eb, wants, identity=accepted.identity, checked_at=accepted.checked_at,
                      source=source_label(eb), auto_targets=auto, manifests=manifests,
                      jobs={**owned, **observed}, failures=failures, uid=uid,
                      foreign=frozenset(foreign),
                      stuck=self._stuck(namespace, eb, observed, world),
                      lost=self._lost(store, [k for k, m in manifests.items() if m is None],
                                      said))
        for job in result.replace:
            self._failures.pop((namespace, job.name), None)
            self._reread_for.discard((namespace, job.name))
            found = self.kube.read_job(namespace, job.name)
            if found is None or (job.uid is not None and found["metadata"]["uid"] != job.uid):
                continue  # gone already (another EngineBuild of the key replaced it)
            log.info("deleting %s Job %s/%s to build engine %s again", job.state.lower(),
                     namespace, job.name, short_key(job.key))
            if not self.kube.delete_job(
                    namespace, job.name, uid=found["metadata"]["uid"],
                    resource_version=found["metadata"]["resourceVersion"]):
                raise Unavailable(f"Job {job.name} changed while replacing it; trying again",
                                  reason="Conflict")
            if len(self._replaced) >= MAX_CACHED:
                self._replaced.clear()
            self._replaced.add(found["metadata"]["uid"])
        replaced = {j.key for j in result.replace}
        for want in result.create:
            seen = observed.get(want.key)
            if seen is not None and want.key not in replaced and uid in seen.owner_uids:
                continue  # the Job exists and is ours: nothing to write
            self._ensure_job(namespace, name, uid, eb, want, image, accepted.identity, origin,
                             store, exists=seen is not None and want.key not in replaced)
        for job in result.release:
            self._release(namespace, job, uid)
        self.written.write(body, result.status.to_dict())
        for event in result.events:
            self.emit(body, event)
        _record(uid, result)
        return result

    def _settle(self, body: dict[str, Any], eb: EngineBuild, auto: list[str],
                why: str) -> Plan:
        """No identity accepted yet and the weights still move: say so, build nothing."""
        status, events = stalled(eb, "WeightsSettling", why, settling=True,
                                 auto_targets=auto)
        self.written.write(body, status.to_dict())
        for event in events:
            self.emit(body, event)
        return Plan(status=status)

    def _weights_moved(self, namespace: str, eb: EngineBuild, observed: dict[str, ObservedJob],
                       failures: dict[str, Failure]) -> bool:
        """A build of this object's current keys failed with ``WeightsChanged``, and the
        identity was not read again since: the weights moved, read them now (no wait for
        ``pollInterval``). Pinned weights (``onWeightChange: false``) are never re-read."""
        if not eb.spec.rebuild.on_weight_change:
            return False
        moved = [observed[k].name for k, f in failures.items() if f.reason == "WeightsChanged"]
        fresh = [n for n in moved if (namespace, n) not in self._reread_for]
        self._reread_for |= {(namespace, n) for n in fresh}
        if fresh:
            log.info("build Job %s/%s saw the weights change: reading them again", namespace,
                     fresh[0])
        return bool(fresh)

    def _job(self, jobs: BuildWorld, namespace: str, key: str) -> ObservedJob | None:
        """The key's Job from the index (not one deleted here to build the key again), else
        one created here moments ago (for a while)."""
        found = jobs.by_key(namespace, key)
        if found is not None and found.uid in self._replaced:
            found = None
        if found is not None:
            self._created.pop((namespace, key), None)
            return found
        recent = self._created.get((namespace, key))
        if recent is None:
            return None
        if time.monotonic() - recent[1] > CREATED_GRACE_SECONDS:
            self._created.pop((namespace, key), None)
            return None
        return recent[0]

    def _replace_outdated(self, namespace: str, uid: str, eb: EngineBuild,
                          wants: list[Want], observed: dict[str, ObservedJob],
                          world: BuildWorld, image: str, identity: str,
                          origin: dict[str, str], store: str) -> list[str]:
        """Delete this object's own Jobs whose pod never ran (refused at creation, not
        scheduled, image not pulled) and whose pod template is not what the spec renders now
        (a ``spec.job`` fix: security context, priority class, tolerations, resources): the
        Job controller would retry the old template forever. A Job whose pod runs, or that
        other EngineBuilds share, is left as it is. The keys whose Job went."""
        gone = []
        for want in wants:
            job = observed.get(want.key)
            if (job is None or job.state != "Active" or job.owner_uids != (uid,)
                    or job.template_hash is None or job.ran):
                continue
            why = self._stuck(namespace, eb, {want.key: job}, world).get(want.key)
            if why is None or why.reason not in NEVER_RAN:
                continue
            rendered = self._render(namespace, eb, uid, want, image, identity, origin, store)
            if rendered["metadata"]["annotations"][HASH_ANNOTATION] == job.template_hash:
                continue
            found = self.kube.read_job(namespace, job.name)
            if found is None:
                continue
            now = observe(found)  # the index may lag: another EngineBuild may have joined
            if (now.owner_uids != (uid,) or now.template_hash != job.template_hash
                    or now.ran):
                continue
            if not self.kube.delete_job(namespace, job.name, uid=found["metadata"]["uid"],
                                        resource_version=found["metadata"]["resourceVersion"]):
                raise Unavailable(f"Job {job.name} changed while replacing it; trying again",
                                  reason="Conflict")
            log.info("deleting Job %s/%s (%s): its pod template is not what the spec renders "
                     "now", namespace, job.name, why.reason)
            self._created.pop((namespace, want.key), None)
            gone.append(want.key)
        return gone

    def _ensure_job(self, namespace: str, name: str, uid: str, eb: EngineBuild, want: Want,
                    image: str, identity: str, origin: dict[str, str], store: str, *,
                    exists: bool = False) -> None:
        """Create the key's Job, or join it as an owner (``exists``: skip the create). Joining
        swaps the owners on the Job's resourceVersion; a Job deleted meanwhile is created."""
        job = self._render(namespace, eb, uid, want, image, identity, origin, store)
        for _ in range(SWAPS):
            if not exists and self.kube.create_job(job):
                metrics.record_build_started(once=f"{namespace}/{job_name(want.key)}")
                log.info("created Job %s/%s for engine %s", namespace, job_name(want.key),
                         short_key(want.key))
                self._created[(namespace, want.key)] = (
                    ObservedJob(job_name(want.key), want.key, "Active", (uid,)),
                    time.monotonic())
                return
            existing = self.kube.read_job(namespace, job_name(want.key))
            if existing is None:
                exists = False  # deleted meanwhile (released by its last owner): create it
                continue
            current = observe(existing)
            _foreign_job(existing, job)  # never joined unless it is kiln's render of the key
            if uid not in current.owner_uids:
                owners = [*existing["metadata"].get("ownerReferences", []),
                          render.build_owner(name, uid)]
                if not self.kube.set_job_owners(namespace, current.name, owners,
                                                existing["metadata"]["resourceVersion"]):
                    exists = True
                    continue  # the Job moved meanwhile: read it again
            self._created[(namespace, want.key)] = (
                replace(current, owner_uids=(*current.owner_uids, uid)), time.monotonic())
            return
        raise Unavailable(f"the Job of engine {short_key(want.key)} kept changing while "
                          "joining it; trying again", reason="Conflict")

    def _render(self, namespace: str, eb: EngineBuild, uid: str, want: Want, image: str,
                identity: str, origin: dict[str, str], store: str) -> dict[str, Any]:
        """The Job kiln renders for ``want`` of this EngineBuild."""
        name = str(eb.metadata["name"])
        task = BuildTask.for_build(
            key=want.key, weights_identity=identity, origin=origin, source=eb.spec.model.source,
            revision=eb.spec.model.revision, build=eb.spec.build,
            gpu_product=want.target.gpu_product,
            compute_capability=want.target.compute_capability, store=store,
            builder_image=image, credentials_from_env=bool(eb.spec.model.credentials_secret))
        return render.render_job(
            namespace=namespace, owner_name=name, owner_uid=uid, spec=eb.spec, want=want,
            image=image, task_json=task.to_json(), config=self.config,
            trusted_keys=self.trust.bundle)

    def _release(self, namespace: str, job: ObservedJob, uid: str) -> None:
        """Stop owning a Job this object no longer wants; delete it when nobody owns it. Both
        are preconditioned on the Job as read (uid, resourceVersion), so a Job another
        EngineBuild has just joined is never deleted."""
        for _ in range(SWAPS):
            existing = self.kube.read_job(namespace, job.name)
            if existing is None:
                return
            meta = existing["metadata"]
            refs = meta.get("ownerReferences", [])
            owners = [r for r in refs if r["uid"] != uid]
            if len(owners) == len(refs):
                return  # not ours (any more)
            if owners:
                if self.kube.set_job_owners(namespace, job.name, owners,
                                            meta["resourceVersion"]):
                    return
            elif self.kube.delete_job(namespace, job.name, uid=meta["uid"],
                                    resource_version=meta["resourceVersion"]):
                log.info("deleted Job %s/%s: no EngineBuild wants engine %s any more",
                         namespace, job.name, short_key(job.key))
                return
        raise Unavailable(f"Job {job.name} kept changing while releasing it; trying again",
                          reason="Conflict")


def _foreign_job(job: dict[str, Any], rendered: dict[str, Any]) -> None:
    """``ForeignJob`` (retried: its author may delete it) when the Job holding the key's name
    is not kiln's render of it: it is never joined, signed, changed nor deleted."""
    problem = signing.job_problem(job, rendered)
    if problem is not None:
        name = job.get("metadata", {}).get("name")
        raise Unavailable(
            f"Job {job['metadata'].get('namespace')}/{name} holds the name of engine "
            f"{short_key(rendered['metadata']['annotations'][KEY_ANNOTATION])}'s build Job "
            f"but is not the Job kiln renders for it ({problem}): kiln neither joins nor "
            "signs it, and changes nothing of it; delete it to let kiln build",
            reason="ForeignJob")


def _check_image(config: OperatorConfig, image: str) -> None:
    """``ImageNotAllowed`` (the EngineBuild stalls, no Job is created) for a builder image
    outside the operator's allowed list."""
    if not config.image_allowed(image):
        raise ImageNotAllowed(
            f"builder image {image} is not allowed: the operator's allowed builder images "
            f"(KILN_ALLOWED_BUILDER_IMAGES) are {', '.join(config.allowed_builder_images)}")


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
