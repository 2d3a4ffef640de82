"""The signing key's Secret, on the real apiserver: created once by whichever replica comes
first, the same key for every later start, never replaced (a chart-templated key would be
generated anew by each ``helm template``, as Argo CD renders)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from kiln.contract import provenance
from kiln.dev.testbed.cluster import Cluster
from kiln.errors import NotFound
from kiln.kube.auth import Credentials
from kiln.kube.client import Client, Kube
from kiln.trust import secret


def _kube(kube: Cluster) -> Kube:
    return Kube(Client(Credentials(str(kube.kubeconfig))))


def test_replicas_starting_together_create_one_key_and_later_starts_keep_it(
        kube: Cluster, namespace: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        keys = set(pool.map(lambda _: secret.ensure(_kube(kube), namespace, "kiln-signing"),
                            range(4)))
    assert len(keys) == 1
    (pem,) = keys
    assert provenance.load_signer(pem).public_key.keyid  # a usable key
    assert secret.ensure(_kube(kube), namespace, "kiln-signing") == pem  # a restart
    stored = client.CoreV1Api(kube.api_client).read_namespaced_secret("kiln-signing", namespace)
    assert base64.b64decode(stored.data["key.pem"]) == pem
    path = secret.provide(_kube(kube), namespace, "kiln-signing")
    assert path.read_bytes() == pem and path.stat().st_mode & 0o077 == 0


def test_a_secret_of_that_name_without_a_key_is_refused_and_left_alone(
        kube: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "kiln-signing"},
                                              "stringData": {"other": "x"}})
    with pytest.raises(NotFound, match=r"has no key\.pem"):
        secret.ensure(_kube(kube), namespace, "kiln-signing")
    assert set(core.read_namespaced_secret("kiln-signing", namespace).data) == {"other"}
