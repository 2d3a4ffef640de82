"""The EngineBuild reconciler: gathers facts (weights, store, Jobs), plans, acts.

Level-based: every call recomputes from the object, the Jobs and the store, so running it
twice, or after a crash, changes nothing. Called from the work queue's threads
(``kiln.handlers.workqueue``), which never run one object in two threads at once; a lock per
object also keeps other callers (tests, the sweep's identity reads) from interleaving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from kiln import EB_PLURAL, metrics
from kiln.api import EngineBuild, parse_duration
from kiln.config import OperatorConfig
from kiln.contract import provenance
from kiln.contract.manifest import Manifest
from kiln.contract.task import BuildTask
from kiln.contract.termination import Failure
from kiln.engine_build import render, signing
from kiln.engine_build.jobs import ObservedJob, failure_from_pod, job_name, observe
from kiln.engine_build.plan import Plan, Want, plan
from kiln.errors import ImageNotAllowed, KilnError, Untrusted
from kiln.key import engine_key, short_key
from kiln.kube import Kube
from kiln.sources import WeightSource, open_source
from kiln.status import Event, merge_patch
from kiln.store import EngineStore, open_store
from kiln.targets import effective
from kiln.trust import Trust

log = logging.getLogger(__name__)
CREATED_GRACE_SECONDS = 30.0
"""How long a Job created (or joined) here counts as observed before the index shows it."""
MAX_SOURCES = 256
MAX_ABSENT = 100_000
AUTO_TARGETS = "autoTargets"
EventSink = Callable[[dict[str, Any], Event], None]


class JobLookup(Protocol):
    """Build Jobs as the operator last saw them (Kopf's index)."""

    def by_key(self, namespace: str, key: str) -> ObservedJob | None: ...

    def owned_by(self, uid: str) -> list[ObservedJob]: ...


@dataclass
class _Identity:
    fingerprint: tuple[str, ...]
    identity: str
    checked_at: datetime
    checked_monotonic: float


@dataclass
class _Read:
    """The last identity read of one source, and when it started."""

    lock: threading.Lock
    started: float = float("-inf")
    digest: str = ""


def _fingerprint(eb: EngineBuild) -> tuple[str, ...]:
    model = eb.spec.model
    return (model.source, model.revision or "", model.credentials_secret or "")


class EngineBuildReconciler:
    """Holds the caches that make reconciles cheap: weights identities, committed engines."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink) -> None:
        self.kube = kube
        self.config = config
        self.emit = emit
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._identities: dict[tuple[str, str], _Identity] = {}
        self._manifests: dict[tuple[str, str], Manifest] = {}
        """Verified (signed) manifests; verified again after ``config.verify_seconds``."""
        self._verified_at: dict[tuple[str, str], float] = {}
        self.trust = Trust.from_config(config)
        self._absent: dict[tuple[str, str, str], str] = {}
        """(store, key, namespace) -> the Job that was building when no manifest was there."""
        self._stores: dict[str, EngineStore] = {}
        self._failures: dict[tuple[str, str], Failure | None] = {}
        self._sources: OrderedDict[tuple[Any, ...], WeightSource] = OrderedDict()
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self._created: dict[tuple[str, str], tuple[ObservedJob, float]] = {}
        """Jobs this process created or joined, until the index shows them."""
        self._written: dict[tuple[str, str], tuple[str, str]] = {}
        """(namespace, name) -> (uid, JSON of the status this process last wrote)."""
        self.retry: set[tuple[str, str]] = set()
        """Objects whose last reconcile met a transient error: the sweep tries again."""

    def _lock(self, ref: tuple[str, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(ref, threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is cached for a deleted object."""
        self._identities.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        self.retry.discard((namespace, name))
        with self._locks_guard:
            self._locks.pop((namespace, name), None)

    def status_written_elsewhere(self, namespace: str, name: str) -> None:
        """Someone else (a stall) wrote this object's status: plan from what is read."""
        self._written.pop((namespace, name), None)

    # -- facts -----------------------------------------------------------------------------

    def _credentials(self, namespace: str, eb: EngineBuild) -> dict[str, str] | None:
        secret = eb.spec.model.credentials_secret
        return self.kube.secret_data(namespace, secret) if secret else None

    def identity(self, namespace: str, eb: EngineBuild, *, refresh: bool = False) -> _Identity:
        """The weights identity; read again when the source changed or ``refresh``."""
        ref = (namespace, str(eb.metadata["name"]))
        cached = self._identities.get(ref)
        if cached and cached.fingerprint == _fingerprint(eb) and not refresh:
            return cached
        identity = self._read_identity(namespace, eb)
        entry = _Identity(_fingerprint(eb), identity,
                          datetime.now(UTC).replace(microsecond=0), time.monotonic())
        latest = self._identities.get(ref) or cached  # a sweep may have read it meanwhile
        if latest and latest.identity == identity:
            entry.checked_at = latest.checked_at
        self._identities[ref] = entry
        return entry

    def _read_identity(self, namespace: str, eb: EngineBuild) -> str:
        """Read the weights identity, single flight: a read of the same source that started
        after this call began is as fresh as one of its own, so callers arriving together
        (a burst of EngineBuilds of one model) share it."""
        arrived = time.monotonic()
        ref, source = self._source(namespace, eb)
        with self._locks_guard:
            if ref not in self._reads and len(self._reads) >= MAX_SOURCES:
                self._reads.clear()
            read = self._reads.setdefault(ref, _Read(threading.Lock()))
        with read.lock:
            if read.started >= arrived:
                return read.digest
            started = time.monotonic()
            digest = source.identity().digest
            read.started, read.digest = started, digest
            return digest

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

    def known_identity(self, namespace: str, name: str) -> str | None:
        """The weights identity last read for the object, if one was."""
        cached = self._identities.get((namespace, name))
        return cached.identity if cached else None

    def poll_due(self, namespace: str, eb: EngineBuild) -> bool:
        """Whether ``spec.rebuild.pollInterval`` has passed since the identity was read."""
        cached = self._identities.get((namespace, str(eb.metadata["name"])))
        if cached is None or not eb.spec.rebuild.on_weight_change:
            return cached is None
        interval = parse_duration(eb.spec.rebuild.poll_interval).total_seconds()
        return time.monotonic() - cached.checked_monotonic >= interval

    def store_uri(self, eb: EngineBuild) -> str:
        uri = eb.spec.output.store or self.config.default_store
        if not uri:
            raise KilnError("no engine store: set spec.output.store, or the operator's "
                            "default store (KILN_DEFAULT_STORE)", reason="NoStore")
        return uri if uri.endswith("/") else uri + "/"

    def _store(self, uri: str) -> EngineStore:
        if uri not in self._stores:
            self._stores[uri] = open_store(uri)
        return self._stores[uri]

    def _manifest(self, uri: str, key: str, namespace: str, job: ObservedJob | None, *,
                  trust_absent: bool = False) -> Manifest | None:
        """A committed engine's manifest; found ones are cached (engines are immutable).

        While the key's Job is running, a manifest found missing is, with ``trust_absent``,
        not looked for again until the Job finishes (it is what writes the manifest): the
        status changes of a running Job cost no store reads.
        """
        if (uri, key) in self._manifests and not self.verify_due(uri, key):
            return self._manifests[(uri, key)]
        self._manifests.pop((uri, key), None)
        building = job.name if job is not None and job.state == "Active" else None
        if (trust_absent and building is not None
                and self._absent.get((uri, key, namespace)) == building):
            return None
        self._absent.pop((uri, key, namespace), None)
        manifest = self._trusted(uri, key)
        if manifest is not None:
            self._manifests[(uri, key)] = manifest
            self._verified_at[(uri, key)] = time.monotonic()
        elif building is not None:
            if len(self._absent) >= MAX_ABSENT:  # Jobs deleted mid-build leave entries
                self._absent.clear()
            self._absent[(uri, key, namespace)] = building
        return manifest

    def verify_due(self, uri: str, key: str) -> bool:
        """Whether a verified engine's signature is to be read again (it may be replaced)."""
        at = self._verified_at.get((uri, key))
        return at is None or time.monotonic() - at >= self.config.verify_seconds

    def verification_due(self, eb: EngineBuild) -> bool:
        """Whether an engine the object reports Ready or Cached is due to be verified again."""
        for entry in eb.status.engines if eb.status else []:
            suffix = f"engines/{entry.key}/"
            if (entry.state in ("Ready", "Cached") and entry.uri and entry.key
                    and entry.uri.endswith(suffix)
                    and self.verify_due(entry.uri[:-len(suffix)], entry.key)):
                return True
        return False

    def _trusted(self, uri: str, key: str) -> Manifest | None:
        """The stored manifest if a trusted key signed exactly it (an unsigned or foreign one
        counts as absent); signed again with the current key when only an older one did."""
        store = self._store(uri)
        manifest_bytes = store.read_manifest_bytes(key)
        if manifest_bytes is None:
            return None
        envelope = store.read_envelope(key)
        try:
            verified = self.trust.verify(key, manifest_bytes, envelope)
        except Untrusted as why:
            log.info("engine %s in %s does not count: %s", short_key(key), uri, why.message)
            return None
        signer = self.trust.signer
        if signer is not None and envelope is not None and self.trust.keyid not in verified.keyids:
            store.write_envelope(key, provenance.add_signature(envelope, signer))
            log.info("engine %s re-signed with the current key %s", short_key(key),
                     signer.public_key.keyid[:12])
        return verified.manifest

    def _sign_built(self, uri: str, want: Want, job: ObservedJob, namespace: str,
                    image: str) -> tuple[Manifest | None, bool]:
        """Sign the engine the key's own Job (succeeded) wrote; (manifest, foreign): foreign
        when the store holds a manifest that Job did not write (build again)."""
        body = self.kube.read_job(namespace, job.name)
        if body is None:
            return None, False
        problem = signing.kiln_job_problem(body, want.key, image)
        if problem is not None:
            log.warning("not signing engine %s: Job %s/%s is not kiln's: %s",
                        short_key(want.key), namespace, job.name, problem)
            return None, True
        report = signing.built(body, self.kube.job_pods(namespace, job.name))
        store = self._store(uri)
        manifest_bytes = store.read_manifest_bytes(want.key)
        if report is None:  # found the engine, or said nothing: it wrote no manifest of its own
            return None, manifest_bytes is not None
        found = signing.signable(want.key, manifest_bytes, report)
        if isinstance(found, str):
            log.warning("not signing engine %s: %s", short_key(want.key), found)
            return None, manifest_bytes is not None
        signer = self.trust.signer
        if signer is None or manifest_bytes is None:
            return None, False
        store.write_envelope(want.key, provenance.sign(manifest_bytes, found, report.job, signer))
        log.info("signed engine %s built by Job %s/%s (uid %s) with key %s", short_key(want.key),
                 namespace, job.name, report.job.uid, signer.public_key.keyid[:12])
        self._manifests[(uri, want.key)] = found
        self._verified_at[(uri, want.key)] = time.monotonic()
        return found, False

    def _failure(self, namespace: str, job: ObservedJob) -> Failure | None:
        ref = (namespace, job.name)
        if ref not in self._failures:
            pods = self.kube.job_pods(namespace, job.name)
            found = [f for p in pods if (f := failure_from_pod(p))]
            self._failures[ref] = found[-1] if found else None
        return self._failures[ref]

    # -- the loop --------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], jobs: JobLookup, *,
                  job_moved: bool = False) -> Plan:
        """Bring one EngineBuild's Jobs and status in line with what exists. ``job_moved``:
        called for a change of one of its Jobs; an engine found missing while that Job runs
        is then not looked for again before it finishes (every other call looks)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self._lock((namespace, name)):
            fresh = self._with_written_status(namespace, name, dict(body))
            eb = EngineBuild.model_validate(fresh)
            return self._reconcile(namespace, name, str(meta["uid"]), eb, fresh, jobs,
                                   job_moved)

    def _with_written_status(self, namespace: str, name: str,
                             body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the status this process last wrote, if it has: a copy from an index
        can predate that write (a Job event overtaking the EngineBuild's own), and planning
        from it would write old transition times again and repeat Events. Only kiln writes
        this status (``autoTargets`` aside, taken from ``body``)."""
        written = self._written.get((namespace, name))
        if written is None or written[0] != body["metadata"]["uid"]:
            return body
        status = json.loads(written[1])
        auto = (body.get("status") or {}).get(AUTO_TARGETS)
        if auto is not None:
            status[AUTO_TARGETS] = auto
        return {**body, "status": status}

    def _reconcile(self, namespace: str, name: str, uid: str, eb: EngineBuild,
                   body: dict[str, Any], jobs: JobLookup, job_moved: bool) -> Plan:
        image = eb.spec.toolchain.image or self.config.builder_image
        _check_image(self.config, image)
        weights = self.identity(namespace, eb)
        store = self.store_uri(eb)
        auto = eb.status.auto_targets if eb.status else []
        wants = []
        for target in effective(eb.spec, auto):
            key = engine_key(weights_identity=weights.identity, build=eb.spec.build,
                             builder_image=image, gpu_product=target.gpu_product,
                             compute_capability=target.compute_capability)
            wants.append(Want(target, key, f"{store}engines/{key}/"))
        observed = {w.key: j for w in wants if (j := self._job(jobs, namespace, w.key))}
        manifests = {w.key: self._manifest(store, w.key, namespace, observed.get(w.key),
                                           trust_absent=job_moved) for w in wants}
        foreign = set()
        for want in wants:
            job = observed.get(want.key)
            if manifests[want.key] is None and job is not None and job.state == "Succeeded":
                manifests[want.key], stray = self._sign_built(store, want, job, namespace, image)
                if stray:
                    foreign.add(want.key)
        owned = {j.key: j for j in jobs.owned_by(uid)}
        failures = {k: f for k, j in observed.items()
                    if j.state == "Failed" and (f := self._failure(namespace, j))}
        result = plan(eb, wants, identity=weights.identity, checked_at=weights.checked_at,
                      manifests=manifests, jobs={**owned, **observed}, failures=failures,
                      uid=uid, foreign=frozenset(foreign))
        for job in result.replace:
            log.info("deleting failed Job %s/%s to build engine %s again", namespace,
                     job.name, short_key(job.key))
            self.kube.delete_job(namespace, job.name)
            self._failures.pop((namespace, job.name), None)
        replaced = {j.key for j in result.replace}
        for want in result.create:
            seen = observed.get(want.key)
            if seen is not None and want.key not in replaced and uid in seen.owner_uids:
                continue  # the Job exists and is ours: nothing to write
            self._ensure_job(namespace, name, uid, eb, want, image, weights.identity, store,
                             exists=seen is not None and want.key not in replaced)
        for job in result.release:
            self._release(namespace, job, uid)
        # autoTargets belong to the EngineDeployment controller: never written back from
        # the (possibly stale) copy this reconcile read.
        status = {k: v for k, v in result.status.to_dict().items() if k != AUTO_TARGETS}
        current = {k: v for k, v in (body.get("status") or {}).items() if k != AUTO_TARGETS}
        if status != current:
            self.kube.patch_status(EB_PLURAL, namespace, name, merge_patch(status, current))
            self._written[(namespace, name)] = (uid, json.dumps(status))
        for event in result.events:
            self.emit(body, event)
        _record(uid, result)
        return result

    def _job(self, jobs: JobLookup, namespace: str, key: str) -> ObservedJob | None:
        """The key's Job from the index, else one created here moments ago (for a while)."""
        found = jobs.by_key(namespace, key)
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

    def _ensure_job(self, namespace: str, name: str, uid: str, eb: EngineBuild, want: Want,
                    image: str, identity: str, store: str, *, exists: bool = False) -> None:
        """Create the key's Job, or join it as an owner (``exists``: skip the create)."""
        task = BuildTask.for_build(
            key=want.key, weights_identity=identity, source=eb.spec.model.source,
            revision=eb.spec.model.revision, build=eb.spec.build,
            gpu_product=want.target.gpu_product,
            compute_capability=want.target.compute_capability, store=store,
            builder_image=image, credentials_from_env=bool(eb.spec.model.credentials_secret))
        job = render.render_job(
            namespace=namespace, owner_name=name, owner_uid=uid, spec=eb.spec, want=want,
            image=image, task_json=task.to_json(),
            config=self.config, trusted_keys=self.trust.bundle)
        if not exists and self.kube.create_job(job):
            metrics.record_build_started(once=f"{namespace}/{job_name(want.key)}")
            log.info("created Job %s/%s for engine %s", namespace, job_name(want.key),
                     short_key(want.key))
            self._created[(namespace, want.key)] = (
                ObservedJob(job_name(want.key), want.key, "Active", (uid,)), time.monotonic())
            return
        existing = self.kube.read_job(namespace, job_name(want.key))
        if existing is None:
            return  # deleted meanwhile: the next reconcile creates it again
        current = observe(existing)
        if uid not in current.owner_uids:
            owners = [*existing["metadata"].get("ownerReferences", []),
                      render.build_owner(name, uid)]
            self.kube.set_job_owners(namespace, current.name, owners,
                                     existing["metadata"]["resourceVersion"])
        self._created[(namespace, want.key)] = (
            replace(current, owner_uids=(*current.owner_uids, uid)), time.monotonic())

    def _release(self, namespace: str, job: ObservedJob, uid: str) -> None:
        """Stop owning a Job this object no longer wants; delete it when nobody owns it."""
        existing = self.kube.read_job(namespace, job.name)
        if existing is None:
            return
        owners = [r for r in existing["metadata"].get("ownerReferences", [])
                  if r["uid"] != uid]
        if owners:
            self.kube.set_job_owners(namespace, job.name, owners,
                                     existing["metadata"]["resourceVersion"])
        else:
            log.info("deleting Job %s/%s: no EngineBuild wants engine %s any more",
                     namespace, job.name, short_key(job.key))
            self.kube.delete_job(namespace, job.name)


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
