"""A tenant endpoint's call is bounded as a whole: headers that drip are cut off at the
deadline, an answer over the cap is refused by its stated length, unread."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kiln.errors import InvalidInput, Unavailable
from kiln.sources import bounded


@contextlib.contextmanager
def server() -> Iterator[str]:
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with contextlib.suppress(OSError):
                if self.path == "/drip":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
                    while not stop.wait(0.05):  # every read answers well within its timeout
                        self.wfile.write(b"x")
                        self.wfile.flush()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(64 << 20))
                    self.end_headers()
                    self.wfile.write(b" " * 65536)
                    stop.wait(10)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_headers_that_drip_are_cut_off_at_the_deadline() -> None:
    with (server() as url, bounded.within(1.0, 1 << 20, "read the hub") as limits,
          pytest.raises(Unavailable) as late):
        bounded.exchange("GET", f"{url}/drip", {}, limits=limits)
    assert late.value.reason == "SourceTooSlow"


def test_an_answer_over_the_cap_is_refused_by_its_stated_length() -> None:
    with (server() as url, bounded.within(30.0, 1 << 20, "list") as limits,
          pytest.raises(InvalidInput) as large):
        bounded.exchange("GET", f"{url}/huge", {}, limits=limits)
    assert large.value.reason == "SourceTooLarge"
    assert "67108864 bytes" in large.value.message


def test_nested_bounds_keep_the_tighter() -> None:
    with bounded.within(5.0, 1 << 20, "outer") as outer, \
            bounded.within(60.0, 1 << 10, "inner") as inner:
        assert inner.deadline == outer.deadline and inner.max_bytes == 1 << 10
        assert bounded.active() is inner
    assert bounded.active() is None


@contextlib.contextmanager
def silent_address() -> Iterator[tuple[str, int]]:
    """A loopback address whose SYNs are dropped: a listening socket with a full backlog (one
    connection held, never accepted), as a tenant's DNS would name one that never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    held = socket.create_connection(srv.getsockname(), timeout=5)
    try:
        yield srv.getsockname()
    finally:
        held.close()
        srv.close()


def _ends(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` on a thread; what it raised, once it ended (the test fails if it has
    not ended within 8 s, far past the 1 s deadline it was given)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the test
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(8)
    assert not thread.is_alive(), "the call outlived its deadline"
    return raised[0] if raised else None


def test_many_silent_addresses_do_not_stretch_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to many addresses that drop SYNs: urllib3 would try each in turn,
    each with the per-read timeout, while the deadline's timer has no socket to shut."""
    with silent_address() as (host, port):
        many = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))] * 20
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: many)
        with bounded.within(1.0, 1 << 20, "read the hub") as limits:
            raised = _ends(lambda: bounded.exchange(
                "GET", "http://tenant.example:80/x", {}, limits=limits, read_timeout=10))
    assert isinstance(raised, Unavailable) and raised.reason == "SourceTooSlow"


def test_a_name_that_never_resolves_ends_at_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(*args: object, **kwargs: object) -> list[object]:
        release.wait(30)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        with bounded.within(1.0, 1 << 20, "read the hub") as limits:
            raised = _ends(lambda: bounded.exchange("GET", "http://tenant.example/x", {},
                                                    limits=limits))
    finally:
        release.set()
    assert isinstance(raised, Unavailable) and raised.reason == "SourceTooSlow"
