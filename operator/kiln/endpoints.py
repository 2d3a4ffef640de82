"""At most a few calls in flight per user-given endpoint (an S3 endpoint, a hub), so that
EngineBuilds pointing at an endpoint that hangs hold a few reconcile workers, not all of them:
a call that finds no free slot soon fails as ``EndpointBusy`` and backs off."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

IN_FLIGHT = 2
"""Calls at once per endpoint."""
WAIT_SECONDS = 1.0
"""How long a call waits for a slot before it gives up for this pass."""

_slots: dict[str, threading.BoundedSemaphore] = {}
_guard = threading.Lock()


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
    """Hold one of the endpoint's slots for the call; ``Unavailable`` (``EndpointBusy``) if
    none frees up within ``WAIT_SECONDS``."""
    from kiln.errors import Unavailable

    with _guard:
        semaphore = _slots.setdefault(endpoint, threading.BoundedSemaphore(IN_FLIGHT))
    if not semaphore.acquire(timeout=WAIT_SECONDS):
        raise Unavailable(f"{what}: {IN_FLIGHT} calls to {endpoint} are in flight and have "
                          "not answered yet", reason="EndpointBusy")
    try:
        yield
    finally:
        semaphore.release()
