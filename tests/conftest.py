"""Fixtures shared by the whole suite: a real S3 endpoint (moto's server), the test bed; the
order the suite runs in, and how long a control plane lives.

Tiers are the directories under ``tests/``: ``unit`` runs first, then the tiers that need no
control plane, then the cluster tiers, cheapest first, so a broken unit is seen in a minute.
Each cluster tier starts its control plane (a ``kube`` fixture: the suite's, or its own) and
whatever depends on it (its operator, its builders); all of it stops as the run leaves the
tier, so one process runs at most one tier's control plane and operator at a time.

Run by pytest-xdist (``./dev test``: ``-n`` workers), each cluster tier is one unit of work
(``TierScheduling``), run whole by one worker in the order above (its session fixtures once,
the tests that restart its apiserver last); the tiers mostly wait on their apiservers, so
several run at once even on 2 cores, the longest first: unit tests, then the cluster tiers
from the longest, then the tiers without a control plane filling the gaps.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kiln.dev.testbed.cluster import Cluster, running
from kiln.dev.testbed.s3 import moto_server

TESTS = Path(__file__).resolve().parent
FIRST = ("unit",)
CLUSTER_TIERS = ("cluster", "chart", "e2e", "operations", "field", "faults")
"""The tiers that start a control plane, in the order they run (after every other tier):
the cheapest first (on 2 cores: about 40 s, 2, 3.5, 4, 6.5 and 7 minutes). Under xdist the
reverse, right after ``unit``: the longest tier starts first, the other tiers fill the gaps."""
LAST_IN_TIER = "restarts_apiserver"
"""The marker of tests that stop their tier's apiserver: they run after the tier's others,
the longest outage (the marker's ``down``, in seconds) last. For a minute or two after an
outage the cluster's own clients (scheduler, controllers, kwok) back off before they watch
again, and a test that starts then waits on them: the watch re-list test took 32 s before the
apiserver restart test, 80 s after it."""


def tier(item: pytest.Item) -> str:
    """The directory under ``tests/`` that ``item`` is in ("" outside it)."""
    path = item.path.resolve()
    return path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""


def _rank(item: pytest.Item, distributed: bool) -> tuple[int, str, float]:
    name = tier(item)
    if name in FIRST:
        group = 0
    elif name in CLUSTER_TIERS:
        index = CLUSTER_TIERS.index(name)
        group = 1 + (len(CLUSTER_TIERS) - index if distributed else 1 + index)
    else:
        group = 1 + len(CLUSTER_TIERS) + 1 if distributed else 1
    outage = item.get_closest_marker(LAST_IN_TIER)
    return group, name, -1.0 if outage is None else float(outage.kwargs.get("down", 0.0))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, cluster tiers last (under xdist: right after unit, the longest
    first); each tier's tests together, in the order they were collected, but for those that
    restart the apiserver: last in their tier, the longest outage last."""
    distributed = hasattr(config, "workerinput")  # set on xdist's workers only
    items.sort(key=lambda item: _rank(item, distributed))  # stable: collection order in a rank


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under xdist: each cluster tier one unit of work, every other test one of its own."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        """A worker takes a cluster tier whole, in the order collected, and runs nothing else
        meanwhile: one control plane and operator per tier, stopped as it leaves the tier.
        (xdist's own ``loadgroup`` marks no longer reach pytest 9's node ids.)"""

        def _split_scope(self, nodeid: str) -> str:
            path = (config.rootpath / nodeid.split("::", maxsplit=1)[0]).resolve()
            name = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
            return f"tier:{name}" if name in CLUSTER_TIERS else nodeid

    return TierScheduling(config, log)


class ControlPlanes:
    """Stops each tier's control plane as the run leaves the tier.

    A plugin of its own, not conftest hooks: pytest asks a conftest's hooks only about nodes
    under its directory, and session fixtures are set up for the session, above it.
    """

    def __init__(self) -> None:
        self.running: dict[pytest.FixtureDef[Any], pytest.FixtureRequest] = {}

    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any],
                             request: pytest.FixtureRequest) -> None:
        """Note every control plane started (a tier's ``kube``)."""
        if fixturedef.argname == "kube":
            self.running[fixturedef] = request

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Iterator[None]:
        """Once the test's own fixtures are gone: if the next test is in another tier (or
        there is none), stop the control planes running, and with each what depends on it
        (pytest tears a fixture's dependents down first); the next tier starts its own."""
        try:
            return (yield)
        finally:
            if nextitem is None or tier(nextitem) != tier(item):
                self.stop()

    def stop(self) -> None:
        errors = []
        for fixturedef, request in list(self.running.items()):
            del self.running[fixturedef]
            try:
                fixturedef.finish(request)  # type: ignore[arg-type]  # it is a SubRequest
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


def pytest_configure(config: pytest.Config) -> None:
    # One fault seed per run, chosen before xdist starts its workers (they inherit the
    # environment), so every worker collects the same parametrized test.
    os.environ.setdefault("KILN_FAULT_SEED", str(random.randrange(1 << 30)))
    if not config.pluginmanager.has_plugin("kiln-control-planes"):
        config.pluginmanager.register(ControlPlanes(), "kiln-control-planes")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 over real HTTP on a free loopback port, for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A plain boto3 client for that endpoint (for arranging and inspecting state)."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, versioned bucket named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-") + "-" + os.urandom(3).hex()
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The test bed: real etcd, apiserver, controller-manager, scheduler and kwok GPU pools."""
    with running(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def namespace(kube: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client)
    name = ("t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower()))[:50]
    name = name.strip("-") + "-" + os.urandom(2).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")
