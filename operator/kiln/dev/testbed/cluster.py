"""Start and stop the test bed's control plane: real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from kiln.dev.testbed import certs, nodes
from kiln.dev.testbed.binaries import Binaries, ensure_built

SERVICE_CIDR = "10.96.0.0/16"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started us dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait(what: str, ready: Any, timeout: float, process: subprocess.Popen[bytes] | None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def kubeconfig(server: str, ca: Path, user: dict[str, str], name: str = "kiln-testbed") -> str:
    """A kubeconfig document for one user of the test bed."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": server,
                                                    "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
    )


class Cluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, with GPU pools.

    Authorization is RBAC; ``kubeconfig`` is an admin (``system:masters``) client cert,
    ``kubeconfig_for_service_account`` gives one that authenticates as a ServiceAccount.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        pools: Iterable[nodes.Pool] = nodes.DEFAULT_POOLS,
        binaries: Binaries | None = None,
        audit: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.audit_log = state_dir / "audit.log" if audit else None
        """With ``audit``: the apiserver's audit log of every write (JSON lines)."""
        self.pools = list(pools)
        self.binaries = binaries or ensure_built()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self.pki = state_dir / "pki"
        self.kubeconfig = state_dir / "admin.kubeconfig"
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self._api: Any = None

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str],
               binary_path: Path | None = None) -> subprocess.Popen[bytes]:
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = self._logs.get(name) or (log_dir / f"{name}.log").open("ab")
        self._logs[name] = log
        binary = str(binary_path or self.binaries[args[0]])
        process = subprocess.Popen(
            [binary, *args[1:]], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self.processes[name] = process
        return process

    def spawn(self, name: str, binary: Path, args: list[str]) -> subprocess.Popen[bytes]:
        """Run a further component (logged, stopped with the others) from ``binary``."""
        return self._spawn(name, [binary.name, *args], binary)

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self, *, timeout: float = 60) -> Cluster:
        """Start every component and wait until the apiserver answers and nodes are Ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        self.etcd_port = free_port()
        self._start_etcd(timeout)
        self.start_apiserver(timeout)
        # The controllers and the scheduler act as the admin: the test bed is about the
        # operator's permissions, not theirs.
        kcm = scheduler = self.kubeconfig
        self._spawn("kube-controller-manager", [
            "kube-controller-manager", f"--kubeconfig={kcm}",
            f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            "--leader-elect=false", "--secure-port=0", "--bind-address=127.0.0.1",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=200", "--kube-api-burst=400",
            "--concurrent-job-syncs=20", "--concurrent-deployment-syncs=20",
            "--node-monitor-grace-period=60s", "-v=1",
        ])
        self._spawn("kube-scheduler", [
            "kube-scheduler", f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}", f"--authorization-kubeconfig={scheduler}",
            "--leader-elect=false", "--secure-port=0", "--bind-address=127.0.0.1",
            "--kube-api-qps=200", "--kube-api-burst=400", "-v=1",
        ])
        self._start_kwok()
        self.add_pools(self.pools)
        self.wait_nodes_ready(timeout=timeout)
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log_path(name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        return self

    def _start_etcd(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{free_port()}"
        process = self._spawn("etcd", [
            "etcd", "--name=testbed", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testbed={peer}", "--unsafe-no-fsync=true",
            "--log-level=warn", "--quota-backend-bytes=8589934592",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                return bool(json.load(response).get("health") == "true")

        _wait("etcd", healthy, timeout, process, self.log_path("etcd"))

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now (what the API server does every 5 minutes): a
        watch from an older resource version gets 410 Gone and must list again. The revision
        compacted at."""
        url = f"http://127.0.0.1:{self.etcd_port}/v3/kv"

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(f"{url}/{path}", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                found: dict[str, Any] = json.load(response)
                return found

        revision = int(post("range", {"key": "Lw=="})["header"]["revision"])  # key "/"
        post("compaction", {"revision": str(revision), "physical": True})
        return revision

    def start_apiserver(self, timeout: float = 60) -> None:
        """Start (or restart, after ``stop_component``) the apiserver and wait for /readyz."""
        pki = self.pki
        process = self._spawn("kube-apiserver", [
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount",
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
            "--profiling=false", "-v=1", *self._audit_flags(),
        ])
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=2,
                                        context=context) as response:
                return bool(response.status == 200)

        _wait("kube-apiserver", ready, timeout, process, self.log_path("kube-apiserver"))

    def _audit_flags(self) -> list[str]:
        if self.audit_log is None:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata",
                       "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                      {"level": "None"}]}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far (writes only)."""
        if self.audit_log is None or not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def _start_kwok(self) -> None:
        config = Path(__file__).with_name("kwok.yaml")
        self._spawn("kwok", [
            "kwok", f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
            "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
        ])

    def stop_component(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop every component, newest first."""
        for name in reversed(list(self.processes)):
            self.stop_component(name)
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    # -- identities ------------------------------------------------------------------------

    def _make_pki(self) -> None:
        ca = certs.CertificateAuthority(self.pki)
        ca.issue("apiserver", common_name="kube-apiserver", server=True)
        admin = ca.issue("admin", common_name="kiln-admin", organizations=("system:masters",))
        certs.service_account_keys(self.pki)
        self._ca = ca
        self.kubeconfig.write_text(kubeconfig(self.server, ca.cert_path, {
            "client-certificate": str(admin.cert), "client-key": str(admin.key)}))

    def kubeconfig_for_service_account(self, namespace: str, name: str,
                                       *, create: bool = True) -> Path:
        """A kubeconfig with a bound token of that ServiceAccount (real authentication)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client)
        if create:
            with contextlib.suppress(client.ApiException):
                core.create_namespaced_service_account(
                    namespace, {"metadata": {"name": name}})
        request = core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": 86400}})
        path = self.state_dir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(kubeconfig(self.server, self._ca.cert_path,
                                   {"token": request.status.token}))
        return path

    # -- clients ---------------------------------------------------------------------------

    @property
    def api_client(self) -> Any:
        """An admin ``kubernetes.client.ApiClient`` (created on first use)."""
        if self._api is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            config.load_kube_config(str(self.kubeconfig), client_configuration=configuration)
            self._api = client.ApiClient(configuration)
        return self._api

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the test bed's kubectl against this cluster."""
        return subprocess.run(
            [str(self.binaries["kubectl"]), f"--kubeconfig={kubeconfig or self.kubeconfig}",
             *args],
            input=input, capture_output=True, text=True, check=check, timeout=120,
        )

    # -- nodes -----------------------------------------------------------------------------

    def add_pools(self, pools: Iterable[nodes.Pool]) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client)
        for pool in pools:
            for name in pool.node_names():
                manifest = nodes.node_manifest(pool, name)
                core.create_node(manifest)
                core.patch_node_status(name, {"status": manifest["status"]})
            if pool not in self.pools:
                self.pools.append(pool)

    def remove_pool(self, name: str) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client)
        core.delete_collection_node(label_selector=f"{nodes.POOL_LABEL}={name}")
        self.pools = [p for p in self.pools if p.name != name]

    def wait_nodes_ready(self, timeout: float = 60) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client)
        expected = {n for pool in self.pools for n in pool.node_names()}

        def all_ready() -> bool:
            ready = {
                node.metadata.name
                for node in core.list_node().items
                for cond in node.status.conditions or []
                if cond.type == "Ready" and cond.status == "True"
            }
            return expected <= ready

        _wait("nodes", all_ready, timeout, self.processes.get("kwok"), self.log_path("kwok"))


