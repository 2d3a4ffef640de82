"""``kiln quickstart``: kiln doing its whole job on a local cluster, in one command.

Starts the test bed (real control plane, fake GPU pools) and a local S3 endpoint, puts a
tiny real checkpoint there, installs the CRDs, runs the operator, applies
``examples/quickstart/`` and shows builds and rollouts live until everything is Ready.
Build pods run the real ``kiln-builder`` as local processes in place of GPU nodes.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from kiln import GROUP, VERSION
from kiln.contract.key import short_key
from kiln.dev import signing
from kiln.dev.testbed import checkpoint, warmup_runtime
from kiln.dev.testbed.cluster import Cluster, running
from kiln.dev.testbed.localproc import INIT_LABEL, LABEL, LocalProcessRunner
from kiln.dev.testbed.s3 import moto_server
from kiln.domain.labels import ED_LABEL

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "examples" / "quickstart"


def _seed_weights(endpoint: str, scratch: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in ("models", "engines"):
        s3.create_bucket(Bucket=bucket)
    checkpoint.upload(s3, checkpoint.write(scratch / "tiny-llama"), "models", "tiny-llama/")


@contextlib.contextmanager
def _operator(cluster: Cluster, endpoint: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "AWS_ENDPOINT_URL": endpoint,
           "KILN_DEFAULT_STORE": "s3://engines/", "KILN_METRICS_PORT": "0",
           # the quickstart uploaded the checkpoint itself, whole, a moment ago
           "KILN_REBUILD_SETTLE": "0s",
           "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": endpoint}),
           # the test bed's stand-in runtime makes each engine's artifact set
           "KILN_WARMUP_RUNTIME": warmup_runtime.runtime().model_dump_json(),
           "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
           # serving pods' init containers run here: the real kiln fetch-engine verifies
           # every file of the engine before a pod is Ready
           "KILN_SERVING_POD_LABELS": json.dumps({INIT_LABEL: "true"}),
           "KILN_SIGNING_KEY_FILE": str(signing.write_key(log.parent / "signing-key.pem"))}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "kiln.cli", "run"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _objects(cluster: Cluster, plural: str) -> list[dict[str, Any]]:
    api = client.CustomObjectsApi(cluster.api_client)
    items: list[dict[str, Any]] = api.list_namespaced_custom_object(
        GROUP, VERSION, "default", plural)["items"]
    return items


def _is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions", []))
    return ready and status.get("observedGeneration") == obj["metadata"].get("generation")


def _build_nodes(cluster: Cluster) -> dict[str, str]:
    """Build pod → node, from the pods the scheduler bound."""
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        "default", label_selector="kiln.dev/engine-key")
    return {p.metadata.labels.get("job-name", p.metadata.name): p.spec.node_name or "-"
            for p in pods.items}


def _verified(cluster: Cluster, owner: str) -> tuple[int, int]:
    """(serving pods whose init containers, the real ``kiln fetch-engine``, exited 0; all)."""
    pods = [p for p in client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        "default", label_selector=f"{ED_LABEL}={owner}").items
        if p.metadata.deletion_timestamp is None]
    done = [p for p in pods if p.status.init_container_statuses and all(
        s.state.terminated is not None and s.state.terminated.exit_code == 0
        for s in p.status.init_container_statuses)]
    return len(done), len(pods)


def snapshot(cluster: Cluster) -> tuple[list[str], bool]:
    """What to show now, and whether every object is Ready."""
    lines, ready = [], True
    nodes = _build_nodes(cluster)
    builds = _objects(cluster, "enginebuilds")
    deployments = _objects(cluster, "enginedeployments")
    for eb in builds:
        status = eb.get("status") or {}
        ready &= _is_ready(eb)
        lines.append(f"EngineBuild {eb['metadata']['name']}: {status.get('phase', 'Pending')}")
        for e in status.get("engines", []):
            where = nodes.get(e.get("job") or "", "")
            lines.append(f"  {e['target']:<12} {e['state']:<9} key {short_key(e.get('key', ''))}"
                         + (f"  built on {where}" if where else ""))
    for ed in deployments:
        status = ed.get("status") or {}
        ready &= _is_ready(ed)
        lines.append(f"EngineDeployment {ed['metadata']['name']}: "
                     f"{status.get('readyReplicas', 0)}/{ed['spec'].get('replicas', 1)} ready")
        for p in status.get("products", []):
            key = short_key(p.get("engineKey") or "")
            lines.append(f"  {p.get('gpuProduct', ''):<24} {p.get('mode', ''):<9} "
                         f"{'key ' + key if key else 'no engine yet'}  "
                         f"Deployment {p.get('deployment', '')}")
        verified, pods = _verified(cluster, ed["metadata"]["name"])
        lines.append(f"  kiln fetch-engine checked every file on {verified}/{pods} serving pods")
    return lines, ready and bool(builds)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(*, wait_only: bool = False, timeout: float = 600, state_dir: Path | None = None) -> int:
    """The quickstart; with ``wait_only`` it stops everything once all is Ready."""
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
    started = time.monotonic()
    interactive = sys.stdout.isatty() and not wait_only
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-qs-")))
        print("kiln: starting the control plane with A100, H100 and L40S pools ...", flush=True)
        cluster = stack.enter_context(running(state_dir or scratch / "cluster"))
        endpoint = stack.enter_context(moto_server())
        _seed_weights(endpoint, scratch)
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        f"crd/enginebuilds.{GROUP}", f"crd/enginedeployments.{GROUP}")
        stack.enter_context(_operator(cluster, endpoint, scratch / "operator.log"))
        stack.enter_context(LocalProcessRunner(cluster.api_client,
                                               extra_env={"AWS_ENDPOINT_URL": endpoint}))
        cluster.kubectl("apply", "-n", "default", "-f", str(MANIFESTS))
        print(f"kiln: applied {MANIFESTS.relative_to(ROOT)}/ ({time.monotonic() - started:.1f}s)"
              "\n", flush=True)
        shown: list[str] = []
        ready = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines, ready = snapshot(cluster)
            if lines != shown:
                if interactive:
                    print("\033[H\033[J", end="")
                print("\n".join(lines) + "\n", flush=True)
                shown = lines
            if ready:
                break
            time.sleep(1)
        print(f"kiln: {'everything is Ready' if ready else 'not Ready in time'} after "
              f"{time.monotonic() - started:.1f}s\n", flush=True)
        print(cluster.kubectl("get", "eb,ed", "-n", "default", "-o", "wide").stdout)
        if wait_only or not ready:
            return 0 if ready else 1
        kubectl = cluster.binaries["kubectl"]
        print(f"Try it:\n  export KUBECONFIG={cluster.kubeconfig}\n"
              f"  export PATH={kubectl.parent}:$PATH\n"
              "  kubectl get eb,ed,jobs,deploy,pods -o wide\n"
              "  kubectl describe eb tiny-llama\n\nCtrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    print("kiln: stopped everything the quickstart started", flush=True)
    return 0
