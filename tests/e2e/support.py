"""Helpers for the end-to-end tests: the operator process, reading kiln's objects."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
from kubernetes import client

from kiln import GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster, running

ROOT = Path(__file__).resolve().parents[2]


class Operator:
    """``kiln run`` as a child process; ``kill`` and ``start`` for crash tests."""

    def __init__(self, kube: Cluster, env: dict[str, str], log_path: Path,
                 args: Sequence[str] = ()) -> None:
        self.kube = kube
        self.env = env
        self.log_path = log_path
        self.args = list(args)
        """More ``kiln run`` arguments, e.g. ``-n NS``, ``--leader-elect``."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "run", "--verbose", *self.args], env=self.env,
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


@contextlib.contextmanager
def cluster_of_its_own(state: Path) -> Iterator[Cluster]:
    """A test bed with kiln's CRDs Established, for tests that break their cluster."""
    with running(state) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        for name in ("enginebuilds.kiln.dev", "enginedeployments.kiln.dev"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}",
                            "--timeout=60s")
        yield cluster


def create_buckets(s3_endpoint: str, engines: str, models: str) -> None:
    """An engine store bucket, and a versioned bucket for weights."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in (engines, models):
        s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=models, VersioningConfiguration={"Status": "Enabled"})


def custom(kube: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client)


def get_eb(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginebuilds", name)
    return obj


def ready(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """An EngineBuild's status once it is Ready for its current generation."""
    eb = get_eb(kube, namespace, name)
    status = eb.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if (status.get("phase") == "Ready" and conditions.get("Ready") == "True"
            and status.get("observedGeneration") == eb["metadata"]["generation"]):
        return status
    return None
