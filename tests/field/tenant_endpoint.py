"""A tenant's own server, started by the test: an S3 endpoint and a Hugging Face hub in one,
recording every request it gets (headers included) and misbehaving by name.

- ``s3://endless/...``: a listing that never ends (1,000 objects a page, always truncated);
- ``hf://drip/...``: model info whose body comes one byte at a time, forever;
- ``hf://dripheaders/...``: model info whose *headers* come one byte a second, forever;
- ``s3://slowpage/...``: a listing page whose body comes one byte a second, forever;
- ``s3://huge/...``: one listing page of ``HUGE_PAGE`` bytes (its ``Content-Length`` says so);
- ``hf://noisy/...`` and ``s3://noisy/...``: a 500 with a large body of markup;
- anything else: a small, well-formed answer (one object; a commit sha).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DRIP_SECONDS = 0.2
SLOW_SECONDS = 1.0
"""One byte a second: headers and listing pages that drip."""
HUGE_PAGE = 384 << 20
"""A listing page larger than the operator's memory request."""
NOISE = b"<html><script>alert('tenant')</script>" + b"X" * 200_000 + b"</html>"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class TenantEndpoint:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    """Bytes of body sent, per misbehaviour (``endless``, ``drip``)."""
    stop: threading.Event = field(default_factory=threading.Event)

    def credentials_seen(self) -> set[str]:
        """Every ``Authorization`` header and ``X-Amz-Security-Token`` / ``X-Amz-Credential``
        value that arrived."""
        found = set()
        for r in self.requests:
            for name, value in r.headers.items():
                if name.lower() in ("authorization", "x-amz-security-token"):
                    found.add(value)
            query = parse_qs(urlsplit(r.path).query)
            found |= set(query.get("X-Amz-Credential", []))
        return found


def _listing(bucket: str, prefix: str, page: int, endless: bool) -> bytes:
    count = 1000 if endless else 1
    contents = "".join(
        f"<Contents><Key>{prefix}shard-{page:06d}-{i:04d}.safetensors</Key>"
        "<LastModified>2026-01-01T00:00:00.000Z</LastModified>"
        f"<ETag>&quot;{hashlib.md5(f'{page}-{i}'.encode()).hexdigest()}&quot;</ETag>"
        "<Size>1048576</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(count))
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>page-{page + 1}"
            "</NextContinuationToken>") if endless else "<IsTruncated>false</IsTruncated>"
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{count}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys>{more}{contents}</ListBucketResult>").encode()


def _handler(endpoint: TenantEndpoint) -> type[BaseHTTPRequestHandler]:
    pages = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/xml") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _count(self, what: str, amount: int) -> None:
            endpoint.served[what] = endpoint.served.get(what, 0) + amount

        def _drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(1 << 20))  # under kiln's cap: read
            self.end_headers()
            with contextlib.suppress(OSError):
                while not endpoint.stop.wait(DRIP_SECONDS):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    self._count("drip", 1)

        def _drip_headers(self) -> None:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: "
            with contextlib.suppress(OSError):
                self.wfile.write(head)
                self.wfile.flush()
                while not endpoint.stop.wait(SLOW_SECONDS):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    self._count("dripheaders", 1)

        def _slow_page(self, bucket: str, prefix: str) -> None:
            body = _listing(bucket, prefix, 0, False)
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                for byte in body:
                    if endpoint.stop.wait(SLOW_SECONDS):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    self._count("slowpage", 1)

        def _huge_page(self, bucket: str, prefix: str) -> None:
            page = _listing(bucket, prefix, 0, False)
            head, tail = page[:38], page[38:]  # the XML declaration, then the document
            block = b" " * (1 << 20)
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(HUGE_PAGE))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(head)
                left = HUGE_PAGE - len(head) - len(tail)
                while left > 0 and not endpoint.stop.is_set():
                    piece = block[:min(left, len(block))]
                    self.wfile.write(piece)
                    left -= len(piece)
                    self._count("huge", len(piece))
                self.wfile.write(tail)

        def do_GET(self) -> None:
            endpoint.requests.append(Request(self.command, self.path, dict(self.headers)))
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            segments = parts.path.strip("/").split("/")
            if segments[:2] in (["api", "models"], ["api", "datasets"]):
                org = segments[2] if len(segments) > 2 else ""
                if org == "drip":
                    self._drip()
                elif org == "dripheaders":
                    self._drip_headers()
                elif org == "noisy":
                    self._send(500, NOISE, "text/html")
                else:
                    sha = hashlib.sha1("/".join(segments[2:4]).encode()).hexdigest()
                    self._send(200, f'{{"id": "{"/".join(segments[2:4])}", "sha": "{sha}"}}'
                               .encode(), "application/json")
                return
            bucket = segments[0]
            if "uploads" in query:
                self._send(200, b'<?xml version="1.0" encoding="UTF-8"?>'
                           b"<ListMultipartUploadsResult><Bucket>" + bucket.encode()
                           + b"</Bucket><IsTruncated>false</IsTruncated>"
                           b"</ListMultipartUploadsResult>")
                return
            if bucket == "noisy":
                self._send(500, NOISE, "text/html")
                return
            if query.get("list-type") == ["2"] and bucket in ("slowpage", "huge"):
                prefix = (query.get("prefix") or [""])[0]
                (self._slow_page if bucket == "slowpage" else self._huge_page)(bucket, prefix)
                return
            if query.get("list-type") == ["2"]:
                endless = bucket == "endless"
                body = _listing(bucket, (query.get("prefix") or [""])[0], next(pages), endless)
                if endless:
                    self._count("endless", len(body))
                self._send(200, body)
                return
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")

        do_HEAD = do_GET  # noqa: N815

    return Handler


@contextlib.contextmanager
def tenant_endpoint() -> Iterator[TenantEndpoint]:
    endpoint = TenantEndpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(endpoint))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    endpoint.url = f"http://{host!s}:{port}"
    try:
        yield endpoint
    finally:
        endpoint.stop.set()
        server.shutdown()
        server.server_close()
