"""A real HTTP proxy in front of an S3 endpoint, to break things at a chosen moment: a store
that goes down part way through an upload, weights replaced while they are downloaded."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}
OUTAGE = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
          b"<Message>store outage (test proxy)</Message></Error>")
UNKNOWN_KEY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
               b"<Message>The AWS Access Key Id you provided does not exist in our records."
               b"</Message></Error>")


def is_object(path: str) -> bool:
    """Whether a path-style S3 request names an object (``/bucket/key``), not a bucket."""
    return urlsplit(path).path.strip("/").count("/") >= 1


class S3Proxy:
    """Forwards requests to ``upstream``; ``refuse(method, path)`` is asked first, under a lock,
    and a True answer gets a 503 as from an object store that is down. With ``keys``, a
    request signed with another access key gets S3's 403 ``InvalidAccessKeyId`` (moto itself
    takes any key)."""

    def __init__(self, upstream: str, refuse: Callable[[str, str], bool],
                 keys: set[str] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.refuse = refuse
        self.keys = keys
        self.refused = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            return data
                        data += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int, answer: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            def _handle(self) -> None:
                body = self._body()
                credential = self.headers.get("Authorization", "").partition("Credential=")[2]
                if proxy.keys is not None and credential.split("/")[0] not in proxy.keys:
                    self._error(403, UNKNOWN_KEY)
                    return
                if proxy.down(self.command, self.path):
                    self._error(503, OUTAGE)
                    return
                status, headers, answer = proxy.forward(self.command, self.path,
                                                        dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def down(self, method: str, path: str) -> bool:
        with self.lock:
            if self.refuse(method, path):
                self.refused += 1
                return True
            return False

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1",
                                          self.upstream.port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(method, path, body=body if body or method in ("PUT", "POST") else None,
                         headers=sent)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def __enter__(self) -> S3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Outage:
    """Lets ``puts`` object PUTs through, then the store is down for good."""

    def __init__(self, puts: int) -> None:
        self.allowed = puts
        self.puts = 0

    def __call__(self, method: str, path: str) -> bool:
        if self.puts >= self.allowed:
            return True
        if method == "PUT" and is_object(path):
            self.puts += 1
        return False


class OnFirstDownload:
    """Runs ``action`` once, when the first object is read; refuses nothing."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.done = False

    def __call__(self, method: str, path: str) -> bool:
        if method == "GET" and is_object(path) and not self.done:
            self.done = True
            self.action()
        return False
