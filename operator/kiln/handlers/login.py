"""Kopf logs in with kiln's own credentials (``kiln.kube.auth``): one credential path, so
exec plugins, auth-providers and proxies work for its watches as for kiln's calls."""

from __future__ import annotations

from typing import Any

import kopf

from kiln.handlers import context
from kiln.kube.auth import Login

_given: list[Login] = []


@kopf.on.login(retries=3, backoff=1)
def login(**_: Any) -> kopf.ConnectionInfo:
    """The current credentials; renewed first when Kopf asks again for the same ones (it got
    a 401 with them) or when they are about to expire."""
    found = context.credentials().login()
    if _given and found == _given[-1]:
        found = context.credentials().login(renew=True)
    _given[:] = [found]
    return kopf.ConnectionInfo(
        server=found.server, ca_path=found.ca_path, insecure=found.insecure,
        token=found.token, certificate_path=found.certificate_path,
        private_key_path=found.private_key_path, proxy_url=found.proxy_url,
        expiration=found.expiration, priority=100)
