"""Credentials for the API server, one source for kiln's calls and for Kopf's login.

The official client's loaders read them: the pod's ServiceAccount, else the merged
``$KUBECONFIG`` files (token, token file, client certificate, ``exec`` plugins, auth-providers).
On top of them: tokens are renewed shortly before they expire and whenever the API server
answers 401, and the proxy comes from the cluster's ``proxy-url`` or ``HTTPS_PROXY`` (with
``NO_PROXY``), as kubectl does.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import urllib3
from kubernetes import client, config
from kubernetes.config import kube_config

from kiln import __version__
from kiln.errors import AccessDenied

log = logging.getLogger(__name__)

USER_AGENT = f"kiln/{__version__}"
POOL = 32
"""Connections kept to the API server: every reconcile worker and the sweep at once."""
MARGIN_SECONDS = 60.0
"""Renew a token this long before it expires (at most a fifth of its life)."""


@dataclass(frozen=True)
class Login:
    """What Kopf's login needs, from the same credentials as kiln's own calls."""

    server: str
    ca_path: str | None
    insecure: bool
    token: str | None
    certificate_path: str | None
    private_key_path: str | None
    proxy_url: str | None
    expiration: datetime | None


def _jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT (ServiceAccount and OIDC tokens), without verifying it."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _env_proxy(server: str) -> str | None:
    """``HTTPS_PROXY`` for an https server, ``HTTP_PROXY`` for http (Go's rule, not the
    client's, which lets ``HTTP_PROXY`` win for both)."""
    names = ("HTTPS_PROXY", "https_proxy") if server.startswith("https:") else (
        "HTTP_PROXY", "http_proxy")
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class Credentials:
    """The current ``kubernetes.client.ApiClient``; ``refresh()`` makes a new one."""

    def __init__(self, kubeconfig: str | None = None, user_agent: str = USER_AGENT) -> None:
        self._kubeconfig = kubeconfig
        self.user_agent = user_agent
        self._lock = threading.Lock()
        self._api, self._expiry, self._loaded, self.proxy = self._load()

    def _load(self) -> tuple[client.ApiClient, datetime | None, float, str | None]:
        cfg = client.Configuration()
        expiry: datetime | None = None
        proxy_url: str | None = None
        try:
            if self._kubeconfig is not None:
                raise config.ConfigException("a kubeconfig was named")
            # Its own hook re-reads the (rotating, bound) token file every minute.
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            path = self._kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            try:
                loader = kube_config._get_kube_config_loader(filename=path,
                                                            persist_config=False)
                loader.load_and_set(cfg)
            except (config.ConfigException, OSError) as error:
                raise AccessDenied(f"no in-cluster credentials, and kubeconfig {path}: "
                                   f"{error}") from error
            expiry = loader.__dict__.get("expiry")
            proxy_url = loader._cluster.safe_get("proxy-url")  # not read by the client
            # kiln renews tokens itself: the client's hook would re-run an exec plugin on
            # every request once within 5 minutes of expiry, from many threads at once.
            cfg.refresh_api_key_hook = None
        token = self._token(cfg)
        if expiry is None and token:
            expiry = _jwt_expiry(token)
        if expiry is not None and expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        host = urlsplit(cfg.host).hostname or ""
        bypass = bool(no_proxy) and proxy_bypass_environment(host, {"no": no_proxy})
        cfg.proxy = None if bypass else proxy_url or _env_proxy(cfg.host)
        cfg.no_proxy = None
        cfg.connection_pool_maxsize = POOL  # the client's default is 5 per CPU
        # No urllib3 retries: its default resends a PUT or DELETE after a read timeout (and any
        # request after a connect error) up to a minute later, past the Lease's fence, which
        # is checked once per request kiln sends. kiln's callers retry with their backoff.
        cfg.retries = urllib3.util.Retry(total=0, redirect=False)
        api = client.ApiClient(cfg)
        api.user_agent = self.user_agent
        return api, expiry, time.time(), cfg.proxy

    @staticmethod
    def _token(cfg: client.Configuration) -> str | None:
        header = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        return str(header).removeprefix("Bearer ").strip() if header else None

    def _due(self) -> bool:
        if self._expiry is None:
            return False
        life = self._expiry.timestamp() - self._loaded
        return time.time() >= self._expiry.timestamp() - min(MARGIN_SECONDS, life / 5)

    def api(self) -> client.ApiClient:
        """The client to call with, renewed first when its token is about to expire."""
        if self._due():
            self.refresh(self._api)
        return self._api

    def refresh(self, failed: client.ApiClient | None = None) -> client.ApiClient:
        """Load the credentials again (an exec plugin runs again); with ``failed``, only if
        no other thread renewed them since that client failed."""
        with self._lock:
            if failed is None or failed is self._api:
                self._api, self._expiry, self._loaded, self.proxy = self._load()
                log.info("Credentials renewed%s", f"; they expire at {self._expiry:%H:%M:%S}"
                         if self._expiry else "")
            return self._api

    def login(self, *, renew: bool = False) -> Login:
        """Kopf's connection info: the current credentials, renewed first if due (or if
        ``renew``: Kopf asks again after a 401)."""
        api = self.refresh(self._api) if renew or self._due() else self._api
        cfg: Any = api.configuration
        return Login(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                     token=self._token(cfg), certificate_path=cfg.cert_file,
                     private_key_path=cfg.key_file, proxy_url=cfg.proxy,
                     expiration=self._expiry)
