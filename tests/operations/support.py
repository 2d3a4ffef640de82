"""What the field tests share: the operator's namespace, buckets, a CONNECT proxy, an exec
credential plugin, reading operators' logs."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

from e2e.support import Operator

OPERATOR_NAMESPACE = "kiln-system"
ENGINES = "field-engines"
MODELS = "field-models"


class ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTP CONNECT proxy on loopback; ``hosts`` maps names only it can resolve (the
    apiserver's ``kubernetes.default.svc`` SAN) to addresses. ``tunnels`` counts CONNECTs."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.tunnels: list[str] = []
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Tunnel(socketserver.StreamRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        method, target, _ = [*line.split(), "", "", ""][:3]
        if method != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        self.server.tunnels.append(target)
        try:
            upstream = socket.create_connection((self.server.hosts.get(host, host), int(port)),
                                                timeout=10)
        except OSError:
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        with upstream:
            _pump(self.connection, upstream)


def _pump(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    b.settimeout(None)
    while True:
        ready, _, _ = select.select([a, b], [], [], 600)
        if not ready:
            return
        for sock in ready:
            data = b""
            with contextlib.suppress(OSError):
                data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


EXEC_PLUGIN = '''\
"""An exec credential plugin (as EKS', GKE's, AKS' are): a ServiceAccount token bound to a
Secret of its own, said to expire after $KILN_TEST_TTL seconds (the test deletes the Secret
then: the token stops working)."""
import json, os, ssl, time, urllib.request, uuid
from datetime import datetime, timedelta, timezone

env = os.environ
ctx = ssl.create_default_context(cafile=env["KILN_TEST_CA"])
ctx.load_cert_chain(env["KILN_TEST_CERT"], env["KILN_TEST_KEY"])


def call(path, body):
    request = urllib.request.Request(env["KILN_TEST_SERVER"] + path, method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        return json.load(response)


ns, account = env["KILN_TEST_NAMESPACE"], env["KILN_TEST_ACCOUNT"]
name = "exec-token-" + uuid.uuid4().hex[:8]
secret = call(f"/api/v1/namespaces/{ns}/secrets",
              {"metadata": {"name": name,
                            "labels": {"kiln-test/exec-token": env["KILN_TEST_RUN"]}}})
token = call(f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
             {"spec": {"expirationSeconds": 600, "boundObjectRef": {
                 "kind": "Secret", "apiVersion": "v1", "name": name,
                 "uid": secret["metadata"]["uid"]}}})["status"]["token"]
expires = datetime.now(timezone.utc) + timedelta(seconds=float(env["KILN_TEST_TTL"]))
with open(env["KILN_TEST_RUNS"], "a") as runs:
    runs.write(f"{time.time():.3f} {name}\\n")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token,
                             "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
'''


def error_lines(operator: Operator, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The operator's ERROR lines (with what follows), bar ``ignore``d ones."""
    lines = operator.log().splitlines()
    return ["\n".join(lines[i:i + 12]) for i, line in enumerate(lines)
            if "[ERROR" in line and not any(text in line for text in ignore)]


@contextlib.contextmanager
def running(operator: Operator) -> Iterator[Operator]:
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
