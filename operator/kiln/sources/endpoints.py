"""At most a few calls in flight per user-given endpoint (an S3 endpoint, a hub), so that
EngineBuilds pointing at an endpoint that hangs hold a few reconcile workers, not all of them.
A call waits for a slot while the endpoint still answers (a burst of reads, or a few slow
listings, queue up); once every slot is held and no call has finished for ``HUNG_SECONDS``,
the endpoint counts as hanging and a call that finds no slot fails at once as
``EndpointBusy`` and backs off.

Calls to endpoints a tenant named (in its credentials Secret) take two more budgets first,
waiting for them briefly (``TENANT_WAIT_SECONDS``): their namespace's, ``TENANT_SHARE`` (one
tenant with many slow endpoints holds that many workers and no more: another tenant's calls
go on), and ``TENANT_IN_FLIGHT`` across all of them (many tenants with slow endpoints leave
the platform's endpoints the rest of the workers). Each
such call is bounded as a whole besides: ``TENANT_SECONDS`` for every request it makes
together, ``TENANT_MAX_BYTES`` per answer (``bounded``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

IN_FLIGHT = 4
"""Calls at once per endpoint."""
TENANT_SHARE = 2
"""Calls at once to endpoints one namespace named: a quarter of the EngineBuild reconcile
workers (8)."""
TENANT_IN_FLIGHT = 6
"""Calls at once to all the endpoints tenants named together: the platform's endpoints keep
2 of the 8 EngineBuild reconcile workers."""
TENANT_SECONDS = 30.0
"""The longest one call to an endpoint a tenant named may take, all its requests together
(connect, headers, every byte of every page)."""
TENANT_MAX_BYTES = 8 << 20
"""The largest answer of an endpoint a tenant named that is read (a listing page of 1,000
keys is well under 1 MiB; a hub's model info a few MiB)."""
HUNG_SECONDS = 5.0
"""An endpoint whose slots are all held and that finished no call for this long hangs."""
WAIT_SECONDS = 30.0
"""The longest a call waits for a slot of an endpoint whose calls still answer."""
TENANT_WAIT_SECONDS = 2.0
"""The longest a call waits for its namespace's share (or the tenants' budget): the worker
waiting is one more the tenant holds, so it backs off (``EndpointBusy``) instead."""
_POLL_SECONDS = 0.25


class _Endpoint:
    def __init__(self, capacity: int = IN_FLIGHT) -> None:
        self.capacity = capacity
        self.slots = threading.BoundedSemaphore(capacity)
        self.started: dict[int, float] = {}
        """When each call in flight began (by a token of its own)."""
        self.finished = 0.0
        """When a call last finished (monotonic)."""

    def hanging(self, now: float) -> bool:
        """Every slot is held, by calls older than ``HUNG_SECONDS``, and none finished since."""
        held = list(self.started.values())
        return (len(held) >= self.capacity and now - self.finished > HUNG_SECONDS
                and all(now - t > HUNG_SECONDS for t in held))


_endpoints: dict[str, _Endpoint] = {}
_tenants = _Endpoint(TENANT_IN_FLIGHT)
"""The budget the calls to every tenant-named endpoint share."""
_namespaces: dict[str, _Endpoint] = {}
"""Each namespace's share of it."""
_guard = threading.Lock()
_tokens = iter(range(1 << 62))


def endpoint_of(uri: str, credentials: Mapping[str, str] | None) -> str:
    """Whose slots calls for ``uri`` take: the endpoint a tenant's credentials name (one
    tenant's server, however it is spelled), else the bucket or repository on the platform's
    endpoint (tenants of a shared AWS or hub do not wait for each other)."""
    creds = credentials or {}
    named = creds.get("AWS_ENDPOINT_URL") if uri.startswith("s3://") else (
        creds.get("HF_ENDPOINT") if uri.startswith("hf://") else None)
    if named:
        text = named.strip().lower().rstrip("/")
        parts = urlsplit(text if "://" in text else f"https://{text}")
        if not parts.hostname:
            return text
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        return f"{parts.scheme}://{parts.hostname}:{port}"
    parts = urlsplit(uri)
    if uri.startswith("hf://"):
        return f"hf://{parts.netloc}{parts.path.split('@')[0]}"
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.contextmanager
def slot(endpoint: str, what: str, *, tenant: str | None = None) -> Iterator[None]:
    """Hold one of the endpoint's slots for the call; for an endpoint the namespace
    ``tenant`` named, one of that namespace's ``TENANT_SHARE`` and one of ``TENANT_IN_FLIGHT``
    besides, and every request inside is bounded (``TENANT_SECONDS``, ``TENANT_MAX_BYTES``).
    ``Unavailable`` (``EndpointBusy``) when no slot is free and the calls holding them hang
    (or after ``WAIT_SECONDS``)."""
    from kiln.sources import bounded

    with _guard:
        state = _endpoints.setdefault(endpoint, _Endpoint())
        share = None if tenant is None else _namespaces.setdefault(
            tenant, _Endpoint(TENANT_SHARE))
    if share is None:
        with _hold(state, endpoint, what):
            yield
        return
    # The tenant's budgets first, waiting briefly: a worker waiting for one is a worker held.
    with (_hold(share, f"endpoints namespace {tenant} named", what, wait=TENANT_WAIT_SECONDS),
          _hold(_tenants, "endpoints tenants named", what, wait=TENANT_WAIT_SECONDS),
          _hold(state, endpoint, what),
          bounded.within(TENANT_SECONDS, TENANT_MAX_BYTES, what)):
        yield


@contextlib.contextmanager
def _hold(state: _Endpoint, endpoint: str, what: str,
          wait: float = WAIT_SECONDS) -> Iterator[None]:
    from kiln.errors import Unavailable

    deadline = time.monotonic() + wait
    while not state.slots.acquire(timeout=_POLL_SECONDS):
        now = time.monotonic()
        with _guard:
            hanging = state.hanging(now)
        if hanging or now >= deadline:
            raise Unavailable(f"{what}: {state.capacity} calls to {endpoint} are in flight"
                              + (f" and have not answered for more than {HUNG_SECONDS:g}s"
                                 if hanging else ""), reason="EndpointBusy")
    with _guard:
        token = next(_tokens)
        state.started[token] = time.monotonic()
    try:
        yield
    finally:
        with _guard:
            state.started.pop(token, None)
            state.finished = time.monotonic()
        state.slots.release()
