"""Field tests: kiln as users run it (exec-plugin kubeconfigs, proxies, two replicas, a store
shared by two clusters), on a control plane of their own, operators as real processes.

Each test starts its own operators, watching only its own namespace and campaigning for a
Lease of its own, so the tests can run in parallel; durations are short (15 s tokens, a 4 s
Lease) through the settings users have too.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from chart.support import install_rbac
from e2e.support import ROOT
from kiln.dev import signing
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed.cluster import Cluster, running
from kiln.dev.testbed.localproc import LABEL, LocalProcessRunner
from operations.support import ENGINES, MODELS, OPERATOR_NAMESPACE


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for name in ("enginebuilds.kiln.dev", "enginedeployments.kiln.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    client.CoreV1Api(cluster.api_client).create_namespace(
        {"metadata": {"name": OPERATOR_NAMESPACE}})


def install_release(cluster: Cluster, namespace: str) -> tuple[Path, str]:
    """The chart's ServiceAccount and RBAC for a release that watches ``namespace`` only
    (one release per test: tests run side by side); a kubeconfig acting as its account, and
    the account's name (the release's)."""
    release = f"kiln-{namespace[-4:]}"
    config, _ = install_rbac(cluster, OPERATOR_NAMESPACE, release,
                             {"watchNamespaces": [namespace]})
    return config, release


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Overrides the suite's cluster: these tests run operators of their own on it."""
    with running(tmp_path_factory.mktemp("field-cluster"), audit=True) as cluster:
        install_crds(cluster)
        yield cluster


@pytest.fixture
def release(kube: Cluster, namespace: str) -> tuple[Path, str]:
    return install_release(kube, namespace)


@pytest.fixture(scope="session")
def buckets(s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in (ENGINES, MODELS):
        s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=MODELS, VersioningConfiguration={"Status": "Enabled"})


@pytest.fixture(scope="session")
def builders(kube: Cluster, s3_endpoint: str) -> Iterator[LocalProcessRunner]:
    runner = LocalProcessRunner(kube.api_client, extra_env={"AWS_ENDPOINT_URL": s3_endpoint})
    with runner:
        yield runner


def operator_env(kubeconfig: Path, s3_endpoint: str, store: str, **extra: str
                 ) -> dict[str, str]:
    """``kiln run``'s environment for the field tests."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")}
    return {
        **env,
        "KUBECONFIG": str(kubeconfig),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "KILN_DEFAULT_STORE": store,
        "KILN_BUILDER_IMAGE": "kiln-builder:test",
        "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": s3_endpoint}),
        "KILN_WARMUP_RUNTIME": "none",  # artifact sets are the field tier's (test_artifacts)
        "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
        "KILN_WEIGHTS_CHECK_SECONDS": "2",
        "KILN_RESYNC_SECONDS": "2",
        "KILN_METRICS_PORT": "0",
        "KILN_REBUILD_SETTLE": "0s",  # the tests' weights are uploaded just before
        "KILN_SIGNING_KEY_FILE": str(_signing_key()),  # one for every operator: a shared store
        "KILN_VERIFY_SECONDS": "2",
        **extra,
    }


@functools.cache
def _signing_key() -> Path:
    return signing.write_key(Path(tempfile.mkdtemp(prefix="kiln-operations-")) / "key.pem")


@pytest.fixture
def weights(s3_client: Any, buckets: None, namespace: str, tmp_path: Path) -> str:
    """A tiny real checkpoint of this test's own (engines are content-addressed)."""
    seed = int.from_bytes(os.urandom(4), "big")
    return checkpoints.upload(s3_client, checkpoints.write(tmp_path / "ckpt", seed=seed),
                              MODELS, f"{namespace}/llama/")
