"""One tenant cannot stall the rest: EngineBuilds whose weights endpoint accepts connections
and never answers hold a few reconcile workers at most; another namespace's EngineBuild is
Ready within seconds meanwhile."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client

from chart.support import serve
from field.support import conditions, create, engine_build, get, is_ready
from kiln import EB_PLURAL
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
TARGET = [{"gpu": "H100-SXM"}]


@dataclass(frozen=True)
class BlackHole:
    """An HTTP endpoint that accepts every connection and never answers."""

    url: str
    held: list[socket.socket]
    """The connections it has accepted."""


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    server = socket.create_server(("127.0.0.1", 0), backlog=512)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield BlackHole(f"http://127.0.0.1:{server.getsockname()[1]}", held)
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def other_namespaces(kube: Cluster) -> Iterator[list[str]]:
    core = client.CoreV1Api(kube.api_client)
    names = [f"tenant-{role}-{os.urandom(2).hex()}" for role in ("hung", "healthy")]
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
        serve(kube, name, "kiln", "kiln-system")
    yield names
    for name in names:
        core.delete_namespace(name, propagation_policy="Background")


def test_fifty_builds_at_a_hung_endpoint_do_not_delay_another_namespace(
        kube: Cluster, namespace: str, weights: str, black_hole: BlackHole,
        other_namespaces: list[str]) -> None:
    hung, healthy = other_namespaces
    create(kube, namespace, engine_build("warm", weights, targets=TARGET))
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "warm")) or None, timeout=120)

    client.CoreV1Api(kube.api_client).create_namespaced_secret(hung, {
        "metadata": {"name": "creds"},
        "data": {"AWS_ENDPOINT_URL": base64.b64encode(black_hole.url.encode()).decode()}})
    create(kube, hung, *(engine_build(f"hung-{i}", "s3://hung/llama/", targets=TARGET,
                                      model={"credentialsSecret": "creds"})
                         for i in range(50)))
    # They are all being reconciled, and the first read hangs (its answer never comes).
    eventually(lambda: black_hole.held, timeout=30)
    create(kube, healthy, engine_build("twin", weights, targets=TARGET))
    eventually(lambda: is_ready(get(kube, healthy, EB_PLURAL, "twin")) or None, timeout=10)
    # The hung ones say so, and back off: Reconciling, not Stalled.
    some = get(kube, hung, EB_PLURAL, "hung-7")
    assert conditions(some).get("Reconciling", ("",))[0] == "True", some.get("status")
