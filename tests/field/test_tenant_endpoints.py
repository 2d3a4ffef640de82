"""Endpoints a tenant chooses: bounded, and never handed the operator's own credentials.

A tenant's Secret names its own S3 endpoint or hub (a server this test starts): a listing that
never ends and a hub that drips one byte at a time hold neither the operator's memory nor the
other tenants' reconciles; each says in status what limit it hit. The operator's own key id
and HF token (in its environment) never arrive at the tenant's server, and a tenant server's
error body is not reflected into status beyond a short, plain message.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from chart.support import serve
from e2e.support import Operator
from field.conftest import OPERATOR_HF_TOKEN, OPERATOR_KEY_ID
from field.support import UNSCHEDULABLE, create, engine_build, get, is_ready, jobs
from field.tenant_endpoint import HUGE_PAGE, TenantEndpoint, tenant_endpoint
from kiln import EB_PLURAL
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = [pytest.mark.usefixtures("operator", "builders"), pytest.mark.timeout(420)]
TARGET = [{"gpu": "H100-SXM"}]
MEMORY_LIMIT_MIB = 256
"""The chart's memory request for the operator (``charts/kiln/values.yaml``): the operator
stays within what it asks for, well under its 1 GiB limit."""
MESSAGE_LIMIT = 1024
"""A condition message that quotes a tenant's server says so briefly."""


def calibrating(dataset: str) -> dict[str, Any]:
    """A build that calibrates on ``dataset``."""
    return {"backend": "tensorrt", "quantization": {
        "algo": "fp8", "kvCache": "fp8", "calibration": {"dataset": dataset, "samples": 1}}}


@pytest.fixture
def endpoint() -> Iterator[TenantEndpoint]:
    with tenant_endpoint() as found:
        yield found


@pytest.fixture
def hub() -> Iterator[TenantEndpoint]:
    """A second tenant's server (kiln counts calls in flight per endpoint)."""
    with tenant_endpoint() as found:
        yield found


@pytest.fixture
def tenants(kube: Cluster) -> Iterator[list[str]]:
    core = client.CoreV1Api(kube.api_client)
    names = [f"tenant-{role}-{os.urandom(2).hex()}" for role in ("endless", "drip", "other")]
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
        serve(kube, name, "kiln", "kiln-system")
    yield names
    for name in names:
        core.delete_namespace(name, propagation_policy="Background")


def secret(kube: Cluster, namespace: str, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(kube.api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def said(kube: Cluster, namespace: str, name: str) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message) of the EngineBuild's conditions."""
    status = get(kube, namespace, EB_PLURAL, name).get("status") or {}
    return {c["type"]: (c["status"], c.get("reason", ""), c.get("message", ""))
            for c in status.get("conditions", [])}


def rss_mib(operator: Operator) -> float:
    assert operator.process is not None
    for line in Path(f"/proc/{operator.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_endless_listing_and_a_dripping_hub_leave_other_tenants_on_time(
        kube: Cluster, namespace: str, weights: str, operator: Operator,
        endpoint: TenantEndpoint, hub: TenantEndpoint, tenants: list[str]) -> None:
    endless, drip, other = tenants
    create(kube, namespace, engine_build("warm", weights, targets=TARGET))
    eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "warm")) or None, timeout=120)

    secret(kube, endless, "creds", {"AWS_ENDPOINT_URL": endpoint.url})
    secret(kube, drip, "creds", {"HF_ENDPOINT": hub.url})
    model = {"credentialsSecret": "creds"}
    create(kube, endless, *(engine_build(f"endless-{i}", f"s3://endless/m{i}/", model=model,
                                         targets=TARGET) for i in range(6)))
    create(kube, drip, *(engine_build(f"drip-{i}", f"hf://drip/m{i}", model=model,
                                      targets=TARGET) for i in range(6)))
    eventually(lambda: endpoint.served.get("endless") or hub.served.get("drip"), timeout=30)

    # Another tenant's build of the same weights gets its Job meanwhile (its own: keys name
    # the namespace a build runs in).
    create(kube, other, engine_build("twin", weights, targets=TARGET))
    eventually(lambda: jobs(kube, other) or None, timeout=60)

    # Each bad source says which limit it hit, and the operator's memory stays bounded.
    def limited(ns: str, prefix: str, words: str) -> dict[str, tuple[str, str, str]] | None:
        for i in range(6):
            found = said(kube, ns, f"{prefix}-{i}")
            if any(words in message for _, _, message in found.values()):
                return found
        return None

    stalled = eventually(lambda: limited(endless, "endless", "objects under"), timeout=180)
    assert stalled["Stalled"][0] == "True", stalled  # the tenant's input: not a retry
    slow = eventually(lambda: limited(drip, "drip", "did not answer within"), timeout=180)
    assert slow["Reconciling"][0] == "True", slow  # a slow hub may recover: retried
    assert rss_mib(operator) < MEMORY_LIMIT_MIB


