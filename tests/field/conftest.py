"""Field tests: the cluster doing what production clusters do every day (labels lost for a
moment, Jobs deleted by hand, operators killed, weights replaced or still uploading), against
a control plane of their own (they relabel its nodes and kill its operator), the operator as a
real process with the chart's RBAC, builders and serving pods' init containers run locally
(the real ``kiln-builder`` and ``kiln fetch-engine``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from chart.support import install_rbac, serve
from e2e.support import Operator, cluster_of_its_own, create_buckets
from kiln.contract.gate import AIPERF
from kiln.dev import signing
from kiln.dev.testbed import aiperf, warmup_runtime
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed.cluster import Cluster, free_port
from kiln.dev.testbed.localproc import INIT_LABEL, LABEL, LocalProcessRunner

ENGINES, MODELS = "field-engines", "field-models"
BUILDS = "kiln-builds"
"""The platform's build namespace (``KILN_BUILD_NAMESPACE``): its engines serve every tenant."""
RESYNC_SECONDS = 2
BASELINE_ENV = "KILN_FIELD_OPERATOR_PATH"
"""Set to another tree's ``operator/`` to run these tests against that operator: how a field
test is watched failing before the fix it proves."""
OPERATOR_KEY_ID, OPERATOR_HF_TOKEN = "AKIAKILNOPERATOROWN", "hf_kiln_operator_own_token"
"""The operator's own store key id and hub token (its environment): a tenant's server never
sees either."""


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Overrides the suite's cluster: these tests relabel its nodes and kill its operator."""
    with cluster_of_its_own(tmp_path_factory.mktemp("field-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def buckets(s3_endpoint: str) -> None:
    create_buckets(s3_endpoint, ENGINES, MODELS)


@pytest.fixture
def namespace(namespace: str, kube: Cluster) -> str:
    """The test's namespace, served by the operator: a RoleBinding to the chart's
    ``kiln-serve`` ClusterRole there, as an admin onboarding a tenant adds it."""
    serve(kube, namespace, "kiln", "kiln-system")
    return namespace


@pytest.fixture(scope="session")
def operator(kube: Cluster, s3_endpoint: str, buckets: None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """``kiln run`` with exactly the rights the chart gives it, resyncing every 2 s."""
    for name in ("kiln-system", BUILDS):
        client.CoreV1Api(kube.api_client).create_namespace({"metadata": {"name": name}})
    kubeconfig, _ = install_rbac(kube, "kiln-system", "kiln")
    serve(kube, BUILDS, "kiln", "kiln-system")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": OPERATOR_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": "operator-own-secret",
        "HF_TOKEN": OPERATOR_HF_TOKEN,
        "KILN_DEFAULT_STORE": f"s3://{ENGINES}/",
        "KILN_BUILDER_IMAGE": "kiln-builder:field",
        "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": s3_endpoint}),
        # backend pytorch builds warm the stand-in runtime up: artifact sets (test_artifacts)
        "KILN_WARMUP_RUNTIME": warmup_runtime.runtime().model_dump_json(),
        "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
        "KILN_SERVING_POD_LABELS": json.dumps({INIT_LABEL: "true"}),
        "KILN_WEIGHTS_CHECK_SECONDS": str(RESYNC_SECONDS),
        "KILN_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "KILN_REBUILD_SETTLE": "0s",
        "KILN_METRICS_PORT": str(free_port()),
        "KILN_SIGNING_KEY_FILE": str(signing.write_key(
            tmp_path_factory.mktemp("field-signing") / "key.pem")),
        "KILN_VERIFY_SECONDS": "2",
        # The namespace's own admission is what test_honest_status shows refusing a root
        # override and an unknown PriorityClass: the operator's pod policy lets both through
        # (its default refuses them itself: faults/test_least_privilege.py).
        "KILN_POD_SECURITY": "baseline",
        "KILN_ALLOWED_PRIORITY_CLASSES": "*",
        "KILN_BUILD_NAMESPACE": BUILDS,
    }
    if os.environ.get(BASELINE_ENV):
        env["PYTHONPATH"] = os.environ[BASELINE_ENV]
    op = Operator(kube, env, tmp_path_factory.mktemp("field-operator") / "kiln.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def builders(kube: Cluster, s3_endpoint: str) -> Iterator[LocalProcessRunner]:
    runner = LocalProcessRunner(kube.api_client, extra_env={
        "AWS_ENDPOINT_URL": s3_endpoint, AIPERF: str(aiperf.ensure())})
    with runner:
        yield runner


@pytest.fixture
def weights(s3_client: Any, buckets: None, namespace: str, tmp_path: Path) -> str:
    """A tiny real checkpoint of the test's own (engines are content-addressed)."""
    seed = int.from_bytes(os.urandom(4), "big")
    return checkpoints.upload(s3_client, checkpoints.write(tmp_path / "ckpt", seed=seed),
                              MODELS, f"{namespace}/llama/")
