"""Engines in the store, for the EngineBuild reconciler: trusted manifests, signing what the
key's own Job built, and a store that heals.

A manifest counts only if a trusted key signed exactly it (``kiln.contract.provenance``).
One found missing while the key's Job runs is not looked for again until that Job ends (it
writes the manifest), this operator commits the key for another namespace's Job, or
``KILN_VERIFY_SECONDS`` pass: a resync over thousands of running builds reads nothing.
Found ones are cached and verified again every ``KILN_VERIFY_SECONDS``, or at once when a
serving pod reports its engine missing or damaged. A re-verification that passes also lists
the engine's files, off the reconcile (a file deleted or cut short is damage); a pod's
``IntegrityError`` also has the file it names hashed from the store. An engine found damaged
is set aside (``EngineStore.set_aside``: kept for evidence, never served), so that it is
absent to every reader and the reconciler builds it again under the same key.

A pod's report is tenant-controlled input: it only ever makes kiln look for itself, at most
once per key every ``REPORT_SECONDS``, and nothing it says is written anywhere but a log.
Caches save reads; what the store says decides.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln.api import EngineBuild
from kiln.config import OperatorConfig, per_namespace
from kiln.contract import provenance
from kiln.contract.key import short_key
from kiln.contract.manifest import FileEntry, Manifest
from kiln.domain.labels import KEY_ANNOTATION
from kiln.domain.pods import ObservedPod
from kiln.engine_build import signing
from kiln.engine_build.jobs import ObservedJob
from kiln.errors import KilnError, Untrusted
from kiln.store import EngineStore, open_store
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
MAX_ABSENT = 100_000
SHARED_RECHECK_SECONDS = 30.0
"""How long the build namespace's engine of a key, found absent, is not looked for again."""
REPORTED = frozenset({"NotFound", "IntegrityError", "Untrusted"})
"""What ``kiln fetch-engine`` says of an engine missing or damaged in the store."""
REPORT_SECONDS = 30.0
"""A key checked for a report is not checked for another within this long."""
CHECKERS = 2
"""Engines checked at once, in threads of their own (a hash reads a whole file)."""
MAX_CHECKS = 10_000
"""Checks waiting at most; more are dropped (the next verification asks again)."""
IDLE_SECONDS = 60.0
"""A checking thread with nothing to do for this long ends."""
Ref = tuple[str, str]
Wake = Callable[[str, str], None]


@dataclass(frozen=True)
class Report:
    """A serving pod's word that its engine is missing or damaged."""

    pod: str
    reason: str
    message: str


@dataclass(frozen=True)
class Finding:
    """What a check found: the engine damaged, and where it was set aside."""

    message: str
    where: str


def report_of(pod: ObservedPod) -> tuple[str, Report] | None:
    """(key, report) when a serving pod says its engine is missing or damaged: its init
    container, or one of kiln's programs, failed as ``kiln fetch-engine`` does then."""
    failure = (pod.refusal or pod.init_failure or (None, None))[1]
    key = dict(pod.annotations).get(KEY_ANNOTATION)
    if not pod.active or not key or failure is None or failure.reason not in REPORTED:
        return None
    return key, Report(pod.name, failure.reason, failure.message)


def reports(pods: Iterable[ObservedPod], keys: Iterable[str]) -> dict[str, list[Report]]:
    """The reports of serving pods about ``keys``, by key."""
    wanted = set(keys)
    found: dict[str, list[Report]] = {}
    for key, report in filter(None, map(report_of, pods)):
        if key in wanted:
            found.setdefault(key, []).append(report)
    return found


def _named(manifest: Manifest, message: str) -> FileEntry | None:
    """The file of ``manifest`` that an ``IntegrityError`` names (``<path> of engine ...``,
    ``kiln.store``'s wording), the longest if several match; None if none does."""
    named = [f for f in manifest.files if f"{f.path} of engine" in message]
    return max(named, key=lambda f: len(f.path), default=None)


def _damage(manifest: Manifest, stored: dict[str, int]) -> str | None:
    """What is wrong with the files of ``manifest`` as stored (sizes), or None."""
    for entry in manifest.files:
        size = stored.get(entry.path)
        if size is None:
            return f"{entry.path} is missing"
        if size != entry.size:
            return f"{entry.path} has {size} bytes, the manifest says {entry.size}"
    return None


