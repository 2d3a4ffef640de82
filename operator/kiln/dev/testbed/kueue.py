"""Kueue's real controller manager on the test bed, built from its Go module on first use.

The manager runs as one local process against the test bed's apiserver, as the admin, with
its own certificate management (it writes its webhook certificate into a Secret, which the
test bed copies where the manager reads it, as a kubelet's Secret volume would). No webhook
configuration is registered, so the apiserver never calls its webhooks: kiln's build Jobs come
suspended, as Kueue's plain-Job contract asks. Its CRDs are the module's own; those its
certificate rotator patches (sigs.k8s.io/kueue pkg/util/cert/cert.go) get a conversion
webhook stanza, which nothing calls while every client reads their storage version.
"""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kiln.dev.testbed.binaries import ensure_kueue
from kiln.dev.testbed.cluster import Cluster, _wait, free_port

NAMESPACE = "kueue-system"
SECRET = "kueue-webhook-server-cert"
SERVICE = "kueue-webhook-service"
CONVERTED = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"


def _crds(crd_dir: Path, webhook_port: int) -> list[dict[str, Any]]:
    crds = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/convert"}}}
        crds.append(crd)
    return crds


def _config(cert_dir: Path, webhook_port: int, health_port: int) -> dict[str, Any]:
    """A Configuration (sigs.k8s.io/kueue apis/config/v1beta2) for one local manager."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE,
                                   "webhookSecretName": SECRET},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


def start(cluster: Cluster, *, timeout: float = 120, verbose: bool = False) -> None:
    """Install Kueue's CRDs and start its manager; returns once it is ready."""
    from kubernetes import client

    built = ensure_kueue(verbose=verbose)
    state = cluster.state_dir / "kueue"
    cert_dir = state / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    webhook_port, health_port = free_port(), free_port()
    manifests = state / "crds.yaml"
    manifests.write_text(yaml.safe_dump_all(_crds(built / "crds", webhook_port)))
    cluster.kubectl("apply", "--server-side", "-f", str(manifests))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f",
                    str(manifests))
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    # Kueue's manifests ship this Secret empty; its certificate rotator fills it.
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": SECRET}})
    config = state / "config.yaml"
    config.write_text(yaml.safe_dump(_config(cert_dir, webhook_port, health_port)))
    process = cluster.spawn("kueue", built / "kueue", [
        f"--config={config}", f"--kubeconfig={cluster.kubeconfig}",
        f"--visibility-server-port={free_port()}", "--zap-log-level=2"])

    def mounted() -> bool:
        try:
            data = core.read_namespaced_secret(SECRET, NAMESPACE).data or {}
        except client.ApiException as error:
            if error.status == 404:
                return False  # not written yet
            raise
        if "tls.crt" not in data or "tls.key" not in data:
            return False
        for name in ("tls.crt", "tls.key"):
            (cert_dir / name).write_bytes(base64.b64decode(data[name]))
        return True

    _wait("kueue's webhook certificate", mounted, timeout, process, cluster.log_path("kueue"))
    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz",
                                    timeout=2) as response:
            return bool(response.status == 200)

    _wait("kueue", ready, timeout, process, cluster.log_path("kueue"))
