"""The weights identity of an EngineBuild: read without downloading, cached per object,
single-flight reads per source, settling, and the origin (an input of the key).

The cache saves listings and never decides: a restart takes the identity from status (it
was read from the same source), and ``pollInterval``, a build's ``WeightsChanged`` or a
settling upload reads it again. The caches live as long as their reconciler: one leadership
term.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln.api import EngineBuild, parse_duration
from kiln.config import OperatorConfig
from kiln.contract.env import ENDPOINTS
from kiln.contract.key import short_key
from kiln.contract.termination import Failure
from kiln.errors import InvalidInput
from kiln.kube.client import Kube
from kiln.sources import (
    WeightsIdentity,
    WeightSource,
    endpoints,
    open_source,
    origin_of,
    tenant_endpoint,
)
from kiln.sources import shared as shared_source

log = logging.getLogger(__name__)
MAX_SOURCES = 256
MAX_CACHED = 100_000
"""Entries a cache keyed by source or Job holds before it starts afresh."""
REFUSED_SECONDS = 300.0
"""How long a source refused as invalid input (too many objects) is not read again, unless
its URI or credentials change."""
ORIGIN_SECONDS = 300.0
"""How long the origin read from a credentials Secret is kept (a pass reads no Secret)."""


@dataclass
class Identity:
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
    refused: tuple[str, str, float] | None = None
    """The source's last answer when it was invalid input (more objects than kiln reads): its
    message, reason and when; given again for ``REFUSED_SECONDS`` rather than read again
    each resync."""


def _fingerprint(eb: EngineBuild) -> tuple[str, ...]:
    model = eb.spec.model
    return (model.source, model.revision or "", model.credentials_secret or "")


def source_label(eb: EngineBuild) -> str:
    """``status.weights.source``: the source and its revision, what the identity is of."""
    model = eb.spec.model
    return f"{model.source}@{model.revision}" if model.revision else model.source


class Weights:
    """The identities, origins and open sources of every EngineBuild's weights."""

    def __init__(self, kube: Kube, config: OperatorConfig,
                 clock: Callable[[], datetime]) -> None:
        self.kube, self.config, self.clock = kube, config, clock
        self._locks_guard = threading.Lock()
        self._identities: dict[tuple[str, str], Identity] = {}
        self._origins: dict[tuple[str, str, str | None],
                            tuple[dict[str, str], dict[str, str], float]] = {}
        """(namespace, source, credentials Secret) -> (origin, endpoints, when read)."""
        self._calibrations: dict[tuple[str, str, str, str],
                                 tuple[float, str, dict[str, str], dict[str, str]]] = {}
        """(namespace, name, dataset, Secret) -> (the weights' read_at it was read with, its
        identity, its origin, its origin in the build namespace)."""
        self._sources: OrderedDict[tuple[Any, ...], WeightSource] = OrderedDict()
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self._reread_for: set[tuple[str, str]] = set()
        """Failed Jobs (namespace, name) whose ``WeightsChanged`` made a re-read already."""

    def forget(self, namespace: str, name: str) -> None:
        self._identities.pop((namespace, name), None)

    def replaced(self, namespace: str, job: str) -> None:
        """A failed Job went: a failure of its next one reads the weights again."""
        self._reread_for.discard((namespace, job))

    def accepted(self, namespace: str, eb: EngineBuild, *,
                 moved: bool = False) -> tuple[Identity | None, str | None]:
        """The identity to build from, or (None, why) while the weights still move and none
        was accepted before. Read again when ``pollInterval`` passed, when the weights
        ``moved`` (a build saw them change) or while they settle; while a new reading
        settles, the identity in status is kept."""
        cached = self._identities.get((namespace, str(eb.metadata["name"])))
        weights = self.identity(namespace, eb, refresh=moved or self._poll_due(eb, cached)
                                or (cached is not None and self.settling(eb, cached)
                                    is not None))
        settling = self.settling(eb, weights)
        if settling is None:
            return weights, None
        before = eb.status.weights if eb.status else None
        if (before is None or not before.identity
                or before.source not in (source_label(eb), None)):
            return None, settling
        log.info("weights of %s/%s are settling (%s): keeping %s", namespace,
                 eb.metadata["name"], settling, short_key(before.identity))
        return Identity(weights.fingerprint, before.identity,
                        before.checked_at or weights.checked_at, weights.read_at), None

    def _credentials(self, namespace: str, eb: EngineBuild) -> dict[str, str] | None:
        secret = eb.spec.model.credentials_secret
        return self.kube.secret_data(namespace, secret) if secret else None

    def origin(self, namespace: str, eb: EngineBuild) -> dict[str, str]:
        """Where the weights come from and where they are built, an input of the key
        (``origin_of``): this namespace (builds run here, so their engines are this
        namespace's alone), the credentials Secret's name and the endpoint it names, read
        again after ``ORIGIN_SECONDS`` (a pass reads no Secret; a pvc:// source needs none:
        its origin is the namespace, claim and path)."""
        return self._read_origin(namespace, eb)[0]

    def shared_origin(self, namespace: str, eb: EngineBuild) -> dict[str, str] | None:
        """The origin of the engine the platform's build namespace (``KILN_BUILD_NAMESPACE``)
        makes of the same weights, when this EngineBuild, elsewhere, may use one: it reads them
        with the platform's credentials (no Secret) from a place that is not a claim. None
        otherwise (no build namespace, this one is it, or a tenant's Secret or claim)."""
        builds = self.config.build_namespace
        calibration = eb.spec.build.quantization.calibration
        if (not builds or namespace == builds
                or not shared_source(eb.spec.model.source, eb.spec.model.credentials_secret)
                or (calibration is not None and calibration.dataset.startswith("pvc://"))):
            return None
        return origin_of(eb.spec.model.source, "", None)

    def calibration(self, namespace: str, eb: EngineBuild, read_at: float, *,
                    shared: bool = False) -> dict[str, Any] | None:
        """``{identity, origin}`` of the calibration data, an input of the key: its identity
        read without downloading it (with the model's credentials), and where it comes from as
        ``origin`` has it for the weights (``shared``: as the build namespace's engine of it
        has it). Read again when the weights were (``read_at``, when their identity was last
        read). None for a build without calibration data."""
        calibration = eb.spec.build.quantization.calibration
        if calibration is None:
            return None
        dataset, secret = calibration.dataset, eb.spec.model.credentials_secret
        ref = (namespace, str(eb.metadata["name"]), dataset, secret or "")
        cached = self._calibrations.get(ref)
        if cached is None or cached[0] != read_at:
            credentials = None if dataset.startswith("pvc://") else self._credentials(
                namespace, eb)
            source = open_source(dataset, credentials=credentials, hf_repo_type="dataset",
                                 ambient=tenant_endpoint(dataset, credentials) is None)
            endpoint = endpoints.endpoint_of(dataset, credentials)
            tenant = None if tenant_endpoint(dataset, credentials) is None else namespace
            with endpoints.slot(endpoint, f"read the identity of calibration data {dataset}",
                                tenant=tenant):
                identity = source.identity().digest
            platform = namespace == self.config.build_namespace
            own = origin_of(dataset, "" if platform else namespace, credentials,
                            secret=None if platform else secret)
            common = own if platform or not shared_source(dataset, secret) else origin_of(
                dataset, "", None)
            if len(self._calibrations) >= MAX_CACHED:
                self._calibrations.clear()
            cached = self._calibrations[ref] = (read_at, identity, own, common)
        return {"identity": cached[1], "origin": cached[3] if shared else cached[2]}

    def endpoints(self, namespace: str, eb: EngineBuild) -> dict[str, str]:
        """The endpoints the build reads from, by value (``BuildTask.source.endpoints``): each
        of ``ENDPOINTS`` as the credentials Secret names it, else as the builders'
        environment (``KILN_BUILD_ENV``) does, else empty; read with the origin."""
        return self._read_origin(namespace, eb)[1]

    def _read_origin(self, namespace: str,
                     eb: EngineBuild) -> tuple[dict[str, str], dict[str, str]]:
        source, secret = eb.spec.model.source, eb.spec.model.credentials_secret
        ref = (namespace, source, secret)
        cached = self._origins.get(ref)
        if cached is not None and time.monotonic() - cached[2] < ORIGIN_SECONDS:
            return cached[0], cached[1]
        credentials = self._credentials(namespace, eb) or {}
        platform = namespace == self.config.build_namespace  # its builds are everyone's
        origin = origin_of(source, "" if platform else namespace,
                           None if source.startswith("pvc://") else credentials,
                           secret=None if platform else secret)
        bound = {name: (credentials.get(name) or self.config.build_env.get(name) or "")
                 for name in ENDPOINTS}
        if len(self._origins) >= MAX_CACHED:
            self._origins.clear()
        self._origins[ref] = (origin, bound, time.monotonic())
        return origin, bound

    def identity(self, namespace: str, eb: EngineBuild, *, refresh: bool = False) -> Identity:
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
            entry = Identity(fingerprint, weights.identity, weights.checked_at,
                              time.monotonic() - max(age, 0.0))
            self._identities[ref] = entry
            return entry
        found = self._read_identity(namespace, eb)
        newest = found.details.get("newest")
        entry = Identity(fingerprint, found.digest, self.clock(), time.monotonic(),
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
        credentials = dict(ref[2]) if len(ref) > 2 else None
        endpoint = endpoints.endpoint_of(model.source, credentials)
        tenant = None if tenant_endpoint(model.source, credentials) is None else namespace
        # A slot first: callers waiting for one hanging read must not hold every worker.
        with (endpoints.slot(endpoint, f"read the weights identity of {model.source}",
                             tenant=tenant),
              read.lock):
            if read.started >= arrived and read.found is not None:
                return read.found
            started = time.monotonic()
            if read.refused is not None and started - read.refused[2] < REFUSED_SECONDS:
                raise InvalidInput(read.refused[0], reason=read.refused[1])
            try:
                found = source.identity()
            except InvalidInput as error:
                read.refused = (error.message, error.reason, started)
                raise
            read.started, read.found, read.refused = started, found, None
            return found

    def _source(self, namespace: str, eb: EngineBuild) -> tuple[tuple[Any, ...], WeightSource]:
        """An open source per (URI, revision, credentials), reused: opening one builds an S3
        client, which costs more CPU than the listing an identity read makes. An endpoint the
        tenant's Secret names gets the tenant's credentials only, never the operator's."""
        model = eb.spec.model
        credentials = self._credentials(namespace, eb)
        ref = (model.source, model.revision or "", tuple(sorted((credentials or {}).items())))
        with self._locks_guard:
            found = self._sources.get(ref)
            if found is not None:
                self._sources.move_to_end(ref)
                return ref, found
        source = open_source(model.source, credentials=credentials, revision=model.revision,
                             ambient=tenant_endpoint(model.source, credentials) is None)
        with self._locks_guard:
            self._sources[ref] = source
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        return ref, source

    def _poll_due(self, eb: EngineBuild, cached: Identity | None) -> bool:
        """Whether ``spec.rebuild.pollInterval`` has passed since the identity was read (by
        the wall clock: the time read is in status)."""
        if cached is None or not eb.spec.rebuild.on_weight_change:
            return False
        interval = parse_duration(eb.spec.rebuild.poll_interval)
        return time.monotonic() - cached.read_at >= interval.total_seconds()

    def settling(self, eb: EngineBuild, weights: Identity) -> str | None:
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

    def moved(self, namespace: str, eb: EngineBuild, failed: dict[str, Failure]) -> bool:
        """A build Job of this object (``failed``: Job name -> the builder's verdict) failed
        with ``WeightsChanged``, and the identity was not read again since: the weights moved,
        read them now (no wait for ``pollInterval``). Pinned weights (``onWeightChange:
        false``) are never re-read."""
        if not eb.spec.rebuild.on_weight_change:
            return False
        moved = [job for job, f in failed.items() if f.reason == "WeightsChanged"]
        fresh = [n for n in moved if (namespace, n) not in self._reread_for]
        self._reread_for |= {(namespace, n) for n in fresh}
        if fresh:
            log.info("build Job %s/%s saw the weights change: reading them again", namespace,
                     fresh[0])
        return bool(fresh)
