"""End-to-end fixtures: kiln's CRDs installed, the operator running as a real process,
build pods run by the local-process helper with the real ``kiln-builder``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from chart.support import install_rbac, serve
from e2e.support import ROOT, Operator
from kiln.dev import signing
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed.cluster import Cluster, free_port
from kiln.dev.testbed.localproc import LABEL, LocalProcessRunner


@pytest.fixture(scope="session")
def crds(kube: Cluster) -> None:
    """kiln's CRDs, applied server-side and Established."""
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for name in ("enginebuilds.kiln.dev", "enginedeployments.kiln.dev"):
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="session")
def engines_bucket(s3_endpoint: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="engines")
    return "engines"


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Cluster, crds: None) -> Path:
    """The chart's ServiceAccount and RBAC, installed as the chart would: the operator in
    these tests has exactly the rights a real install gives it, no more."""
    client.CoreV1Api(kube.api_client).create_namespace({"metadata": {"name": "kiln-system"}})
    config, _ = install_rbac(kube, "kiln-system", "kiln")
    return config


@pytest.fixture
def namespace(namespace: str, kube: Cluster) -> str:
    """The test's namespace, served by the operator: a RoleBinding to the chart's
    ``kiln-serve`` ClusterRole there, as an admin onboarding a tenant adds it."""
    serve(kube, namespace, "kiln", "kiln-system")
    return namespace


@pytest.fixture(scope="session")
def operator_env(kube: Cluster, s3_endpoint: str, engines_bucket: str,
                 operator_kubeconfig: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    key = signing.write_key(tmp_path_factory.mktemp("signing") / "key.pem")
    return {
        **os.environ,
        "KUBECONFIG": str(operator_kubeconfig),
        "KILN_METRICS_PORT": str(free_port()),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "KILN_DEFAULT_STORE": f"s3://{engines_bucket}/",
        "KILN_BUILDER_IMAGE": "kiln-builder:test",
        "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": s3_endpoint}),
        "KILN_WARMUP_RUNTIME": "none",  # artifact sets are the field tier's (test_artifacts)
        "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
        "KILN_WEIGHTS_CHECK_SECONDS": "2",
        "KILN_RESYNC_SECONDS": "2",
        "KILN_REBUILD_SETTLE": "0s",  # the tests' weights are uploaded just before
        "KILN_SIGNING_KEY_FILE": str(key),
        "KILN_VERIFY_SECONDS": "2",
    }


@pytest.fixture(scope="session")
def operator(kube: Cluster, crds: None, operator_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator, running for the whole session; it must log no error in it (the
    handlers' failures, the sweep's), bar Kopf's API requests it retries itself."""
    op = Operator(kube, operator_env, tmp_path_factory.mktemp("operator") / "kiln.log")
    op.start()
    yield op
    op.stop()
    lines = op.log().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[")] + [len(lines)]
    errors = ["\n".join(lines[i:next(j for j in starts if j > i)])  # its whole traceback
              for i, line in enumerate(lines)
              if "[ERROR" in line and "failed; will retry" not in line
              and "is being terminated" not in line]  # Events posted as a test ends
    assert not errors, "\n\n".join(errors[:2])


@pytest.fixture(scope="session")
def builders(kube: Cluster, s3_endpoint: str) -> Iterator[LocalProcessRunner]:
    """Runs build pods as local ``kiln-builder`` processes against moto's S3."""
    runner = LocalProcessRunner(kube.api_client, extra_env={"AWS_ENDPOINT_URL": s3_endpoint})
    with runner:
        yield runner


@pytest.fixture(scope="session")
def models_bucket(s3_endpoint: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    s3.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
    return "models"


@pytest.fixture
def weights(s3_client: Any, models_bucket: str, namespace: str,
            tmp_path: Path) -> str:
    """A tiny real checkpoint of its own (engines are content-addressed: equal weights
    would share engines across tests) in moto's S3; its ``s3://`` URI."""
    seed = int.from_bytes(os.urandom(4), "big")
    return checkpoints.upload(s3_client, checkpoints.write(tmp_path / "ckpt", seed=seed),
                              models_bucket, f"{namespace}/llama/")
