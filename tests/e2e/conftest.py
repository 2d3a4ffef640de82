"""End-to-end fixtures: kiln's CRDs installed, the operator running as a real process,
build pods run by the local-process helper with the real ``kiln-builder``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kiln import GROUP, VERSION
from kiln.testbed.cluster import Cluster
from kiln.testbed.localproc import LABEL, LocalProcessRunner

ROOT = Path(__file__).resolve().parents[2]


def eventually(check: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout}s: last value {value!r}")


@pytest.fixture(scope="session")
def crds(kube: Cluster) -> None:
    """kiln's CRDs, applied server-side and Established."""
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for name in ("enginebuilds.kiln.dev", "enginedeployments.kiln.dev"):
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


class Operator:
    """``kiln run`` as a child process; ``kill`` and ``start`` for crash tests."""

    def __init__(self, kube: Cluster, env: dict[str, str], log_path: Path) -> None:
        self.kube = kube
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "run", "--verbose"], env=self.env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def engines_bucket(s3_endpoint: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="engines")
    return "engines"


@pytest.fixture(scope="session")
def operator_env(kube: Cluster, s3_endpoint: str, engines_bucket: str) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "KILN_DEFAULT_STORE": f"s3://{engines_bucket}/",
        "KILN_BUILDER_IMAGE": "kiln-builder:test",
        "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": s3_endpoint}),
        "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
        "KILN_WEIGHTS_CHECK_SECONDS": "2",
    }


@pytest.fixture(scope="session")
def operator(kube: Cluster, crds: None, operator_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator, running for the whole session."""
    op = Operator(kube, operator_env, tmp_path_factory.mktemp("operator") / "kiln.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def builders(kube: Cluster, s3_endpoint: str) -> Iterator[LocalProcessRunner]:
    """Runs build pods as local ``kiln-builder`` processes against moto's S3."""
    runner = LocalProcessRunner(kube.api_client, extra_env={"AWS_ENDPOINT_URL": s3_endpoint})
    with runner:
        yield runner


def custom(kube: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client)


def get_eb(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginebuilds", name)
    return obj
