"""At most a few calls in flight per user-given endpoint (an S3 endpoint, a hub), so that
EngineBuilds pointing at an endpoint that hangs hold a few reconcile workers, not all of them.
A call waits for a slot while the calls holding them are merely busy (a burst of reads of a
healthy endpoint queues up); once every holder has been in flight longer than
``HUNG_SECONDS``, the endpoint counts as hanging and a call that finds no slot fails at once
as ``EndpointBusy`` and backs off."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

IN_FLIGHT = 4
"""Calls at once per endpoint."""
HUNG_SECONDS = 3.0
"""A call in flight longer than this is taken for one that hangs."""
WAIT_SECONDS = 30.0
"""The longest a call waits for a slot of an endpoint whose calls still answer."""
_POLL_SECONDS = 0.25


class _Endpoint:
    def __init__(self) -> None:
        self.slots = threading.BoundedSemaphore(IN_FLIGHT)
        self.started: dict[int, float] = {}
        """When each call in flight began (by a token of its own)."""

    def hanging(self, now: float) -> bool:
        """Every slot is held by a call older than ``HUNG_SECONDS``."""
        held = list(self.started.values())
        return len(held) >= IN_FLIGHT and all(now - t > HUNG_SECONDS for t in held)


_endpoints: dict[str, _Endpoint] = {}
_guard = threading.Lock()
_tokens = iter(range(1 << 62))


def endpoint_of(uri: str, credentials: Mapping[str, str] | None) -> str:
    """Where calls for ``uri`` go: the endpoint the credentials name, else the scheme and
    host of the URI (``s3://bucket``: AWS's endpoint, shared by every bucket)."""
    creds = credentials or {}
    if uri.startswith("s3://"):
        return creds.get("AWS_ENDPOINT_URL") or "s3"
    if uri.startswith("hf://"):
        return creds.get("HF_ENDPOINT") or "hf"
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.contextmanager
def slot(endpoint: str, what: str) -> Iterator[None]:
    """Hold one of the endpoint's slots for the call; ``Unavailable`` (``EndpointBusy``) when
    none is free and the calls holding them hang (or after ``WAIT_SECONDS``)."""
    from kiln.errors import Unavailable

    with _guard:
        state = _endpoints.setdefault(endpoint, _Endpoint())
    deadline = time.monotonic() + WAIT_SECONDS
    while not state.slots.acquire(timeout=_POLL_SECONDS):
        now = time.monotonic()
        with _guard:
            hanging = state.hanging(now)
        if hanging or now >= deadline:
            raise Unavailable(f"{what}: {IN_FLIGHT} calls to {endpoint} are in flight and "
                              f"have not answered for more than {HUNG_SECONDS:g}s",
                              reason="EndpointBusy")
    with _guard:
        token = next(_tokens)
        state.started[token] = time.monotonic()
    try:
        yield
    finally:
        with _guard:
            state.started.pop(token, None)
        state.slots.release()
