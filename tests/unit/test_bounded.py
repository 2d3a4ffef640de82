"""A tenant endpoint's call is bounded as a whole: headers that drip are cut off at the
deadline, an answer over the cap is refused by its stated length, unread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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
