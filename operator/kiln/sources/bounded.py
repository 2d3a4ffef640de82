"""Calls to an endpoint a tenant chose, bounded as a whole: a wall-clock deadline for the
connection, the headers and every byte of the body together, and a cap on the bytes of one
answer, refused by its ``Content-Length`` before any of the body is read.

Timeouts per read bound nothing against a server that sends one byte a second (headers
included: ``http.client`` reads them a line at a time). So each exchange has a fresh
connection of its own, and a timer shuts its socket down at the deadline: whatever read is
blocked then returns at once. ``within(seconds, max_bytes)`` bounds every exchange the calling
thread makes inside it; botocore's requests go through ``exchange`` too while one is active
(``bound_botocore``: its ``before-send`` event answers them), so a listing's pages, HEADs and
GETs are bounded, signed as botocore signs them.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from kiln.errors import InvalidInput, KilnError, Unavailable, quoted

CHUNK = 64 << 10


@dataclass(frozen=True)
class Limits:
    deadline: float
    """When the call must have ended (``time.monotonic``)."""
    seconds: float
    max_bytes: int
    what: str

    def late(self) -> Unavailable:
        return Unavailable(f"{self.what}: the endpoint did not answer within "
                           f"{self.seconds:g}s", reason="SourceTooSlow")

    def too_large(self, size: int | None) -> InvalidInput:
        said = f" ({size} bytes)" if size is not None else ""
        return InvalidInput(f"{self.what}: one answer of the endpoint is larger than "
                            f"{self.max_bytes >> 20} MiB{said}: not read",
                            reason="SourceTooLarge")


_active: ContextVar[Limits | None] = ContextVar("kiln_bounded", default=None)


@contextlib.contextmanager
def within(seconds: float, max_bytes: int, what: str) -> Iterator[Limits]:
    """Bound every exchange made inside: all of them end by ``seconds`` from now, none
    answers with more than ``max_bytes``. Nested, the tighter bounds hold."""
    outer = _active.get()
    limits = Limits(time.monotonic() + seconds, seconds, max_bytes, what)
    if outer is not None and outer.deadline <= limits.deadline:
        limits = Limits(outer.deadline, outer.seconds, min(outer.max_bytes, max_bytes),
                        outer.what)
    token = _active.set(limits)
    try:
        yield limits
    finally:
        _active.reset(token)


def active() -> Limits | None:
    """The bounds of the calling context, if any."""
    return _active.get()


def exchange(method: str, url: str, headers: dict[str, str], body: bytes | None = None, *,
             limits: Limits, read_timeout: float = 10.0,
             ca_certs: str | None = None) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
    """One request on a connection of its own: (status, headers, body), within ``limits``.
    ``Unavailable`` (``SourceTooSlow``) past the deadline or when the endpoint fails;
    ``InvalidInput`` (``SourceTooLarge``) for an answer over the cap (a HEAD's stated length
    is not a body)."""
    parts = urlsplit(url)
    left = limits.deadline - time.monotonic()
    if left <= 0:
        raise limits.late()
    timeout = min(read_timeout, left)
    host = parts.hostname or ""
    sock = _connect(host, parts.port or (443 if parts.scheme == "https" else 80), limits,
                    timeout)
    conn: urllib3.connection.HTTPConnection
    if parts.scheme == "https":
        conn = urllib3.connection.HTTPSConnection(host, parts.port, timeout=timeout,
                                                  ca_certs=ca_certs)
    else:
        conn = urllib3.connection.HTTPConnection(host, parts.port, timeout=timeout)
    setattr(conn, "_new_conn", lambda: sock)  # noqa: B010 - urllib3 (TLS too) uses this socket
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(left, cut)
    timer.daemon = True
    timer.start()
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request(method, target, body=body, headers=headers, preload_content=False)
        answer = conn.getresponse()
        stated = answer.headers.get("Content-Length")
        size = int(stated) if stated and stated.isdigit() else None
        if method != "HEAD" and size is not None and size > limits.max_bytes:
            raise limits.too_large(size)
        data = bytearray()
        if method != "HEAD":
            while chunk := answer.read1(CHUNK):
                data += chunk
                if len(data) > limits.max_bytes:
                    raise limits.too_large(None)
                if expired.is_set():
                    raise limits.late()
        if expired.is_set():
            raise limits.late()
        return answer.status, answer.headers, bytes(data)
    except KilnError:
        raise
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError,
            ValueError) as error:
        if expired.is_set() or time.monotonic() >= limits.deadline:
            raise limits.late() from error
        raise Unavailable(f"{limits.what}: {type(error).__name__}: {quoted(error)}") from error
    finally:
        timer.cancel()
        conn.close()
        sock.close()


def _connect(host: str, port: int, limits: Limits, timeout: float) -> socket.socket:
    """A TCP connection to an address ``host`` resolves to, within the deadline: the
    name is resolved on a thread of its own (``getaddrinfo`` takes no timeout), and its
    addresses are tried in order only while time is left, so neither a resolver that never
    answers nor many addresses that drop SYNs (urllib3 would give each the per-read timeout)
    stretch the call."""
    found: list[tuple[Any, ...]] = []
    failed: list[OSError] = []

    def resolve() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            failed.append(error)

    resolver = threading.Thread(target=resolve, daemon=True, name="kiln-resolve")
    resolver.start()
    resolver.join(max(0.0, limits.deadline - time.monotonic()))
    if resolver.is_alive():
        raise limits.late()
    if not found:
        reason = quoted(failed[0]) if failed else "no address"
        raise Unavailable(f"{limits.what}: cannot resolve {host!r}: {reason}")
    last: OSError | None = None
    for family, kind, proto, _, address in found:  # in order, as urllib3 would, in time left
        left = limits.deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(min(timeout, left))
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            last = error
            continue
        sock.settimeout(timeout)
        return sock
    if last is None or time.monotonic() >= limits.deadline or isinstance(last, TimeoutError):
        raise limits.late() from last
    raise Unavailable(f"{limits.what}: {type(last).__name__}: {quoted(last)}") from last


class _Raw:
    """What botocore reads an answer's body from (``AWSResponse.raw``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def _send(request: Any, **_: Any) -> Any:
    """botocore's ``before-send``: inside ``within``, the request goes through ``exchange``
    (None otherwise: botocore sends it)."""
    limits = _active.get()
    if limits is None:
        return None
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders
    from botocore.httpsession import get_cert_path

    body = request.body
    if body is not None and not isinstance(body, bytes):
        body = body.read() if hasattr(body, "read") else str(body).encode()
    status, headers, data = exchange(request.method, request.url, dict(request.headers.items()),
                                     body or None, limits=limits,
                                     ca_certs=get_cert_path(True))
    answered = HTTPHeaders()
    for name, value in headers.items():
        answered[name] = value
    return AWSResponse(request.url, status, answered, _Raw(data))


def bound_botocore(client: Any) -> None:
    """Send the client's requests through ``exchange`` while the caller is ``within`` bounds
    (a no-op elsewhere: the same client serves unbounded calls as before)."""
    client.meta.events.register("before-send.s3", _send, unique_id="kiln-bounded")