def test_the_operators_credentials_never_reach_a_tenants_server(
        kube: Cluster, namespace: str, endpoint: TenantEndpoint) -> None:
    secret(kube, namespace, "s3", {"AWS_ENDPOINT_URL": endpoint.url})
    secret(kube, namespace, "hub", {"HF_ENDPOINT": endpoint.url})
    create(kube, namespace,
           engine_build("bucket", "s3://tenant/llama/", targets=UNSCHEDULABLE,
                        model={"credentialsSecret": "s3"}),
           engine_build("repo", "hf://acme/llama", targets=UNSCHEDULABLE,
                        model={"credentialsSecret": "hub"}),
           engine_build("noisy", "hf://noisy/llama", targets=UNSCHEDULABLE,
                        model={"credentialsSecret": "hub"}),
           # calibration data on the tenant's endpoints: read (its identity is a key input)
           # with the model's credentials Secret, as the weights are
           engine_build("hub-calib", "hf://acme/llama", targets=UNSCHEDULABLE,
                        model={"credentialsSecret": "hub"}, build=calibrating("hf://acme/calib")),
           engine_build("s3-calib", "s3://tenant/llama/", targets=UNSCHEDULABLE,
                        model={"credentialsSecret": "s3"},
                        build=calibrating("s3://tenant/calib/")))

    def calibrated(name: str) -> bool:
        """The calibration data's identity was read: the EngineBuild has a key."""
        status = get(kube, namespace, EB_PLURAL, name).get("status") or {}
        return any(e.get("key") for e in status.get("engines") or [])

    def identity(name: str) -> str:
        status = get(kube, namespace, EB_PLURAL, name).get("status") or {}
        return str((status.get("weights") or {}).get("identity") or "")

    eventually(lambda: identity("bucket") and identity("repo"), timeout=60)
    eventually(lambda: calibrated("hub-calib") and calibrated("s3-calib"), timeout=60)
    eventually(lambda: "Reconciling" in said(kube, namespace, "noisy"), timeout=60)

    seen = endpoint.credentials_seen()
    assert endpoint.requests, "the tenant's server was asked"
    assert any("/api/datasets/acme/calib" in r.path for r in endpoint.requests)
    assert any(r.path.startswith("/tenant?") and "calib" in r.path for r in endpoint.requests)
    assert not [c for c in seen if OPERATOR_KEY_ID in c or OPERATOR_HF_TOKEN in c], seen
    for _, _, message in said(kube, namespace, "noisy").values():
        assert len(message) <= MESSAGE_LIMIT and "<script>" not in message, message


def limited(kube: Cluster, namespace: str, name: str,
            words: str) -> dict[str, tuple[str, str, str]] | None:
    """The EngineBuild's conditions once one of their messages says ``words``."""
    found = said(kube, namespace, name)
    return found if any(words in message for _, _, message in found.values()) else None


