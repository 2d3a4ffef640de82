"""Fault tests: a control plane of their own (they stop its apiserver, delete its nodes and
kill its operator), the operator as a real process, builders run locally, and the engine
store reached by the builders through a proxy that can go down.

The cluster and the operator here are separate from the e2e ones: killing an operator that
other tests rely on, or stopping their apiserver, would make those tests fail for nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.faults import S3Proxy
from e2e.support import Operator, cluster_of_its_own, create_buckets
from faults.support import ENGINES, MODELS, Switch
from kiln.dev import signing
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed.cluster import Cluster, free_port
from kiln.dev.testbed.localproc import LABEL, LocalProcessRunner


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Overrides the suite's cluster: the fault tests break theirs."""
    with cluster_of_its_own(tmp_path_factory.mktemp("faults-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def buckets(s3_endpoint: str) -> None:
    create_buckets(s3_endpoint, ENGINES, MODELS)


@pytest.fixture(scope="session")
def store_switch() -> Switch:
    return Switch()


@pytest.fixture(scope="session")
def store_proxy(s3_endpoint: str, store_switch: Switch) -> Iterator[S3Proxy]:
    """The builders' S3 endpoint: moto behind a proxy that refuses what ``store_switch`` says."""
    with S3Proxy(s3_endpoint, store_switch) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def operator(kube: Cluster, s3_endpoint: str, buckets: None, store_proxy: S3Proxy,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """``kiln run`` for the fault tests; it reads the store directly, builders via the proxy."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "KILN_DEFAULT_STORE": f"s3://{ENGINES}/",
        "KILN_BUILDER_IMAGE": "kiln-builder:test",
        "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": store_proxy.url}),
        "KILN_WARMUP_RUNTIME": "none",  # artifact sets are the field tier's (test_artifacts)
        "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
        "KILN_WEIGHTS_CHECK_SECONDS": "2",
        "KILN_REBUILD_SETTLE": "0s",  # the tests' weights are uploaded just before
        "KILN_METRICS_PORT": str(free_port()),  # the tests count its passes
        "KILN_SIGNING_KEY_FILE": str(signing.write_key(
            tmp_path_factory.mktemp("signing") / "key.pem")),
        "KILN_VERIFY_SECONDS": "10",
        "KILN_RESYNC_SECONDS": "5",
        "KILN_ALLOWED_BUILDER_IMAGES": json.dumps(["kiln-builder", "registry.test/kiln/"]),
    }
    op = Operator(kube, env, tmp_path_factory.mktemp("faults-operator") / "kiln.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def builders(kube: Cluster, store_proxy: S3Proxy) -> Iterator[LocalProcessRunner]:
    runner = LocalProcessRunner(kube.api_client, extra_env={"AWS_ENDPOINT_URL": store_proxy.url})
    with runner:
        yield runner


@pytest.fixture
def weights(s3_client: Any, buckets: None, namespace: str, tmp_path: Path) -> str:
    """A tiny real checkpoint of this test's own (engines are content-addressed)."""
    seed = int.from_bytes(os.urandom(4), "big")
    return checkpoints.upload(s3_client, checkpoints.write(tmp_path / "ckpt", seed=seed),
                              MODELS, f"{namespace}/llama/")
