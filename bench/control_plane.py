"""Benchmark: the EngineBuild controller's cost on a real control plane (issue 10).

Run: python bench/control_plane.py [--n 100 --m 300 --burst 100 --life 10 --hits 30].
Starts its own test bed, moto's S3 and ``kiln run``; prints each figure beside a floor
measured in the same run, as a ratio, and writes bench/out/control_plane.json (and
control_plane.png when matplotlib is installed).

Floors (measured before the operator starts, same apiserver):
- create RTT: one ConfigMap create round trip from Python;
- watch-to-create: a plain-Python loop that watches EngineBuilds and creates a ConfigMap
  for each, timed from the EngineBuild's create to the ConfigMap appearing in a watch.

Figures:
1. EngineBuild created -> its Job exists (p50/p99; one at a time, ``--n`` distinct keys
   while ``--m`` other EngineBuilds and their Jobs exist).
2. Burst: ``--burst`` EngineBuilds created at once until all have Jobs (per second).
4. API requests per EngineBuild life (created, built by the real kiln-builder, Ready,
   idle, deleted) by verb and resource, from the apiserver's ``apiserver_request_total``;
   and requests while idle.
3. Operator RSS: idle, with ``--m`` others and their Jobs at rest, at the end.
5. Cache hit: an EngineBuild whose engine is in the store -> Ready (p50/p99).
6. An engine Ready -> the serving Deployment's pod template names it (p50/p99): an
   EngineDeployment serves an EngineBuild whose spec is switched between engines already in
   the store; timed from the watch seeing the EngineBuild's engine Ready to the watch seeing
   the Deployment's template annotated with its key.
7. SIGTERM -> the operator has exited, with every object of the run still there.

``--profile DIR``: py-spy (on PATH) samples the operator while figure 1 is timed and during
the burst, and dumps its threads once at rest among the ``--m`` others; DIR gets each
profile's collapsed stacks and the run's summary its top frames by share of samples.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from kubernetes import client, watch

from kiln import GROUP, VERSION
from kiln.dev import signing
from kiln.dev.testbed import checkpoint
from kiln.dev.testbed.cluster import Cluster, running
from kiln.dev.testbed.localproc import LABEL, LocalProcessRunner
from kiln.dev.testbed.s3 import moto_server
from kiln.domain.labels import KEY_ANNOTATION

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
EB = "enginebuilds"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": pct(values, 0.5) * 1e3, "p99_ms": pct(values, 0.99) * 1e3,
            "max_ms": max(values) * 1e3, "mean_ms": statistics.fmean(values) * 1e3}


class Seen:
    """First time each object name was seen by a watch (optionally: when ``ok`` held)."""

    def __init__(self, list_fn: Callable[..., Any], namespace: str,
                 ok: Callable[[dict[str, Any]], str | None], api: client.ApiClient) -> None:
        self.at: dict[str, float] = {}
        self.history: list[tuple[float, str]] = []
        """Every change of what ``ok`` returns (across all objects), in order."""
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._args = (list_fn, namespace, ok, api)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        list_fn, namespace, ok, api = self._args
        # Reconnects resume from the last resourceVersion: a fresh watch replays every object
        # as ADDED, and parsing thousands of Jobs would delay (and so inflate) the timings.
        version: str | None = None
        while not self._stop.is_set():
            stream = watch.Watch()
            resume = {"resource_version": version} if version else {}
            try:
                for event in stream.stream(list_fn, namespace, timeout_seconds=5, **resume):
                    obj = event["raw_object"] if "raw_object" in event else event["object"]
                    if not isinstance(obj, dict):
                        obj = api.sanitize_for_serialization(obj)
                    name = ok(obj)
                    if name and (not self.history or self.history[-1][1] != name):
                        with self.cond:
                            now = time.monotonic()
                            self.at.setdefault(name, now)
                            self.history.append((now, name))
                            self.cond.notify_all()
                    if self._stop.is_set():
                        return
                version = stream.resource_version
            except Exception:
                version = None  # expired (410) or cut: list again

    def wait(self, names: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not names <= set(self.at):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def first_after(self, name: str, after: float, timeout: float) -> float | None:
        """When ``name`` was (next) seen at or after ``after``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [t for t, n in self.history if n == name and t >= after]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def wait_any(self, timeout: float, after: float = 0.0) -> bool:
        """Whether anything was seen at or after ``after`` (waiting up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(t >= after for t, _ in self.history):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def stop(self) -> None:
        self._stop.set()


def job_owner(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return refs[0]["name"] if refs else None


def eb_ready(obj: dict[str, Any]) -> str | None:
    status = obj.get("status") or {}
    return obj["metadata"]["name"] if status.get("phase") == "Ready" else None


def ready_key(obj: dict[str, Any]) -> str | None:
    """The key of the (one) engine once it is in the store."""
    for engine in (obj.get("status") or {}).get("engines") or []:
        if engine.get("state") in ("Ready", "Cached") and engine.get("key"):
            return str(engine["key"])
    return None


def template_key(obj: dict[str, Any]) -> str | None:
    notes = obj["spec"]["template"]["metadata"].get("annotations") or {}
    return notes.get(KEY_ANNOTATION)


def engine_build(name: str, source: str, batch: int, targets: bool = True) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
            "metadata": {"name": name},
            "spec": {"model": {"source": source},
                     "targets": [{"gpu": "H100-SXM"}] if targets else [],
                     "build": {"backend": "pytorch", "dtype": "bfloat16",
                               "maxBatchSize": batch}}}


class Bench:
    def __init__(self, kube: Cluster, s3_endpoint: str, args: argparse.Namespace) -> None:
        self.kube = kube
        self.api = kube.api_client
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.s3_endpoint = s3_endpoint
        self.args = args
        self.operator: subprocess.Popen[bytes] | None = None

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def create_eb(self, namespace: str, body: dict[str, Any]) -> float:
        started = time.monotonic()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB, body)
        return started

    # -- floors ----------------------------------------------------------------------------

    def floor_create(self, count: int) -> list[float]:
        ns = self.namespace("floor-create")
        times = []
        for i in range(count):
            started = time.monotonic()
            self.core.create_namespaced_config_map(ns, {"metadata": {"name": f"c{i}"}})
            times.append(time.monotonic() - started)
        return times

    def floor_loop(self, count: int, burst: int, source: str) -> tuple[list[float], float]:
        """A plain-Python controller: watch EngineBuilds, create a ConfigMap for each."""
        ns = self.namespace("floor-loop")
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    for event in watch.Watch().stream(
                            self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, EB,
                            timeout_seconds=5):
                        if event["type"] == "ADDED":
                            name = event["object"]["metadata"]["name"]
                            with contextlib.suppress(client.ApiException):
                                self.core.create_namespaced_config_map(
                                    ns, {"metadata": {"name": f"out-{name}"}})
                        if stop.is_set():
                            return

        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        seen = Seen(self.core.list_namespaced_config_map, ns,
                    lambda o: o["metadata"]["name"].removeprefix("out-"), self.api)
        time.sleep(1.0)
        latencies = []
        for i in range(count):
            name = f"f{i}"
            started = self.create_eb(ns, engine_build(name, source, 1000 + i, targets=False))
            seen.wait({name}, 30)
            latencies.append(seen.at[name] - started)
        names = {f"fb{i}" for i in range(burst)}
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: self.create_eb(
                ns, engine_build(n, source, 1, targets=False)), sorted(names)))
        seen.wait(names, 120)
        rate = burst / (max(seen.at[n] for n in names) - started)
        stop.set()
        seen.stop()
        return latencies, rate

    # -- the operator ----------------------------------------------------------------------

    def start_operator(self, log: Path) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig),
               "AWS_ENDPOINT_URL": self.s3_endpoint, "KILN_DEFAULT_STORE": "s3://engines/",
               "KILN_BUILDER_IMAGE": "kiln-builder:bench",
               "KILN_BUILD_ENV": json.dumps({"AWS_ENDPOINT_URL": self.s3_endpoint}),
               "KILN_WARMUP_RUNTIME": "none",  # the control plane is measured, not builds
               "KILN_BUILD_POD_LABELS": json.dumps({LABEL: "true"}),
               "KILN_METRICS_PORT": "0",
               # the bench's checkpoint is uploaded whole just before: no upload to wait out
               "KILN_REBUILD_SETTLE": "0s",
               "KILN_SIGNING_KEY_FILE": str(signing.write_key(log.parent / "signing-key.pem"))}
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "run"], env=env, stdout=log.open("ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop_operator(self) -> float | None:
        """SIGTERM the operator; seconds until it exited (None: it was not running, or it
        was killed after 60 s)."""
        if self.operator is None or self.operator.poll() is not None:
            return None
        started = time.monotonic()
        self.operator.send_signal(signal.SIGTERM)
        try:
            self.operator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.operator.kill()
            self.operator.wait()
            return None
        return time.monotonic() - started

    def operator_rss_mib(self) -> float:
        assert self.operator is not None
        status = Path(f"/proc/{self.operator.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    # -- figures ---------------------------------------------------------------------------

    def latency(self, count: int, others: int, source: str,
                settled: Callable[[], None] = lambda: None) -> tuple[list[float], float]:
        ns = self.namespace("latency")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.create_eb(
                ns, engine_build(f"other-{i}", source, 5000 + i)),
                range(others)))
        seen_others = Seen(lambda namespace, **kw: self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, EB, **kw), ns,
            lambda o: o["metadata"]["name"] if (o.get("status") or {}).get("phase") else None,
            self.api)
        settle_started = time.monotonic()
        seen_others.wait({f"other-{i}" for i in range(others)}, 300)
        settle = time.monotonic() - settle_started
        seen_others.stop()
        settled()
        seen = Seen(self.batch.list_namespaced_job, ns, job_owner, self.api)
        time.sleep(1.0)
        latencies = []
        for i in range(count):
            name = f"eb-{i}"
            started = self.create_eb(ns, engine_build(name, source, 10 + i))
            if seen.wait({name}, 60):
                latencies.append(seen.at[name] - started)
        seen.stop()
        return latencies, settle

    def burst(self, count: int, source: str) -> float:
        ns = self.namespace("burst")
        seen = Seen(self.batch.list_namespaced_job, ns, job_owner, self.api)
        time.sleep(1.0)
        names = [f"b-{i}" for i in range(count)]
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.create_eb(
                ns, engine_build(names[i], source, 20000 + i)), range(count)))
        ok = seen.wait(set(names), 300)
        seen.stop()
        done = max(seen.at[n] for n in names) if ok else time.monotonic()
        return count / (done - started)

    def requests(self) -> collections.Counter[tuple[str, str, str]]:
        """``apiserver_request_total`` summed by (verb, resource, subresource)."""
        pki = self.kube.pki
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        with urllib.request.urlopen(f"{self.kube.server}/metrics", context=context,
                                    timeout=10) as response:
            text = response.read().decode()
        totals: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            totals[(labels.get("verb", ""), labels.get("resource", ""),
                    labels.get("subresource", ""))] += int(float(line.rsplit(" ", 1)[1]))
        return totals

    def life(self, count: int, source: str, idle: float) -> dict[str, Any]:
        """Requests per EngineBuild life: built by the real builder, Ready, idle, deleted."""
        ns = self.namespace("life")
        seen = Seen(lambda namespace, **kw: self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, EB, **kw), ns, eb_ready, self.api)
        time.sleep(1.0)
        before = self.requests()
        names = {f"l-{i}" for i in range(count)}
        for i, name in enumerate(sorted(names)):
            self.create_eb(ns, engine_build(name, source, 30000 + i))
        ok = self.built(seen, ns, names, 300)
        # Ready comes with the manifest; idle starts once the Jobs are Complete too.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                j.status.succeeded for j in self.batch.list_namespaced_job(ns).items):
            time.sleep(0.5)
        time.sleep(5)
        built = self.requests()
        time.sleep(idle)
        idled = self.requests()
        for name in names:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, EB, name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, EB)["items"]:
            time.sleep(0.5)
        time.sleep(3)
        after = self.requests()
        seen.stop()
        events = self.core.list_namespaced_event(ns).items
        kiln_events = sum(1 for e in events
                          if (e.reporting_component or (e.source and e.source.component))
                          == "kiln")

        def per(a: collections.Counter[tuple[str, str, str]],
                b: collections.Counter[tuple[str, str, str]], n: float) -> dict[str, float]:
            return {"/".join(k).rstrip("/"): round((b[k] - a[k]) / n, 2)
                    for k in sorted(set(b) | set(a)) if b[k] - a[k] > 0}

        life = per(before, after, count)
        idle_rate = per(built, idled, idle / 60)  # requests per minute while nothing changes
        # Writes the operator alone makes: EngineBuild (status) patches, Job create/patch;
        # and its Events (counted from the Events themselves: the controllers post some too).
        writes = sum(v for k, v in life.items()
                     if k.split("/")[0] in ("PATCH", "UPDATE", "APPLY")
                     and k.split("/")[1] == EB) + sum(
            v for k, v in life.items() if k in ("POST/jobs", "PATCH/jobs"))
        return {"all_ready": ok, "count": count, "per_life": life,
                "operator_writes_per_life": round(writes, 2),
                "kiln_events_per_life": round(kiln_events / count, 2),
                "idle_seconds": idle, "idle_requests_per_minute": idle_rate,
                "note": "per_life includes the bench's own create/delete/watch of EngineBuilds "
                        "and every controller's requests (Job, pod, scheduler, kwok)"}

    def built(self, seen: Seen, namespace: str, names: set[str], timeout: float) -> bool:
        """Wait until every EngineBuild of ``names`` is Ready; stop the bench at once, naming
        the cause, when one of them failed (every figure after it would be meaningless)."""
        deadline = time.monotonic() + timeout
        while not seen.wait(names, min(2.0, max(0.0, deadline - time.monotonic()))):
            for eb in self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, EB)["items"]:
                status = eb.get("status") or {}
                if status.get("phase") == "Failed":
                    why = [c.get("message") for c in status.get("conditions", [])
                           if c.get("type") == "Ready"] or [status]
                    raise SystemExit(f"bench: build of {eb['metadata']['name']} failed: "
                                     f"{why[0]}")
            if time.monotonic() >= deadline:
                return False
        return True

    def serve_switches(self, count: int, source: str, batches: list[int]) -> list[float]:
        """6. Engine Ready -> Deployment template updated, ``count`` times."""
        ns = self.namespace("serve")
        engines = Seen(lambda namespace, **kw: self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, EB, **kw), ns, ready_key, self.api)
        apps = client.AppsV1Api(self.api)
        templates = Seen(apps.list_namespaced_deployment, ns, template_key, self.api)
        time.sleep(1.0)
        self.create_eb(ns, engine_build("s", source, batches[0]))
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "enginedeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
            "metadata": {"name": "s"},
            "spec": {"engineBuildRef": {"name": "s"}, "gpu": "H100-SXM", "replicas": 1}})
        if not engines.wait_any(60):
            raise RuntimeError("the first engine never became Ready")
        if templates.first_after(engines.history[0][1], 0, 60) is None:
            raise RuntimeError("the first engine was never served")
        latencies: list[float] = []
        for i in range(1, count + 1):
            started = time.monotonic()
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, EB, "s",
                {"spec": {"build": {"maxBatchSize": batches[i % len(batches)]}}})
            if not engines.wait_any(30, after=started):
                continue
            ready_at, key = next((t, n) for t, n in engines.history if t >= started)
            served_at = templates.first_after(key, ready_at, 30)
            if served_at is not None:
                latencies.append(served_at - ready_at)
        engines.stop()
        templates.stop()
        return latencies

    def cache_hits(self, count: int, source: str, batches: list[int]) -> list[float]:
        ns = self.namespace("hits")
        seen = Seen(lambda namespace, **kw: self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, EB, **kw), ns, eb_ready, self.api)
        time.sleep(1.0)
        latencies = []
        for i in range(count):
            name = f"h-{i}"
            started = self.create_eb(ns, engine_build(name, source, batches[i % len(batches)]))
            if seen.wait({name}, 30):
                latencies.append(seen.at[name] - started)
        seen.stop()
        return latencies


class Profiler:
    """py-spy on the operator (``--profile``): collapsed stacks of a phase, a dump at a
    moment, and the top frames of each recording."""

    def __init__(self, out: Path | None, pid: Callable[[], int]) -> None:
        self.out = out
        self.pid = pid
        self.summaries: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def record(self, name: str) -> Any:
        if self.out is None:
            yield
            return
        path = self.out / f"{name}.txt"
        # --idle: a thread waiting on the store or the API server is what the figure costs
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.pid()), "--format", "raw", "--rate", "50",
             "--nonblocking", "--idle", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
            if path.exists():
                self.summaries[name] = top_frames(path.read_text())

    def dump(self, name: str) -> None:
        if self.out is not None:
            done = subprocess.run(["py-spy", "dump", "--pid", str(self.pid())],
                                  capture_output=True, text=True, check=False)
            (self.out / f"{name}.txt").write_text(done.stdout + done.stderr)


IDLE_LEAVES = ("wait (threading.py", "select (selectors.py", "get (queue.py",
               "_worker (concurrent/futures/thread.py", "sleep (")
"""Leaves of a thread with nothing to do (a worker waiting for work, the event loop)."""


def top_frames(collapsed: str, count: int = 15) -> dict[str, Any]:
    """Shares of samples: each frame's inclusive share (kiln's, Kopf's and the clients'
    frames, a frame counted once per stack), and the leaves' of the threads that were not
    idle, by function and file (line numbers dropped)."""
    total = idle = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += samples
        if frames[-1].startswith(IDLE_LEAVES):
            idle += samples
        else:
            leaves[frames[-1]] += samples
        for frame in set(frames):
            if any(part in frame for part in ("kiln/", "kopf/", "botocore/", "kubernetes/",
                                              "urllib3/")):
                inclusive[frame] += samples

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / max(total, 1), 1)) for f, v in counter.most_common(count)]

    return {"samples": total, "idle_pct": round(100 * idle / max(total, 1), 1),
            "inclusive_pct": shares(inclusive), "busy_leaf_pct": shares(leaves)}


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = {"EB -> Job": result["create_to_job"]["samples_ms"],
              "floor: watch->create": result["floor_watch_to_create"]["samples_ms"],
              "floor: create RTT": result["floor_create_rtt"]["samples_ms"],
              "cache hit -> Ready": result["cache_hit_to_ready"]["samples_ms"],
              "engine Ready -> template": result["ready_to_template"]["samples_ms"]}
    for label, values in series.items():
        ordered = sorted(values)
        left.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label)
    left.set_xscale("log")
    left.set_xlabel("ms")
    left.set_ylabel("fraction")
    left.set_title("latency CDFs")
    left.legend(fontsize=8)
    names = ["burst EB -> Job", "floor burst"]
    right.bar(names, [result["burst"]["per_second"], result["floor_burst_per_second"]])
    right.axhline(25, color="red", linestyle="--", label="goal 25/s")
    right.set_ylabel("objects per second")
    right.set_title("burst")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="EngineBuilds timed one by one")
    parser.add_argument("--m", type=int, default=300, help="other EngineBuilds existing")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--life", type=int, default=10, help="EngineBuilds built for real")
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--hits", type=int, default=30)
    parser.add_argument("--tag", default="", help="suffix for the output files")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the operator during figures 1 and 2; write here")
    args = parser.parse_args()
    # Started in the background, the bench (and so py-spy, which stops on SIGINT) would
    # ignore SIGINT: Ctrl-C or kill -INT stops it and its test bed cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    result: dict[str, Any] = {"params": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in vars(args).items()}, "cpus": os.cpu_count(),
                              "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp, moto_server() as endpoint, \
            running(Path(tmp) / "cluster") as kube:
        kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kube.kubectl("wait", "--for=condition=Established", "crd/enginebuilds.kiln.dev",
                     "--timeout=60s")
        s3c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in ("engines", "models"):
            s3c.create_bucket(Bucket=bucket)
        source = checkpoint.upload(s3c, checkpoint.write(Path(tmp) / "ckpt", seed=7),
                                   "models", "llama/")
        bench = Bench(kube, endpoint, args)

        rtt = bench.floor_create(args.n)
        loop, loop_rate = bench.floor_loop(args.n, args.burst, source)
        result["floor_create_rtt"] = summary(rtt) | {"samples_ms": [t * 1e3 for t in rtt]}
        result["floor_watch_to_create"] = summary(loop) | {
            "samples_ms": [t * 1e3 for t in loop]}
        result["floor_burst_per_second"] = loop_rate

        # The floors' objects go before the operator starts: its first pass over them
        # would be counted in the figures below.
        for ns in ("floor-create", "floor-loop"):
            bench.core.delete_namespace(ns)
        while any(n.metadata.name.startswith("floor-")
                  for n in bench.core.list_namespace().items):
            time.sleep(0.5)
        bench.start_operator(Path(tmp) / "kiln.log")
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        spy = Profiler(args.profile, lambda: bench.operator.pid if bench.operator else 0)
        time.sleep(10)  # started and listed (nothing to do yet)
        rss = {"idle": bench.operator_rss_mib()}
        runner = LocalProcessRunner(kube.api_client, extra_env={"AWS_ENDPOINT_URL": endpoint})
        try:
            with runner:
                result["life"] = bench.life(args.life, source, args.idle)
                batches = [30000 + i for i in range(args.life)]
                hits = bench.cache_hits(args.hits, source, batches)
                switches = bench.serve_switches(args.hits, source, batches)
            result["cache_hit_to_ready"] = summary(hits) | {"samples_ms": [t * 1e3 for t in hits]}
            result["ready_to_template"] = summary(switches) | {
                "samples_ms": [t * 1e3 for t in switches]}
            # No runner from here on: build pods stay Running (kwok) or Pending, never run.
            def at_rest() -> None:
                time.sleep(10)
                rss[f"{args.m} others and their Jobs"] = bench.operator_rss_mib()
                spy.dump(f"dump-at-rest-{args.m}")
                timed.enter_context(spy.record(f"create-to-job-{args.m}"))

            timed = contextlib.ExitStack()  # the profile of figure 1: its timed part only
            with timed:
                latencies, settle = bench.latency(args.n, args.m, source, at_rest)
            result["create_to_job"] = summary(latencies) | {
                "others": args.m, "others_settled_s": settle,
                "samples_ms": [t * 1e3 for t in latencies]}
            with spy.record(f"burst-{args.burst}"):
                rate = bench.burst(args.burst, source)
            result["burst"] = {"count": args.burst, "per_second": rate}
            rss["end"] = bench.operator_rss_mib()
            result["operator_rss_mib"] = rss
        finally:
            result["sigterm_exit_s"] = bench.stop_operator()
            result["profile"] = spy.summaries
            result["loadavg_end"] = os.getloadavg()
            log = (Path(tmp) / "kiln.log").read_text(errors="replace")
            lines = log.splitlines()
            errors = [i for i, line in enumerate(lines) if "[ERROR" in line]
            result["operator_log_errors"] = len(errors)
            result["operator_log_error_lines"] = [
                "\n".join(lines[i:i + 30]) for i in errors[:5]]

    floor_p50 = result["floor_watch_to_create"]["p50_ms"]
    floor_p99 = result["floor_watch_to_create"]["p99_ms"]
    cj, hit = result["create_to_job"], result["cache_hit_to_ready"]
    sw = result["ready_to_template"]
    lines = [
        f"floor: create RTT p50 {result['floor_create_rtt']['p50_ms']:.1f} ms, "
        f"p99 {result['floor_create_rtt']['p99_ms']:.1f} ms; watch->create p50 "
        f"{floor_p50:.1f} ms, p99 {floor_p99:.1f} ms; burst {loop_rate:.1f}/s",
        f"1. EB -> Job ({cj['n']}, {args.m} others): p50 {cj['p50_ms']:.1f} ms "
        f"(x{cj['p50_ms'] / floor_p50:.1f} floor), p99 {cj['p99_ms']:.1f} ms "
        f"(x{cj['p99_ms'] / floor_p99:.1f} floor); goal p99 < 300 ms",
        f"2. burst of {args.burst}: {result['burst']['per_second']:.1f}/s "
        f"(floor {loop_rate:.1f}/s, ratio {result['burst']['per_second'] / loop_rate:.2f}); "
        "goal >= 25/s",
        "3. operator RSS (MiB): " + ", ".join(
            f"{k} {v:.0f}" for k, v in result["operator_rss_mib"].items())
        + f" (end: {args.m + args.n + args.burst + args.life + args.hits + 1} EngineBuilds); "
        "goal < 200 MiB at 2000",
        f"4. per EB life: operator writes {result['life']['operator_writes_per_life']} "
        f"+ {result['life']['kiln_events_per_life']} Events (goal <= 6 writes); idle: "
        f"{result['life']['idle_requests_per_minute']} per minute",
        f"   all requests per life: {result['life']['per_life']}",
        f"5. cache hit -> Ready ({hit['n']}): p50 {hit['p50_ms']:.1f} ms "
        f"(x{hit['p50_ms'] / floor_p50:.1f} floor), p99 {hit['p99_ms']:.1f} ms "
        f"(x{hit['p99_ms'] / floor_p99:.1f} floor); goal p99 < 1 s",
        f"6. engine Ready -> Deployment template ({sw['n']}): p50 {sw['p50_ms']:.1f} ms "
        f"(x{sw['p50_ms'] / floor_p50:.1f} floor), p99 {sw['p99_ms']:.1f} ms "
        f"(x{sw['p99_ms'] / floor_p99:.1f} floor); goal p99 < 1 s",
        "7. SIGTERM -> exited: " + (f"{result['sigterm_exit_s']:.1f} s"
                                   if result["sigterm_exit_s"] is not None else "killed at 60 s")
        + f" ({args.m + args.n + args.burst + args.life + args.hits + 1} EngineBuilds); "
        "goal <= 5 s",
        f"load average (1, 5, 15 min): start {result['loadavg']}, "
        f"end {result['loadavg_end']} on {result['cpus']} cores",
        f"operator log errors: {result['operator_log_errors']}",
    ]
    for name, top in result["profile"].items():
        lines.append(f"profile {name}: {top['samples']} samples, idle {top['idle_pct']}%")
        lines += [f"   incl {pct_:5.1f}% {frame}" for frame, pct_ in top["inclusive_pct"]]
        lines += [f"   leaf {pct_:5.1f}% {frame}" for frame, pct_ in top["busy_leaf_pct"]]
    print("\n".join(lines))
    result["summary"] = lines
    OUT.mkdir(exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    (OUT / f"control_plane{tag}.json").write_text(json.dumps(result, indent=2))
    print(f"figures: {OUT / f'control_plane{tag}.json'}")
    if plot(result, OUT / f"control_plane{tag}.png"):
        print(f"plot: {OUT / f'control_plane{tag}.png'}")
    else:
        print("plot skipped: matplotlib is not installed (pip install -e '.[dev]')")


if __name__ == "__main__":
    main()
