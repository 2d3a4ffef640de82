"""A small Kubernetes REST client: credentials and JSON over urllib3.

The operator makes a dozen kinds of call; the ``kubernetes`` package would cost ~40 MiB of
generated models to make them (and Kopf imports it, when installed, only to recognise those
models). Credentials come from the pod's ServiceAccount, else from the kubeconfig: a token,
a token file or a client certificate (what Kopf's own login reads too).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(Exception):
    """No usable credentials."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.body = status, reason, body

    @property
    def message(self) -> str:
        """The Status message if the body is one, else the body's start."""
        try:
            return str(json.loads(self.body).get("message", ""))[:300]
        except (ValueError, AttributeError):
            return self.body[:300]


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def in_cluster(root: Path = SERVICE_ACCOUNT) -> Credentials | None:
    """The pod's ServiceAccount, if running in a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT", "443")
    if not host or not (root / "token").exists():
        return None
    host = f"[{host}]" if ":" in host else host
    return Credentials(server=f"https://{host}:{port}", ca_file=str(root / "ca.crt"),
                       token_file=str(root / "token"))


def from_kubeconfig(path: str | None = None) -> Credentials:
    """The current context of ``path`` (else ``$KUBECONFIG``'s first file, else
    ``~/.kube/config``)."""
    path = path or (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0]
    file = Path(path).expanduser()
    try:
        doc = yaml.safe_load(file.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"no in-cluster credentials and no kubeconfig: {error}") from error
    context = _named(doc, "contexts", doc.get("current-context"), "context")
    cluster = _named(doc, "clusters", context.get("cluster"), "cluster")
    user = _named(doc, "users", context.get("user"), "user") if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(f"{file}: exec and auth-provider credentials are not supported: "
                          "use a token or a client certificate (in a pod: its ServiceAccount)")

    def local(key: str) -> str | None:
        value = cluster.get(key) if key == "certificate-authority" else user.get(key)
        return str(file.parent / value) if value else None

    def data(key: str, where: dict[str, Any]) -> str | None:
        value = where.get(f"{key}-data")
        return base64.b64decode(value).decode() if value else None

    cert_file, key_file = local("client-certificate"), local("client-key")
    if user.get("client-certificate-data"):
        cert_file = _private_file(data("client-certificate", user) or "")
    if user.get("client-key-data"):
        key_file = _private_file(data("client-key", user) or "")
    return Credentials(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_file=local("certificate-authority"), ca_data=data("certificate-authority", cluster),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=user.get("token"), token_file=local("tokenFile"),
        cert_file=cert_file, key_file=key_file)


def _named(doc: dict[str, Any], section: str, name: Any, field: str) -> dict[str, Any]:
    for item in doc.get(section) or []:
        if item.get("name") == name:
            return dict(item.get(field) or {})
    raise ConfigError(f"kubeconfig: no {section[:-1]} named {name!r}")


def _private_file(content: str) -> str:
    """urllib3 takes client certificates and keys from files only: a private copy, removed
    when the process exits."""
    fd, path = tempfile.mkstemp(prefix="kiln-kube-")
    with os.fdopen(fd, "w") as out:
        out.write(content)
    atexit.register(Path(path).unlink, missing_ok=True)
    return path


def load() -> Credentials:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    return in_cluster() or from_kubeconfig()


class Client:
    """JSON requests to one API server; blocking, safe to share between threads."""

    TOKEN_TTL = 60.0  # bound ServiceAccount tokens rotate: their file is re-read

    def __init__(self, creds: Credentials, timeout: float = 60.0) -> None:
        self.creds = creds
        self.pool = urllib3.PoolManager(
            maxsize=16, block=False, retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            cert_reqs="CERT_NONE" if creds.insecure else "CERT_REQUIRED",
            ca_certs=creds.ca_file, ca_cert_data=creds.ca_data,
            cert_file=creds.cert_file, key_file=creds.key_file)
        self._token: tuple[str, float] | None = None

    def _bearer(self) -> str | None:
        if self.creds.token:
            return self.creds.token
        if not self.creds.token_file:
            return None
        if self._token is None or time.monotonic() - self._token[1] > self.TOKEN_TTL:
            self._token = (Path(self.creds.token_file).read_text().strip(), time.monotonic())
        return self._token[0]

    def request(self, method: str, path: str, body: Any = None, *,
                query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        """The decoded JSON answer (None if empty); ``ApiError`` for an error status,
        urllib3's errors when the server cannot be reached."""
        headers = {"Accept": "application/json", "Content-Type": content_type,
                   "User-Agent": "kiln"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.creds.server + path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else json.dumps(body).encode()
        response = self.pool.request(method, url, body=payload, headers=headers)
        text = response.data.decode("utf-8", errors="replace")
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", text)
        return json.loads(text) if text else None