def test_headers_or_a_page_that_drip_are_cut_off_and_other_tenants_stay_on_time(
        kube: Cluster, weights: str, operator: Operator,
        endpoint: TenantEndpoint, tenants: list[str]) -> None:
    """A hub that drips its headers and a listing page that drips its body, one byte a second
    each (every read answers within its timeout): each call ends at its deadline and says so;
    another tenant's build gets its Job meanwhile; the operator is the same process."""
    _, drip, other = tenants
    assert operator.process is not None
    pid = operator.process.pid

    secret(kube, drip, "creds", {"AWS_ENDPOINT_URL": endpoint.url, "HF_ENDPOINT": endpoint.url})
    model = {"credentialsSecret": "creds"}
    create(kube, drip, engine_build("headers", "hf://dripheaders/m", model=model, targets=TARGET),
           engine_build("page", "s3://slowpage/m/", model=model, targets=TARGET))
    eventually(lambda: endpoint.served.get("dripheaders") and endpoint.served.get("slowpage"),
               timeout=60)

    create(kube, other, engine_build("twin", weights, targets=TARGET))
    eventually(lambda: jobs(kube, other) or None, timeout=60)

    for name in ("headers", "page"):
        slow = eventually(lambda n=name: limited(kube, drip, n, "did not answer within"),
                          timeout=150)
        assert slow["Reconciling"][:2] == ("True", "SourceTooSlow"), slow  # retried
    assert operator.process.poll() is None and operator.process.pid == pid


def test_an_oversized_listing_page_is_refused_unread(
        kube: Cluster, operator: Operator, endpoint: TenantEndpoint,
        tenants: list[str]) -> None:
    """One listing page larger than the operator's memory request: the build is refused with
    its reason, and the operator's memory stays under that request while it is."""
    tenant = tenants[0]
    secret(kube, tenant, "creds", {"AWS_ENDPOINT_URL": endpoint.url})
    create(kube, tenant, engine_build("huge", "s3://huge/m/", model={"credentialsSecret": "creds"},
                                      targets=TARGET))

    def refused() -> dict[str, tuple[str, str, str]] | None:
        assert rss_mib(operator) < MEMORY_LIMIT_MIB
        return limited(kube, tenant, "huge", "larger than")

    found = eventually(refused, timeout=120)
    assert found["Stalled"][:2] == ("True", "SourceTooLarge"), found  # the tenant's input
    assert endpoint.served.get("huge", 0) < HUGE_PAGE // 2, endpoint.served


def test_one_tenants_dripping_endpoints_leave_another_tenants_endpoint_its_share(
        kube: Cluster, endpoint: TenantEndpoint, hub: TenantEndpoint,
        tenants: list[str]) -> None:
    """Tenant A's builds read from hubs of its own that drip their headers; tenant B's build
    reads from an endpoint of its own that answers: B's build gets its Job meanwhile."""
    a, _, b = tenants
    with tenant_endpoint() as third, tenant_endpoint() as own:
        hubs = [endpoint, hub, third]
        for i, server in enumerate(hubs):
            secret(kube, a, f"hub-{i}", {"HF_ENDPOINT": server.url})
        create(kube, a, *(engine_build(f"drip-{i}", f"hf://dripheaders/m{i}", targets=TARGET,
                                       model={"credentialsSecret": f"hub-{i % len(hubs)}"})
                          for i in range(6)))
        # A's calls are dripping on at least two of its hubs (its share, once it has one).
        eventually(lambda: sum(1 for s in hubs if s.served.get("dripheaders")) >= 2,
                   timeout=60)

        secret(kube, b, "own", {"HF_ENDPOINT": own.url})
        create(kube, b, engine_build("mine", "hf://acme/llama", targets=TARGET,
                                     model={"credentialsSecret": "own"}))
        eventually(lambda: jobs(kube, b) or None, timeout=120)
        assert own.requests, "B's endpoint was read"
