"""``kiln run`` with the kubeconfigs of managed clusters: an ``exec`` credential plugin whose
tokens expire after 15 s (and stop working then), directly and through an HTTPS proxy.

The plugin mints a ServiceAccount token bound to a Secret of its own and says it expires in
15 s; the test deletes each Secret 15 s after the plugin made it (the token is refused from
then on) and the first one after 5 s, before its stated expiry, so that a 401 is met and must
be answered by running the plugin again. The operator (kiln's calls and Kopf's watches) must
build EngineBuilds to Ready across several tokens, with no 401 reaching a reconcile.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.support import Operator, ready
from faults.support import create, engine_build
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from operations.conftest import operator_env
from operations.support import (
    ENGINES,
    EXEC_PLUGIN,
    OPERATOR_NAMESPACE,
    ConnectProxy,
    error_lines,
    running,
)
from waiting import eventually

TTL = 15.0
FIRST_REVOKED_AFTER = 5.0
HIDDEN = "kubernetes.default.svc"
"""A name the apiserver's certificate carries that only the test's proxy resolves."""


def exec_kubeconfig(kube: Cluster, tmp_path: Path, run: str, server: str,
                    account: str) -> tuple[Path, Path]:
    """A kubeconfig whose user is the exec plugin; and the file the plugin logs its runs in."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    runs = tmp_path / "runs.log"
    runs.touch()
    env = {"KILN_TEST_CA": kube.pki / "ca.crt", "KILN_TEST_CERT": kube.pki / "admin.crt",
           "KILN_TEST_KEY": kube.pki / "admin.key", "KILN_TEST_SERVER": kube.server,
           "KILN_TEST_NAMESPACE": OPERATOR_NAMESPACE, "KILN_TEST_ACCOUNT": account,
           "KILN_TEST_TTL": TTL, "KILN_TEST_RUNS": runs, "KILN_TEST_RUN": run}
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin)], "interactiveMode": "Never",
                     "env": [{"name": k, "value": str(v)} for k, v in env.items()]}}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "field",
              "clusters": [{"name": "field", "cluster": {
                  "server": server, "certificate-authority": str(kube.pki / "ca.crt")}}],
              "users": [{"name": "field", "user": user}],
              "contexts": [{"name": "field", "context": {"cluster": "field", "user": "field"}}]}
    path = tmp_path / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, runs


class Revoker(threading.Thread):
    """Deletes each token's Secret once it expires (the first one early): the token is
    refused from then on."""

    def __init__(self, kube: Cluster, run: str) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(kube.api_client)
        self.run_label = run
        self.stopped = threading.Event()
        self.revoked: list[str] = []

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            secrets = self.core.list_namespaced_secret(
                OPERATOR_NAMESPACE, label_selector=f"kiln-test/exec-token={self.run_label}").items
            for secret in sorted(secrets, key=lambda s: s.metadata.creation_timestamp):
                age = (datetime.now(UTC) - secret.metadata.creation_timestamp).total_seconds()
                limit = FIRST_REVOKED_AFTER if not self.revoked else TTL
                if age >= limit:
                    self.core.delete_namespaced_secret(secret.metadata.name, OPERATOR_NAMESPACE)
                    self.revoked.append(secret.metadata.name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("route", ["direct", "https-proxy"])
def test_exec_plugin_tokens_that_expire_every_15s(
        kube: Cluster, release: tuple[Path, str], namespace: str, weights: str,
        builders: LocalProcessRunner, s3_endpoint: str, tmp_path: Path, route: str) -> None:
    run = os.urandom(4).hex()
    proxy = ConnectProxy({HIDDEN: "127.0.0.1"})
    extra = {}
    server = kube.server
    if route == "https-proxy":  # the apiserver's name resolves only through the proxy
        server = f"https://{HIDDEN}:{kube.api_port}"
        extra["HTTPS_PROXY"] = proxy.url
    config, runs = exec_kubeconfig(kube, tmp_path, run, server, account=release[1])
    env = operator_env(config, s3_endpoint, f"s3://{ENGINES}/", **extra)
    operator = Operator(kube, env, tmp_path / "kiln.log", args=["-n", namespace])
    revoker = Revoker(kube, run)
    started = time.monotonic()
    with proxy, running(operator):
        revoker.start()
        names = []
        # New work keeps coming while tokens come and go: one EngineBuild every 6 s, over
        # more than two token lifetimes (so the plugin surely runs after the second expiry).
        for i in range(6):
            names.append(f"b{i}")
            create(kube, namespace, engine_build(f"b{i}", weights, max_batch_size=8 + i))
            eventually(lambda: ready(kube, namespace, names[-1]), timeout=60, interval=0.5)
            time.sleep(max(0.0, TTL * 0.4 * (i + 1) - (time.monotonic() - started)))
        eventually(lambda: all(ready(kube, namespace, n) for n in names), timeout=30)
        revoker.stopped.set()
    plugin_runs = runs.read_text().splitlines()
    log = operator.log()
    # The plugin ran again after the early revocation (a 401) and after each expiry.
    assert len(plugin_runs) >= 3, plugin_runs
    assert len(revoker.revoked) >= 2, revoker.revoked
    # No 401 reached a reconcile: no retried or stalled reconcile, no error at all.
    assert "will be retried" not in log and "AccessDenied" not in log, log[-3000:]
    assert not error_lines(operator, ignore=("failed; will retry",)), error_lines(operator)[:3]
    assert not [line for line in log.splitlines() if "failed; will retry" in line
                and ("401" in line or "Unauthorized" in line)]  # nor one of Kopf's requests
    if route == "https-proxy":
        assert len([t for t in proxy.tunnels if t.startswith(HIDDEN)]) >= 2, proxy.tunnels
        assert os.environ.get("HTTPS_PROXY") is None  # the test's own calls went direct
