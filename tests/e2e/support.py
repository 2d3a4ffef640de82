"""Helpers for the end-to-end tests: the operator process, reading kiln's objects."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster, running
from waiting import eventually

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

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``, from this
        process' ``/metrics`` (0 while it does not serve them yet)."""
        url = f"http://127.0.0.1:{self.env['KILN_METRICS_PORT']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return 0.0
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def passes(self, kind: str, result: str | None = None) -> float:
        """The passes over objects of ``kind`` this process has finished, with ``result``
        if given (``kiln_reconcile_total``)."""
        labels = {"kind": kind} if result is None else {"kind": kind, "result": result}
        return self.metric("kiln_reconcile_total", **labels)

    def resynced(self, *plurals: str, timeout: float = 60) -> None:
        """Return once this operator has passed over every object of its cluster of each of
        ``plurals`` (``enginebuilds``, ``enginedeployments``) since the call.

        Each resync round marks every object due, and a quiet object is passed over only
        then: while the objects are quiet (what a test checks this way is: settled, stalled
        or backing off), as many more finished passes as two rounds make means a whole round
        began after the call and ended. What a test reads after this, the operator has seen,
        on a slow machine as on a fast one: it proves that something did not happen where a
        sleep only hoped so.
        """
        kinds = {EB_PLURAL: "EngineBuild", ED_PLURAL: "EngineDeployment"}
        wanted = {}
        for plural in plurals:
            objects = [o for o in client.CustomObjectsApi(self.kube.api_client)
                       .list_cluster_custom_object(GROUP, VERSION, plural)["items"]
                       if not o["metadata"].get("deletionTimestamp")]
            assert objects, f"no {plural} to pass over"
            wanted[kinds[plural]] = self.passes(kinds[plural]) + 2 * len(objects)
        eventually(lambda: all(self.passes(kind) >= n for kind, n in wanted.items()),
                   timeout=timeout, interval=0.2)


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