@contextlib.contextmanager
def running(state_dir: Path | None = None, **kwargs: Any) -> Iterator[Cluster]:
    """A started cluster for the duration of the block (in a temp dir by default)."""
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-")))
        cluster = Cluster(state_dir, **kwargs)
        stack.callback(cluster.stop)
        yield cluster.start()


def _default_state_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln")) / "cluster"


def serve_forever(state_dir: Path | None = None) -> int:
    """``kiln dev cluster up``: start, print how to use it, run until Ctrl-C or ``down``."""
    import shutil

    state_dir = state_dir or _default_state_dir()
    pidfile = state_dir / "up.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text()), 0)
            print(f"kiln: a cluster is already running from {state_dir}", file=sys.stderr)
            return 1
    shutil.rmtree(state_dir, ignore_errors=True)
    started = time.monotonic()
    with running(state_dir) as cluster:
        pidfile.write_text(str(os.getpid()))
        kubectl = cluster.binaries["kubectl"]
        print(f"kiln: cluster ready in {time.monotonic() - started:.1f}s "
              f"({len(cluster.pools)} pools)\n\n"
              f"  export KUBECONFIG={cluster.kubeconfig}\n"
              f"  export PATH={kubectl.parent}:$PATH\n"
              f"  kubectl get nodes -L nvidia.com/gpu.product\n\n"
              "Ctrl-C (or `kiln dev cluster down`) stops it.", flush=True)
        stop = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        pidfile.unlink(missing_ok=True)
    print("kiln: cluster stopped", file=sys.stderr)
    return 0


def stop_running(state_dir: Path | None = None) -> int:
    """``kiln dev cluster down``: stop the cluster that ``up`` started."""
    pidfile = (state_dir or _default_state_dir()) / "up.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        print("kiln: no cluster is running", file=sys.stderr)
        return 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.2)
UNPULLABLE_IMAGE = "kiln-builder:unpullable"
"""An image kwok's image-pull-failed Stage gives ErrImagePull (see kwok.yaml)."""
