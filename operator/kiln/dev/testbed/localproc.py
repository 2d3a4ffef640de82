"""Run pods' containers as local processes, in place of a GPU node.

kwok leaves pods labelled ``testbed.kiln.dev/local-process`` Running; the runner takes
each such pod, runs its (single) container's command and args here with the pod's
environment, and writes the exit code and termination message into the pod's status,
as a kubelet would. Pods labelled ``testbed.kiln.dev/local-init`` get their init containers
run the same way (a failure is reported as the kubelet's CrashLoopBackOff with the exit code
and termination message in ``lastState``). emptyDir mounts become temp dirs (paths in env
and args are mapped); ``KILN_TERMINATION_LOG`` points at a temp file whose content becomes
the message. A serving pod whose engine directory (an emptyDir of its main container) holds
``standin.json`` gets its server run here too: the stand-in of ``kiln.dev.testbed.standin`` on a
loopback address of its own (reported as the pod's IP) at the container's port; a server that
exits is reported as the kubelet's CrashLoopBackOff and started again, until the pod goes.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln.dev.testbed import gpu, standin

LABEL = "testbed.kiln.dev/local-process"
INIT_LABEL = "testbed.kiln.dev/local-init"
"""Pods (serving pods) whose init containers run here; kwok leaves them Pending, and once
every init container exited 0 the runner marks them Running and Ready, as a kubelet would."""
CLAIMED = "testbed.kiln.dev/claimed-by"
TERMINATION_ENV = "KILN_TERMINATION_LOG"
_MESSAGE_LIMIT = 4096
_ADDRESSES = itertools.count(1)
"""Stand-in servers listen on 127.0.<n // 250 + 1>.<n % 250 + 2>: one loopback address each."""


def _next_address() -> str:
    n = next(_ADDRESSES)
    return f"127.0.{n // 250 + 1}.{n % 250 + 2}"

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """What one run produced."""

    namespace: str
    name: str
    exit_code: int
    message: str
    output: str


