"""kiln's Prometheus metrics, served on ``/metrics`` by ``kiln run``.

Reconcilers report through the ``record_*`` / ``set_*`` helpers below, one line per fact.
They are level-based and may see the same fact on every pass; give such calls a ``once``
identity (e.g. the Job name and the owner's uid) and the fact is counted only the first time
this process sees it. Label values are bounded: a failure reason that is not a short
CamelCase code is reported as ``Unknown``, a serving mode other than ``engine`` or
``fallback`` is refused.

Metrics live in ``REGISTRY`` (kiln's own, with the process and platform collectors), not in
prometheus_client's global one, so tests and embedding code see only kiln's figures.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

PORT_ENV = "KILN_METRICS_PORT"
DEFAULT_PORT = 8081
SERVING_MODES = ("engine", "fallback")
UNKNOWN_REASON = "Unknown"
_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_KINDS = ("EngineBuild", "EngineDeployment")
_ONCE_LIMIT = 100_000

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILDS_STARTED = Counter(
    "kiln_builds_started", "Build Jobs kiln created.", registry=REGISTRY)
BUILDS_SUCCEEDED = Counter(
    "kiln_builds_succeeded", "Builds that committed an engine to the store.", registry=REGISTRY)
BUILDS_FAILED = Counter(
    "kiln_builds_failed", "Builds that failed, by the builder's (or the Job's) reason.",
    ["reason"], registry=REGISTRY)
BUILD_SECONDS = Histogram(
    "kiln_build_seconds", "Wall time of finished builds (Job start to completion).",
    buckets=(30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400,
             21600),
    registry=REGISTRY)
SERVING_START_SECONDS = Histogram(
    "kiln_serving_start_seconds", "Serving pods' server start (container start to Ready), by "
    "GPU product and whether the engine's artifact set was placed.",
    ["gpu_product", "artifacts"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 900, 1800),
    registry=REGISTRY)
CACHE_HITS = Counter(
    "kiln_engine_cache_hits", "Engine keys found committed in the store (no build).",
    registry=REGISTRY)
CACHE_MISSES = Counter(
    "kiln_engine_cache_misses", "Engine keys not in the store (a build is needed).",
    registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "kiln_reconcile_errors", "Reconciles that ended in an error, by object kind.",
    ["kind"], registry=REGISTRY)
RECONCILES = Counter(
    "kiln_reconcile", "Reconcile passes by object kind and result: done, retry (an error that "
    "may heal, backed off), stalled (invalid input), unexpected (an exception kiln does not "
    "know, backed off), backing_off (skipped: the object waits out its backoff).",
    ["kind", "result"], registry=REGISTRY)
RESULTS = ("done", "retry", "stalled", "unexpected", "backing_off")
UNEXPECTED_ERRORS = Counter(
    "kiln_unexpected_errors", "Reconciles that raised an exception kiln does not know (a "
    "bug, or an unforeseen failure), by object kind and exception type.", ["kind", "type"],
    registry=REGISTRY)
ENGINES_SERVED = Gauge(
    "kiln_engines_served", "Serving Deployments, by mode (engine, or fallback while no "
    "engine is ready).", ["mode"], registry=REGISTRY)

STORE_ENGINES = Gauge(
    "kiln_store_engines", "Engines committed in a store, as the last `kiln gc --apply` left it.",
    ["store"], registry=REGISTRY)
STORE_BYTES = Gauge(
    "kiln_store_bytes", "Bytes of those engines.", ["store"], registry=REGISTRY)
GC_RECLAIMED_BYTES = Gauge(
    "kiln_gc_reclaimed_bytes", "Bytes of the engines the last `kiln gc --apply` deleted.",
    ["store"], registry=REGISTRY)
USED_MARK_FAILURES = Counter(
    "kiln_used_mark_failures", "Engines the operator could not mark used in a store (a GC "
    "may then delete them once unused past its retention), by store.", ["store"],
    registry=REGISTRY)

for _kind in _KINDS:
    RECONCILE_ERRORS.labels(kind=_kind)
for _mode in SERVING_MODES:
    ENGINES_SERVED.labels(mode=_mode).set(0)


class _Once:
    """Identities already counted, oldest forgotten first past a bound."""

    def __init__(self, limit: int = _ONCE_LIMIT) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def first(self, metric: str, identity: str | None) -> bool:
        """True the first time (``metric``, ``identity``) is seen; always True for None."""
        if identity is None:
            return True
        key = (metric, identity)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)
            return True

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


_once = _Once()
_served: dict[str, dict[str, int]] = {}
_served_lock = threading.Lock()


def reason_label(reason: str | None) -> str:
    """A failure reason as a label value: the code itself, or ``Unknown``."""
    if reason and _REASON.fullmatch(reason):
        return reason
    return UNKNOWN_REASON


def record_build_started(*, once: str | None = None) -> None:
    """kiln created a build Job (call where ``create_job`` returned True)."""
    if _once.first("started", once):
        BUILDS_STARTED.inc()


def record_build_succeeded(seconds: float | None = None, *, once: str | None = None) -> None:
    """A build committed its engine; ``seconds`` (the Job's run time) goes to the histogram."""
    if not _once.first("finished", once):
        return
    BUILDS_SUCCEEDED.inc()
    if seconds is not None and seconds >= 0:
        BUILD_SECONDS.observe(seconds)


def record_serving_start(product: str, artifacts: str, seconds: float, *, once: str) -> None:
    """A serving pod's measured start, counted once per pod (``once``: its uid or name)."""
    if _once.first("serving-start", once):
        SERVING_START_SECONDS.labels(gpu_product=product, artifacts=artifacts).observe(seconds)


def record_build_failed(reason: str | None, seconds: float | None = None, *,
                        once: str | None = None) -> None:
    """A build failed for ``reason`` (a code such as ``OutOfDisk``; anything else: Unknown)."""
    if not _once.first("finished", once):
        return
    BUILDS_FAILED.labels(reason=reason_label(reason)).inc()
    if seconds is not None and seconds >= 0:
        BUILD_SECONDS.observe(seconds)


def record_cache(hit: bool, *, once: str | None = None) -> None:
    """An engine key was looked up in the store: found (hit) or not (miss)."""
    if _once.first("cache", once):
        (CACHE_HITS if hit else CACHE_MISSES).inc()


def record_reconcile_error(kind: str) -> None:
    """A reconcile of ``kind`` (``EngineBuild`` or ``EngineDeployment``) raised."""
    RECONCILE_ERRORS.labels(kind=kind if kind in _KINDS else "Other").inc()


def record_reconcile(kind: str, result: str) -> None:
    """A reconcile pass of ``kind`` came to ``result`` (one of ``RESULTS``); every failure
    also counts in ``kiln_reconcile_errors``."""
    kind = kind if kind in _KINDS else "Other"
    RECONCILES.labels(kind=kind, result=result if result in RESULTS else "unexpected").inc()
    if result in ("retry", "stalled", "unexpected"):
        RECONCILE_ERRORS.labels(kind=kind).inc()


def record_unexpected_error(kind: str, error: BaseException) -> None:
    """A reconcile of ``kind`` raised ``error``, an exception type kiln does not know."""
    UNEXPECTED_ERRORS.labels(kind=kind if kind in _KINDS else "Other",
                             type=type(error).__name__[:64]).inc()


def set_engines_served(owner: str, modes: Mapping[str, int]) -> None:
    """What one EngineDeployment (``owner``, e.g. ``namespace/name``) serves now, as counts
    of Deployments by mode; the gauge is the sum over every owner. Replaces the owner's
    previous figures, so call it with the whole picture on each reconcile."""
    for mode, count in modes.items():
        if mode not in SERVING_MODES:
            raise ValueError(f"serving mode {mode!r} is not one of {SERVING_MODES}")
        if count < 0:
            raise ValueError(f"negative count {count} for mode {mode!r}")
    with _served_lock:
        _served[owner] = {m: c for m, c in modes.items() if c}
        if not _served[owner]:
            del _served[owner]
        _publish_served()


GATE_FIGURES = Gauge(
    "kiln_gate_figure", "What a rollout gate measured of a key: ttft_p50_ms, ttft_p99_ms, "
    "itl_ms, throughput (output tokens/s), error_rate, golden_mismatches; track is canary "
    "(the new key) or stable (the key serving beside it).",
    ["engine_deployment", "gpu_product", "key", "track", "figure"], registry=REGISTRY)
GATE_FIGURE_NAMES = ("ttft_p50_ms", "ttft_p99_ms", "itl_ms", "throughput", "error_rate")


def set_gate_figures(owner: str, product: str, key: str,
                     tracks: Mapping[str, Mapping[str, float | None]],
                     golden_mismatches: int | None) -> None:
    """A gate's figures of ``key`` (its first 12 characters label it) on ``product``."""
    labels = {"engine_deployment": owner, "gpu_product": product, "key": key[:12]}
    for track, figures in tracks.items():
        for figure, value in figures.items():
            if value is not None:
                GATE_FIGURES.labels(**labels, track=track, figure=figure).set(value)
    if golden_mismatches is not None:
        GATE_FIGURES.labels(**labels, track="canary", figure="golden_mismatches").set(
            golden_mismatches)


def set_store(store: str, *, engines: int, size: int, reclaimed: int) -> None:
    """A store's figures from the last GC's report."""
    STORE_ENGINES.labels(store=store).set(engines)
    STORE_BYTES.labels(store=store).set(size)
    GC_RECLAIMED_BYTES.labels(store=store).set(reclaimed)


def record_used_mark_failure(store: str) -> None:
    """An engine in use could not be marked used in ``store``."""
    USED_MARK_FAILURES.labels(store=store).inc()


def forget_engines_served(owner: str) -> None:
    """The EngineDeployment is gone: drop its share of ``kiln_engines_served``."""
    with _served_lock:
        _served.pop(owner, None)
        _publish_served()


def _publish_served() -> None:
    for mode in SERVING_MODES:
        ENGINES_SERVED.labels(mode=mode).set(sum(s.get(mode, 0) for s in _served.values()))


def port_from_env(env: Mapping[str, str] | None = None) -> int:
    """``KILN_METRICS_PORT`` (default 8081; 0 turns the endpoint off)."""
    env = os.environ if env is None else env
    text = env.get(PORT_ENV, "").strip()
    if not text:
        return DEFAULT_PORT
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={text} is not a port number")
    return port


def serve(port: int | None = None, addr: str = "0.0.0.0") -> int | None:
    """Serve ``/metrics`` from a daemon thread on ``port`` (default: ``port_from_env()``).

    Returns the port served, or None when the port is 0 or cannot be bound: metrics are not
    worth stopping the operator for, so a busy port is logged as an error, not raised.
    """
    port = port_from_env() if port is None else port
    if port == 0:
        log.info("metrics endpoint disabled (%s=0)", PORT_ENV)
        return None
    try:
        start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as error:
        log.error("cannot serve metrics on %s:%d: %s", addr, port, error)
        return None
    log.info("serving metrics on http://%s:%d/metrics", addr, port)
    return port
