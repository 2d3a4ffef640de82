"""The operator's signing key kept in a Secret it creates itself (``KILN_SIGNING_SECRET``):
made once, when the Secret does not exist, and never replaced. A key templated by the chart
would be generated anew by every ``helm template`` (Argo CD renders that way: Helm's
``lookup`` finds nothing there), and a new key makes every stored engine untrusted."""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kiln import __version__
from kiln.errors import NotFound
from kiln.kube.client import Kube

log = logging.getLogger(__name__)
KEY = "key.pem"


def _new_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure(kube: Kube, namespace: str, name: str) -> bytes:
    """The PEM key in Secret ``namespace/name``; the Secret is created with a new ECDSA P-256
    key first if it does not exist (replicas racing: the first create wins, the others read
    it). A Secret without ``key.pem`` is the user's mistake: refused, never overwritten."""
    for _ in range(2):
        try:
            data = kube.secret_data(namespace, name)
        except NotFound:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": namespace,
                                 "labels": {"app.kubernetes.io/managed-by": "kiln"},
                                 "annotations": {"kiln.dev/created-by": f"kiln {__version__}"}},
                    "data": {KEY: base64.b64encode(_new_key()).decode()}}
            if kube.create_secret(namespace, body):
                log.info("created signing key Secret %s/%s", namespace, name)
            continue
        if KEY not in data:
            raise NotFound(f"Secret {namespace}/{name} has no {KEY}: kiln does not replace it; "
                           f"add the key or delete the Secret to have kiln create one")
        return data[KEY].encode()
    raise NotFound(f"Secret {namespace}/{name} could not be read after creating it")


def provide(kube: Kube, namespace: str, name: str) -> Path:
    """``ensure`` the key and write it to one private file (overwritten at each start, never
    a copy per start), for ``KILN_SIGNING_KEY_FILE``."""
    pem = ensure(kube, namespace, name)
    path = Path(tempfile.gettempdir()) / f"kiln-signing-{os.getuid()}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path