@dataclass
class LocalProcessRunner:
    """Watches for labelled pods and runs them; ``finished`` lists completed runs."""

    api_client: Any
    extra_env: dict[str, str] = field(default_factory=dict)
    timeout: float = 600
    finished: list[Finished] = field(default_factory=list)

    def __post_init__(self) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(self.api_client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-process", daemon=True)
        self._init_thread = threading.Thread(target=self._loop, args=(INIT_LABEL,),
                                             name="local-init", daemon=True)
        self._identity = f"{os.getpid()}-{id(self)}"
        self._workers: list[threading.Thread] = []
        self._running = threading.Event()
        self._running.set()
        self._kills = 0
        self._kills_lock = threading.Lock()
        self._init_messages: dict[tuple[str, str], dict[str, str]] = {}

    def pause(self) -> None:
        """Leave new pods alone (they stay Running) until ``resume``."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def kill_next(self, count: int) -> None:
        """SIGKILL the next ``count`` runs soon after they start (exit code 137), as when
        a node or the OOM killer takes a pod."""
        with self._kills_lock:
            self._kills += count

    def _take_kill(self) -> bool:
        with self._kills_lock:
            if self._kills > 0:
                self._kills -= 1
                return True
            return False

    def start(self) -> LocalProcessRunner:
        self._thread.start()
        self._init_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._init_thread.join(timeout=10)
        for worker in self._workers:
            worker.join(timeout=self.timeout)

    def __enter__(self) -> LocalProcessRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self, label: str = LABEL) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            if not self._running.wait(timeout=0.5):
                continue
            try:
                stream = watch.Watch().stream(
                    self._core.list_pod_for_all_namespaces, label_selector=label,
                    timeout_seconds=2)
                for event in stream:
                    pod = event["object"]
                    if not self._running.is_set():
                        break
                    if event["type"] != "DELETED" and self._claimable(pod, label):
                        self._claim_and_run(pod, label)
                    if self._stop.is_set():
                        break
            except Exception as error:  # keep watching whatever one event did
                log.warning("local-process watch failed: %s", error)
                time.sleep(0.5)

    @staticmethod
    def _claimable(pod: Any, label: str = LABEL) -> bool:
        annotations = pod.metadata.annotations or {}
        phase = "Running" if label == LABEL else "Pending"
        bound = label == LABEL or bool(pod.spec.node_name)
        return bool(pod.status.phase == phase and bound and CLAIMED not in annotations
                    and pod.metadata.deletion_timestamp is None)

    def _claim_and_run(self, pod: Any, label: str = LABEL) -> None:
        from kubernetes import client

        body = {"metadata": {"annotations": {CLAIMED: self._identity},
                             "resourceVersion": pod.metadata.resource_version}}
        try:  # the resourceVersion makes the claim a compare-and-swap
            self._core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body)
        except client.ApiException as error:
            if error.status in (404, 409):
                return
            raise
        run = self._run if label == LABEL else self._run_init
        worker = threading.Thread(target=run, args=(pod,), daemon=True)
        self._workers.append(worker)
        worker.start()

    def _run_init(self, pod: Any) -> None:
        """Run the init containers in order; report the pod Running (its stand-in server
        serving, where its engine asks for one), or the first failure."""
        namespace, name = pod.metadata.namespace, pod.metadata.name
        with tempfile.TemporaryDirectory(prefix=f"pod-{name}-") as scratch:
            for container in pod.spec.init_containers or []:
                code, message, output = self._run_one(pod, container, Path(scratch))
                self.finished.append(Finished(namespace, name, code, message, output))
                self._init_messages.setdefault((namespace, name), {})[container.name] = message
                if code != 0:
                    self._report_init_failed(pod, container, code, message)
                    return
            engine = self._standin_engine(pod, Path(scratch))
            if engine is None:
                self._report_running(pod)
                return
            self._serve(pod, engine)

    def _standin_engine(self, pod: Any, root: Path) -> Path | None:
        """The main container's emptyDir that holds ``standin.json``, if any."""
        container = pod.spec.containers[0]
        for local in self._mount_map(pod, container, root).values():
            if (Path(local) / standin.FILE).is_file():
                return Path(local)
        return None

    def _serve(self, pod: Any, engine: Path) -> None:
        """Run the stand-in for ``pod`` until the pod goes; a server that exits is reported
        as CrashLoopBackOff and started again after a back-off."""
        container = pod.spec.containers[0]
        port = next((p.container_port for p in container.ports or []), 8000)
        address, restarts = _next_address(), 0
        argv = [sys.executable, "-m", "kiln.dev.testbed.standin", "--engine", str(engine),
                "--host", address, "--port", str(port)]
        log.info("local-process: stand-in server for pod %s/%s on %s:%s", pod.metadata.namespace,
                 pod.metadata.name, address, port)
        output = engine.parent / "standin.log"
        while not self._stop.is_set() and self._present(pod):
            with output.open("w") as sink:
                process = subprocess.Popen(argv, env={**os.environ, **self.extra_env},
                                           stdout=sink, stderr=subprocess.STDOUT, text=True)
            try:
                if _healthy(address, port, process):
                    self._report_running(pod, address, restarts)
                    while process.poll() is None and not self._stop.is_set():
                        if not self._present(pod):
                            return
                        time.sleep(0.5)
                if process.poll() is None:
                    return  # stopped
                out = output.read_text(errors="replace")
                restarts += 1
                self._report_crash(pod, container, process.returncode, out[-_MESSAGE_LIMIT:],
                                   restarts)
                time.sleep(1)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()

    def _present(self, pod: Any) -> bool:
        from kubernetes import client

        try:
            seen = self._core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        except client.ApiException as error:
            return bool(error.status != 404)
        return bool(seen.metadata.uid == pod.metadata.uid
                    and seen.metadata.deletion_timestamp is None)

    def _report_crash(self, pod: Any, container: Any, code: int, message: str,
                      restarts: int) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "phase": "Running",
            "containerStatuses": [{
                "name": container.name, "image": container.image, "ready": False,
                "started": False, "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": (
                    f"back-off 10s restarting failed container={container.name}")}},
                "lastState": {"terminated": {"exitCode": code, "reason": "Error",
                                             "message": message, "startedAt": now,
                                             "finishedAt": now}}}],
            "conditions": [
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "lastTransitionTime": now}],
        }
        with contextlib.suppress(Exception):
            self._core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _run_one(self, pod: Any, container: Any, root: Path) -> tuple[int, str, str]:
        mounts = self._mount_map(pod, container, root)
        termination = root / f"termination-log-{container.name}"
        env = {**os.environ, **self.extra_env,
               **self._gpu_env(pod),
               **{k: _map_paths(v, mounts) for k, v in self._env(pod, container).items()},
               TERMINATION_ENV: str(termination)}
        argv = [_map_paths(a, mounts) for a in [*(container.command or []),
                                                *(container.args or [])]]
        log.info("local-process: running %s of pod %s/%s: %s", container.name,
                 pod.metadata.namespace, pod.metadata.name, argv)
        code, output = self._execute(argv, env, root)
        message = termination.read_text(errors="replace") if termination.exists() else ""
        if not message and code != 0:
            message = output[-_MESSAGE_LIMIT:]
        return code, message[:_MESSAGE_LIMIT], output

    def _report_running(self, pod: Any, address: str = "10.0.0.1", restarts: int = 0) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        done = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        # as a kubelet does, the init containers' termination messages stay in the status
        messages = self._init_messages.get((pod.metadata.namespace, pod.metadata.name), {})
        status = {
            "phase": "Running", "startTime": now, "podIP": address,
            "podIPs": [{"ip": address}],
            "initContainerStatuses": [
                {"name": c.name, "image": c.image, "ready": True, "restartCount": 0,
                 "state": {"terminated": {**done, **({"message": said} if (said := messages.get(
                     c.name)) else {})}}} for c in pod.spec.init_containers or []],
            "containerStatuses": [
                {"name": c.name, "image": c.image, "ready": True, "started": True,
                 "restartCount": restarts, "state": {"running": {"startedAt": now}}}
                for c in pod.spec.containers],
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": now}
                           for kind in ("PodScheduled", "Initialized", "ContainersReady",
                                        "Ready")],
        }
        with contextlib.suppress(Exception):
            self._core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _report_init_failed(self, pod: Any, failed: Any, code: int, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {"exitCode": code, "reason": "Error", "message": message,
                      "startedAt": now, "finishedAt": now}
        waiting = {"reason": "CrashLoopBackOff",
                   "message": f"back-off 10s restarting failed container={failed.name}"}
        status = {
            "phase": "Pending", "startTime": now,
            "initContainerStatuses": [{
                "name": failed.name, "image": failed.image, "ready": False,
                "restartCount": 1, "state": {"waiting": waiting},
                "lastState": {"terminated": terminated}}],
            "containerStatuses": [
                {"name": c.name, "image": c.image, "ready": False, "started": False,
                 "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
                for c in pod.spec.containers],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "False", "lastTransitionTime": now,
                 "reason": "ContainersNotInitialized"},
                {"type": "Ready", "status": "False", "lastTransitionTime": now}],
        }
        with contextlib.suppress(Exception):
            self._core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _run(self, pod: Any) -> None:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        with tempfile.TemporaryDirectory(prefix=f"pod-{name}-") as scratch:
            root = Path(scratch)
            mounts = self._mount_map(pod, container, root)
            termination = root / "termination-log"
            # Only the pod's own values are mapped: this process's (PYTHONPATH under /work,
            # say) are the host's paths, not the pod's.
            env = {**os.environ, **self.extra_env,
                   **self._gpu_env(pod),
                   **{k: _map_paths(v, mounts) for k, v in self._env(pod, container).items()},
                   TERMINATION_ENV: str(termination)}
            argv = [_map_paths(a, mounts) for a in [*(container.command or []),
                                                    *(container.args or [])]]
            log.info("local-process: running pod %s/%s: %s", namespace, name, argv)
            code, output = self._execute(argv, env, root)
            message = termination.read_text(errors="replace") if termination.exists() else ""
            if not message and code != 0:
                message = output[-_MESSAGE_LIMIT:]
            message = message[:_MESSAGE_LIMIT]
        self._report(pod, container, code, message)
        self.finished.append(Finished(namespace, name, code, message, output))

    def _execute(self, argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
        try:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        except OSError as error:
            return 127, str(error)
        if self._take_kill():
            time.sleep(0.2)
            process.kill()
            out, _ = process.communicate()
            return 137, out
        try:
            out, _ = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            return 137, out + "\nkilled: timed out"
        code = process.returncode
        return (128 - code if code < 0 else code), out  # killed by signal N: 128 + N

    def _report(self, pod: Any, container: Any, code: int, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "message": message, "startedAt": now, "finishedAt": now}
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{
                "name": container.name, "image": container.image, "ready": False,
                "restartCount": 0, "started": False, "state": {"terminated": terminated},
            }],
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
            ],
        }
        with contextlib.suppress(Exception):
            self._core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status})

    @staticmethod
    def _mount_map(pod: Any, container: Any, root: Path) -> dict[str, str]:
        empty_dirs = {v.name for v in pod.spec.volumes or [] if v.empty_dir is not None}
        mapping: dict[str, str] = {}
        for mount in container.volume_mounts or []:
            if mount.name in empty_dirs:
                local = root / "volumes" / mount.name
                local.mkdir(parents=True, exist_ok=True)
                mapping[mount.mount_path.rstrip("/")] = str(local)
        return mapping

    def _gpu_env(self, pod: Any) -> dict[str, str]:
        """The fake nvidia-smi of the pod's node (kiln.dev.testbed.gpu)."""
        from kubernetes import client

        if not pod.spec.node_name:
            return {}
        try:
            return gpu.env_for(self._core.read_node(pod.spec.node_name))
        except client.ApiException:
            return {}

    def _env(self, pod: Any, container: Any) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from is not None:
                resolved = self._resolve(pod, var.value_from)
                if resolved is not None:
                    env[var.name] = resolved
        return env

    def _resolve(self, pod: Any, source: Any) -> str | None:
        from kubernetes import client

        namespace = pod.metadata.namespace
        try:
            if source.secret_key_ref is not None:
                ref = source.secret_key_ref
                secret = self._core.read_namespaced_secret(ref.name, namespace)
                raw = (secret.data or {}).get(ref.key)
                return base64.b64decode(raw).decode() if raw is not None else None
            if source.config_map_key_ref is not None:
                ref = source.config_map_key_ref
                data = self._core.read_namespaced_config_map(ref.name, namespace).data or {}
                value: str | None = data.get(ref.key)
                return value
        except client.ApiException:
            return None
        if source.field_ref is not None:
            fields = {"metadata.name": pod.metadata.name, "metadata.namespace": namespace,
                      "spec.nodeName": pod.spec.node_name or ""}
            return fields.get(source.field_ref.field_path)
        return None


def _healthy(address: str, port: int, process: subprocess.Popen[str],
             timeout: float = 30) -> bool:
    """Whether the server answers ``/health`` (the readiness probe) before it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://{address}:{port}/health", timeout=1) as reply:
            if reply.status == 200:
                return True
        time.sleep(0.1)
    return False


def _map_paths(value: str, mounts: dict[str, str]) -> str:
    for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path + "/"):
            return local + value[len(mount_path):]
    return value
