"""Fixtures for the store and source tests: an S3 endpoint that checks credentials, and a tiny
Hugging Face hub. Both are real HTTP servers on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

import boto3
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class AuthS3:
    """moto's server with authentication on: real keys, a bucket, a user without rights."""

    endpoint: str
    bucket: str
    good: dict[str, str]
    """Keys of a user allowed ``s3:*``."""
    powerless: dict[str, str]
    """Keys of a user with no policy at all."""


@pytest.fixture(scope="session")
def auth_s3() -> Iterator[AuthS3]:
    """A separate moto server (its own process: authentication is a process-wide setting)."""
    port = free_port()
    env = os.environ | {"AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto did not start"
                time.sleep(0.1)
        setup: Any = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam, s3 = boto3.client("iam", **setup), boto3.client("s3", **setup)
        keys = {}
        for user in ("builder", "nobody"):
            iam.create_user(UserName=user)
            made = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {"AWS_ACCESS_KEY_ID": made["AccessKeyId"],
                          "AWS_SECRET_ACCESS_KEY": made["SecretAccessKey"],
                          "AWS_REGION": "us-east-1"}
        iam.put_user_policy(UserName="builder", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3.create_bucket(Bucket="guarded")
        s3.put_object(Bucket="guarded", Key="weights/config.json", Body=b"{}")
        # from now on every request is authenticated
        urlopen(Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                        headers={"Content-Type": "text/plain"}), timeout=10).read()
        yield AuthS3(endpoint, "guarded", keys["builder"], keys["nobody"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class FakeHub:
    """What the hub serves: repos by name, each with revisions (name → commit sha) and files."""

    url: str = ""
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    private: dict[str, str] = field(default_factory=dict)
    """Repo → the token that may read it."""
    down: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(method, path, Authorization header) of every request."""
    kinds: list[str] = field(default_factory=list)
    """``model`` or ``dataset``: the kind of repository each request was for."""

    def add(self, repo: str, files: dict[str, bytes], revisions: tuple[str, ...] = ("main",)
            ) -> str:
        """A repo with one commit holding ``files``; returns the commit sha."""
        sha = hashlib.sha1(repr((repo, sorted(files.items()))).encode()).hexdigest()
        entry = self.repos.setdefault(repo, {"revisions": {}, "commits": {}})
        entry["commits"][sha] = files
        for name in (*revisions, sha):
            entry["revisions"][name] = sha
        return sha


def _hub_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
                  ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(),
                       {"X-Error-Code": code, "X-Error-Message": message,
                        "Content-Type": "application/json"})

        def _repo(self, repo: str) -> dict[str, Any] | None:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if repo in hub.gated:
                self._error(403, "GatedRepo", "Access to this model is restricted")
                return None
            if repo not in hub.repos or (repo in hub.private and hub.private[repo] != token):
                self._error(401 if repo in hub.private else 404, "RepoNotFound",
                            "Repository not found")
                return None
            return hub.repos[repo]

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Authorization")))
            if hub.down:
                self._send(503, b"hub down for maintenance")
                return
            parts = path.strip("/").split("/")
            hub.kinds.append("dataset" if "datasets" in parts[:2] else "model")
            if parts[:1] == ["datasets"]:  # /datasets/<org>/<name>/resolve/...
                parts = parts[1:]
            if parts[:2] in (["api", "models"], ["api", "datasets"]) and len(parts) >= 4:
                # /api/models/<org>/<name>[/revision/<rev>] and /api/models/<org>/<name>/tree/<rev>
                repo, verb = "/".join(parts[2:4]), (parts[4:5] or ["revision"])[0]
                revision = "/".join(parts[5:]) or "main"
                entry = self._repo(repo)
                if entry is None:
                    return
                sha = entry["revisions"].get(revision)
                if sha is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                files = entry["commits"][sha]
                if verb == "tree":
                    tree = [{"type": "file", "path": name, "size": len(data),
                             "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in sorted(files.items())]
                    self._send(200, json.dumps(tree).encode(),
                               {"Content-Type": "application/json"})
                    return
                info = {"id": repo, "modelId": repo, "sha": sha, "private": repo in hub.private,
                        "siblings": [{"rfilename": name} for name in sorted(files)]}
                self._send(200, json.dumps(info).encode(),
                           {"Content-Type": "application/json"})
                return
            if len(parts) >= 5 and parts[2] == "resolve":  # /<org>/<name>/resolve/<rev>/<file>
                repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                entry = self._repo(repo)
                if entry is None:
                    return
                sha = entry["revisions"].get(revision)
                if sha is None or name not in entry["commits"][sha]:
                    self._error(404, "EntryNotFound", f"{name} not found")
                    return
                data = entry["commits"][sha][name]
                self._send(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                       "X-Repo-Commit": sha,
                                       "Content-Type": "application/octet-stream"})
                return
            self._send(404, b"no such endpoint")

        do_HEAD = do_GET  # noqa: N815

    return Handler


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A Hugging Face hub on loopback (model info and file downloads); ``HF_ENDPOINT`` points
    at it and the hub's local cache is a temp dir."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _hub_handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    hub.url = f"http://{host!s}:{port}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


class CuttingProxy:
    """An HTTP proxy in front of an S3 endpoint that breaks a chosen download part way:
    ``cut(path, range)`` is asked for each GET; a True answer sends the headers and half the
    body, then closes the connection (as a network that drops)."""

    def __init__(self, upstream: str, cut: Any) -> None:
        self.upstream = urlsplit(upstream)
        self.cut, self.cuts = cut, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                import http.client

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(proxy.upstream.hostname or "127.0.0.1",
                                                  proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                with proxy.lock:
                    cut = (self.command == "GET" and answer.status in (200, 206)
                           and len(data) > 1 and proxy.cut(self.path, self.headers.get("Range")))
                    proxy.cuts += cut
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> CuttingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