class Engines:
    """The engines of every store the EngineBuilds write to. Called from the reconcile
    threads; checks run in threads of their own and ``wake`` the EngineBuilds that asked when
    one set an engine aside."""

    def __init__(self, config: OperatorConfig, trust: Trust,
                 wake: Wake | None = None) -> None:
        self.config = config
        self.trust = trust
        self.wake = wake or (lambda namespace, name: None)
        self._stores: dict[str, EngineStore] = {}
        self._manifests: dict[Ref, Manifest] = {}
        """Verified (signed) manifests; verified again after ``config.verify_seconds``."""
        self._verified_at: dict[Ref, float] = {}
        self._absent: dict[Ref, dict[str, tuple[str, float]]] = {}
        """(store, key) -> namespace -> (its running Job, when the manifest was found missing
        while that Job ran)."""
        self._shared_absent: dict[Ref, float] = {}
        """Keys of the build namespace found absent, and when (``shared``)."""
        self._findings: dict[Ref, Finding] = {}
        """Engines a check set aside, until they are found again (the status words it)."""
        self._guard = threading.Lock()
        self._pending: dict[Ref, set[Ref]] = {}
        """Checks queued or running, and the EngineBuilds to wake when one sets aside."""
        self._reported_at: dict[Ref, float] = {}
        self._queue: queue.Queue[tuple[str, str, Report | None]] = queue.Queue()
        self._workers: list[threading.Thread] = []

    # -- where -----------------------------------------------------------------------------

    def store_uri(self, namespace: str, eb: EngineBuild) -> str:
        """The store of ``eb``'s engines (``spec.output.store``, else the operator's, its
        ``{namespace}`` replaced by ``eb``'s: a prefix per namespace)."""
        uri = eb.spec.output.store or per_namespace(self.config.default_store, namespace)
        if not uri:
            raise KilnError("no engine store: set spec.output.store, or the operator's "
                            "default store (KILN_DEFAULT_STORE)", reason="NoStore")
        if uri.startswith("pvc://") and namespace != self.config.namespace:
            own = self.config.namespace or "unknown: set KILN_NAMESPACE"
            raise KilnError(
                f"the pvc:// store {uri} would be written through the claim of that name in "
                f"namespace {namespace}, but kiln reads pvc:// stores through the claims "
                f"mounted in its own namespace ({own}): a different volume. Use an s3:// "
                "store here, or create EngineBuilds with pvc:// stores in the operator's "
                "namespace", reason="PvcStoreNamespace")
        return uri if uri.endswith("/") else uri + "/"

    def store(self, uri: str) -> EngineStore:
        if uri not in self._stores:
            self._stores[uri] = open_store(uri)
        return self._stores[uri]

    # -- trusted manifests -----------------------------------------------------------------

    def manifest(self, uri: str, key: str, namespace: str,
                 job: ObservedJob | None) -> Manifest | None:
        """A committed engine's signed manifest, or None; found ones are cached.

        While the key's Job in ``namespace`` runs, a manifest found missing is not looked for
        again until that Job is no longer running (the Job is what writes it), until this
        operator signs the key for a Job elsewhere (``sign_built``), or for
        ``verify_seconds``: the passes over a running build read nothing from the store.
        """
        ref = (uri, key)
        cached = self._manifests.get(ref)
        if cached is not None and not self.verify_due(uri, key):
            return cached
        self._manifests.pop(ref, None)
        building = job.name if job is not None and job.state == "Active" else None
        absent = self._absent.get(ref, {}).pop(namespace, None)
        if (building is not None and absent is not None and absent[0] == building
                and time.monotonic() - absent[1] < self.config.verify_seconds):
            self._absent[ref][namespace] = absent
            return None
        manifest = self._trusted(uri, key)
        if manifest is not None:
            self._found(ref, manifest)
            if cached is not None:  # verified again: its files too, off this thread
                self._check_later(uri, key, None, None)
        elif building is not None:
            if len(self._absent) >= MAX_ABSENT:  # Jobs deleted mid-build leave entries
                self._absent.clear()
            self._absent.setdefault(ref, {})[namespace] = (building, time.monotonic())
        if not self._absent.get(ref, True):
            del self._absent[ref]
        return manifest

    def shared(self, uri: str, key: str, namespace: str) -> bool:
        """Whether engine ``key`` of the platform's build namespace (a key that names no
        namespace) is in the store and counts (``provenance.built_where``); one found absent
        is looked for again after ``SHARED_RECHECK_SECONDS``."""
        at = self._shared_absent.get((uri, key))
        if at is not None and time.monotonic() - at < SHARED_RECHECK_SECONDS:
            return False
        if self.manifest(uri, key, namespace, None) is not None:
            self._shared_absent.pop((uri, key), None)
            return True
        if len(self._shared_absent) >= MAX_ABSENT:
            self._shared_absent.clear()
        self._shared_absent[(uri, key)] = time.monotonic()
        return False

    def _found(self, ref: Ref, manifest: Manifest) -> None:
        """A manifest read and verified, or signed: every namespace's pass takes it."""
        self._manifests[ref] = manifest
        self._verified_at[ref] = time.monotonic()
        self._findings.pop(ref, None)
        self._absent.pop(ref, None)

    def verify_due(self, uri: str, key: str) -> bool:
        """Whether a verified engine's signature is to be read again (it may be replaced)."""
        at = self._verified_at.get((uri, key))
        return at is None or time.monotonic() - at >= self.config.verify_seconds

    def _trusted(self, uri: str, key: str) -> Manifest | None:
        """The stored manifest if a trusted key signed exactly it (an unsigned or foreign one
        counts as absent). Reads only: one another trusted key signed counts, and is never
        signed by this operator's key too (kiln signs only what its own Jobs built)."""
        store = self.store(uri)
        try:  # a manifest or envelope too large to be kiln's is Untrusted, unread
            manifest_bytes = store.read_manifest_bytes(key)
            if manifest_bytes is None:
                return None
            envelope = store.read_envelope(key)
            verified = self.trust.verify(key, manifest_bytes, envelope)
        except Untrusted as why:
            log.info("engine %s in %s does not count: %s", short_key(key), uri, why.message)
            return None
        return verified.manifest

    def sign_built(self, uri: str, key: str, job: dict[str, Any],
                   pods: list[dict[str, Any]]) -> tuple[Manifest | None, bool]:
        """Sign the engine the key's own Job (succeeded, and kiln's render: the caller
        checked) wrote; (manifest, foreign): foreign when the store holds a manifest that
        Job did not write (build again)."""
        report = signing.built(job, pods)
        if isinstance(report, str):
            log.warning("not signing engine %s: %s", short_key(key), report)
            report = None
        store = self.store(uri)
        try:
            manifest_bytes = store.read_manifest_bytes(key)
        except Untrusted as why:  # too large to be what the Job wrote: build again
            log.warning("not signing engine %s: %s", short_key(key), why.message)
            return None, True
        if report is None:  # found the engine, or said nothing: it wrote no manifest of its own
            return None, manifest_bytes is not None
        found = signing.signable(key, manifest_bytes, report)
        if isinstance(found, str):
            log.warning("not signing engine %s: %s", short_key(key), found)
            return None, manifest_bytes is not None
        signer = self.trust.signer
        if signer is None or manifest_bytes is None:
            return None, False
        store.write_envelope(key, provenance.sign(manifest_bytes, found, report.job, signer))
        meta = job["metadata"]
        log.info("signed engine %s built by Job %s/%s (uid %s) with key %s", short_key(key),
                 meta["namespace"], meta["name"], report.job.uid,
                 signer.public_key.keyid[:12])
        self._found((uri, key), found)
        return found, False

    # -- healing ---------------------------------------------------------------------------

    def heed(self, uri: str, key: str, said: list[Report], asker: Ref) -> None:
        """Serving pods say engine ``key`` is missing or damaged: verify it at once (the next
        ``manifest`` reads the store) and check its files, unless a report had it checked
        within ``REPORT_SECONDS``; ``asker`` (namespace, name) is woken if it is set aside."""
        if not said:
            return
        ref = (uri, key)
        with self._guard:
            if ref in self._pending:
                self._pending[ref].add(asker)
                return
            at = self._reported_at.get(ref)
            if at is not None and time.monotonic() - at < REPORT_SECONDS:
                return
            if len(self._reported_at) >= MAX_ABSENT:
                self._reported_at.clear()
            self._reported_at[ref] = time.monotonic()
        first = said[0]
        log.info("pod %s/%s reports engine %s %s: checking it in %s", asker[0], first.pod,
                 short_key(key), first.reason, uri)
        self._verified_at.pop(ref, None)
        self._check_later(uri, key, first, asker)

    def finding(self, uri: str, key: str) -> Finding | None:
        """What the last check found wrong with engine ``key`` (set aside), if anything."""
        return self._findings.get((uri, key))

    def _check_later(self, uri: str, key: str, report: Report | None,
                     asker: Ref | None) -> None:
        with self._guard:
            if (uri, key) in self._pending:
                if asker is not None:
                    self._pending[(uri, key)].add(asker)
                return
            if len(self._pending) >= MAX_CHECKS:
                return
            self._pending[(uri, key)] = {asker} if asker is not None else set()
            self._queue.put((uri, key, report))  # under the guard: no worker ends meanwhile
            while len(self._workers) < CHECKERS:
                worker = threading.Thread(target=self._work, daemon=True,
                                          name=f"kiln-engine-check-{len(self._workers)}")
                self._workers.append(worker)
                worker.start()

    def _work(self) -> None:
        while True:
            try:
                uri, key, report = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._guard:
                    if self._queue.empty():  # ends; the next check starts a worker again
                        self._workers.remove(threading.current_thread())
                        return
                continue
            aside = False
            try:
                aside = self.check(uri, key, report)
            except Exception as error:  # a store that fails: the next report or verification
                log.warning("could not check engine %s in %s: %s", short_key(key), uri, error)
            finally:
                with self._guard:
                    askers = self._pending.pop((uri, key), set())
                self._queue.task_done()
            for namespace, name in askers if aside else ():
                self.wake(namespace, name)

    def join(self) -> None:
        """Wait until every queued check is done (tests)."""
        self._queue.join()

    def check(self, uri: str, key: str, report: Report | None = None) -> bool:
        """Check engine ``key``'s files in the store against its signed manifest (sizes;
        and the file an ``IntegrityError`` report names, by sha256); set it aside if one is
        damaged. Whether it was set aside."""
        store = self.store(uri)
        try:
            manifest_bytes = store.read_manifest_bytes(key)
            if manifest_bytes is None:
                return False  # absent already: the reconciler builds it
            manifest = self.trust.verify(key, manifest_bytes, store.read_envelope(key)).manifest
        except Untrusted:
            return False  # counts as absent already
        problem = _damage(manifest, store.file_sizes(key, manifest.upload))
        entry = _named(manifest, report.message) if (
            problem is None and report is not None and report.reason == "IntegrityError"
        ) else None
        if entry is not None:
            actual = store.file_sha256(key, manifest.upload, entry.path)
            if actual is None:
                problem = f"{entry.path} is missing"
            elif actual != entry.sha256:
                problem = f"{entry.path}: its sha256 is {actual}, the manifest says {entry.sha256}"
        if problem is None:
            log.info("engine %s in %s checked%s: intact", short_key(key), uri,
                     f" ({entry.path} hashed)" if entry is not None else "")
            return False
        when = datetime.now(UTC).isoformat(timespec="seconds")
        where = store.set_aside(key, manifest_bytes, {
            "key": key, "upload": manifest.upload, "found": problem, "at": when,
            "reportedBy": f"pod {report.pod}: {report.reason}" if report else None,
            "message": f"{problem} (found {when})"})
        if where is None:
            return False  # committed again meanwhile: that engine is another one
        if len(self._findings) >= MAX_ABSENT:
            self._findings.clear()
        self._findings[(uri, key)] = Finding(problem, where)
        self._manifests.pop((uri, key), None)
        self._verified_at.pop((uri, key), None)
        return True
