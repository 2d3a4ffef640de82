"""The EngineDeployment controller end to end: the operator as a process, the real scheduler
and Deployment controller, kwok pods, builds run by the real kiln-builder (PyTorch backend on
the CPU), moto's S3."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator, custom, get_eb
from kiln import GROUP, VERSION
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.localproc import LocalProcessRunner
from kiln.domain.labels import ED_LABEL, KEY_ANNOTATION, KEY_LABEL, MODE_ANNOTATION
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
H100, A100, L40S, H200 = (nodes.H100.product, nodes.A100.product, nodes.L40S.product,
                          nodes.H200.product)


def engine_build(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
            "metadata": {"name": name},
            "spec": {"model": {"source": source},
                     "build": {"backend": "pytorch", "dtype": "bfloat16"}, **spec}}


def engine_deployment(name: str, build: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
            "metadata": {"name": name},
            "spec": {"engineBuildRef": {"name": build}, "replicas": 2, **spec}}


def create(kube: Cluster, namespace: str, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        plural = "enginebuilds" if body["kind"] == "EngineBuild" else "enginedeployments"
        custom(kube).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def get_ed(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "enginedeployments", name)
    return obj


def products(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["gpuProduct"]: p for p in status.get("products", [])}


def ed_ready(kube: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    ed = get_ed(kube, namespace, name)
    status = ed.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if (conditions.get("Ready") == "True"
            and status.get("observedGeneration") == ed["metadata"]["generation"]):
        return status
    return None


def engines(kube: Cluster, namespace: str, build: str) -> dict[str, dict[str, Any]]:
    status = get_eb(kube, namespace, build).get("status") or {}
    return {e["gpuProduct"]: e for e in status.get("engines", [])}


def pods(kube: Cluster, namespace: str, owner: str) -> list[Any]:
    return [p for p in client.CoreV1Api(kube.api_client).list_namespaced_pod(
        namespace, label_selector=f"{ED_LABEL}={owner}").items
        if p.metadata.deletion_timestamp is None]


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True"
               for c in (pod.status.conditions or []))


def deployments(kube: Cluster, namespace: str, owner: str) -> dict[str, Any]:
    items = client.AppsV1Api(kube.api_client).list_namespaced_deployment(
        namespace, label_selector=f"{ED_LABEL}={owner}").items
    return {d.metadata.labels["kiln.dev/gpu-product"]: d for d in items}


def serving(kube: Cluster, namespace: str, owner: str, key: str,
            replicas: int) -> list[Any] | None:
    """The pods, once exactly ``replicas`` of them run ``key`` and are Ready."""
    found = pods(kube, namespace, owner)
    if len(found) == replicas and all(
            is_ready(p) and p.metadata.annotations.get(KEY_ANNOTATION) == key for p in found):
        return found
    return None


def served(operator: Operator) -> dict[str, float]:
    """``kiln_engines_served`` by mode, read from the operator's ``/metrics``."""
    url = f"http://127.0.0.1:{operator.env['KILN_METRICS_PORT']}/metrics"
    deadline = time.monotonic() + 30
    while True:  # the operator may still be starting its metrics server
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return {line.split('mode="')[1].split('"')[0]: float(line.split()[-1])
            for line in text.splitlines() if line.startswith("kiln_engines_served{")}


def test_h100_deployment_lands_on_h100_nodes_and_serves_the_engine(
        kube: Cluster, namespace: str, weights: str, operator: Operator) -> None:
    before = served(operator)
    create(kube, namespace, engine_build("llama", weights),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    status = eventually(lambda: ed_ready(kube, namespace, "chat"), timeout=180)
    key = engines(kube, namespace, "llama")[H100]["key"]
    # The EngineBuild had no targets: the EngineDeployment asked for H100 in its status.
    assert get_eb(kube, namespace, "llama")["status"]["autoTargets"] == [f"{H100}@9.0"]
    (product,) = status["products"]
    assert (product["gpuProduct"], product["gpu"], product["engineKey"], product["mode"]) == (
        H100, "H100-SXM", key, "engine")
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)

    running = eventually(lambda: serving(kube, namespace, "chat", key, 2), timeout=30)
    assert {p.spec.node_name for p in running} <= set(nodes.H100.node_names())
    for pod in running:
        fetch = next(c for c in pod.spec.init_containers if c.name == "fetch-engine")
        assert fetch.args[fetch.args.index("--key") + 1] == key
        server = pod.spec.containers[0]
        assert "version_guard.py" in server.command[2], "the version guard runs first"
        assert server.args[0] == "trtllm-serve"
    (deployment,) = deployments(kube, namespace, "chat").values()
    assert deployment.metadata.owner_references[0].kind == "EngineDeployment"
    assert deployment.spec.template.spec.node_selector == {"nvidia.com/gpu.product": H100}
    core = client.CoreV1Api(kube.api_client)
    service = core.read_namespaced_service("chat", namespace)
    assert service.spec.selector == {ED_LABEL: "chat"}
    pdb = client.PolicyV1Api(kube.api_client).read_namespaced_pod_disruption_budget(
        "chat", namespace)
    assert pdb.spec.max_unavailable == 1
    # The rollout is counted: one more Deployment serving an engine; deleted, one fewer.
    assert eventually(lambda: served(operator)["engine"] == before["engine"] + 1 or None,
                      timeout=30)
    custom(kube).delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                 "enginedeployments", "chat")
    assert eventually(lambda: served(operator)["engine"] == before["engine"] or None,
                      timeout=30)


class Sampler:
    """Samples ready serving pods and the EngineDeployment's status until stopped."""

    def __init__(self, kube: Cluster, namespace: str, owner: str) -> None:
        self.kube, self.namespace, self.owner = kube, namespace, owner
        self.ready: list[int] = []
        self.keys: set[str] = set()
        self.modes: set[tuple[str, str | None]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            found = [p for p in pods(self.kube, self.namespace, self.owner) if is_ready(p)]
            self.ready.append(len(found))
            self.keys |= {p.metadata.annotations.get(KEY_ANNOTATION, "") for p in found}
            status = get_ed(self.kube, self.namespace, self.owner).get("status") or {}
            self.modes |= {(p["mode"], p.get("engineKey")) for p in status.get("products", [])}
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_new_weights_roll_onto_the_new_engine_without_losing_capacity(
        kube: Cluster, namespace: str, weights: str, s3_client: Any) -> None:
    create(kube, namespace,
           engine_build("llama", weights, rebuild={"onWeightChange": True, "pollInterval": "1m"}),
           engine_deployment("chat", "llama", gpu="H100-SXM"))
    eventually(lambda: ed_ready(kube, namespace, "chat"), timeout=180)
    old = engines(kube, namespace, "llama")[H100]["key"]
    eventually(lambda: serving(kube, namespace, "chat", old, 2), timeout=30)

    with Sampler(kube, namespace, "chat") as sampler:
        bucket, _, prefix = weights.removeprefix("s3://").partition("/")
        config = s3_client.get_object(Bucket=bucket, Key=f"{prefix}config.json")["Body"].read()
        s3_client.put_object(Bucket=bucket, Key=f"{prefix}config.json", Body=config + b"\n")

        def rolled() -> str | None:
            new = engines(kube, namespace, "llama")[H100]
            if new["key"] == old or new["state"] not in ("Ready", "Cached"):
                return None
            status = ed_ready(kube, namespace, "chat")
            if not status or products(status)[H100]["engineKey"] != new["key"]:
                return None
            return new["key"] if serving(kube, namespace, "chat", new["key"], 2) else None

        new_key = eventually(rolled, timeout=240)
        settled = len(sampler.ready)  # a few more samples after the rollout settled
        eventually(lambda: len(sampler.ready) >= settled + 10, timeout=30)
    assert sampler.ready, "the sampler ran"
    assert min(sampler.ready) >= 2, f"ready replicas dropped to {min(sampler.ready)}"
    assert {old, new_key} <= sampler.keys
    # While the new engine was building, the old one was kept (fallback previous).
    assert ("fallback", old) in sampler.modes
    assert ("engine", new_key) in sampler.modes


def test_fallback_serves_the_checkpoint_with_pytorch_until_the_engine_exists(
        kube: Cluster, namespace: str, weights: str, builders: LocalProcessRunner) -> None:
    builders.pause()
    try:
        create(kube, namespace, engine_build("llama", weights),
               engine_deployment("chat", "llama", gpu="H100-SXM", fallback="pytorch",
                                 replicas=1))

        def on_checkpoint() -> list[Any] | None:
            status = get_ed(kube, namespace, "chat").get("status") or {}
            product = products(status).get(H100)
            found = pods(kube, namespace, "chat")
            if not product or product["mode"] != "fallback" or len(found) != 1:
                return None
            building = engines(kube, namespace, "llama").get(H100, {}).get("state")
            return found if is_ready(found[0]) and building == "Building" else None

        (pod,) = eventually(on_checkpoint, timeout=120)
        assert pod.metadata.annotations[MODE_ANNOTATION] == "fallback"
        assert KEY_ANNOTATION not in pod.metadata.annotations
        args = pod.spec.containers[0].args
        assert args[args.index("--backend") + 1] == "pytorch"
        fetch = pod.spec.init_containers[0].args
        assert fetch[fetch.index("--source") + 1] == weights
        status = get_ed(kube, namespace, "chat")["status"]
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
        assert conditions["Reconciling"] == ("True", "WaitingForEngine")
        assert products(status)[H100].get("engineKey") is None
    finally:
        builders.resume()

    status = eventually(lambda: ed_ready(kube, namespace, "chat"), timeout=180)
    key = engines(kube, namespace, "llama")[H100]["key"]
    assert (products(status)[H100]["mode"], products(status)[H100]["engineKey"]) == (
        "engine", key)
    (pod,) = eventually(lambda: serving(kube, namespace, "chat", key, 1), timeout=60)
    assert pod.metadata.annotations[MODE_ANNOTATION] == "engine"
    fetch = pod.spec.init_containers[0].args
    assert fetch[fetch.index("--key") + 1] == key
    events = client.CoreV1Api(kube.api_client).list_namespaced_event(
        namespace, field_selector="involvedObject.name=chat").items
    assert {"ServingFallback", "ServingEngine"} <= {e.reason for e in events}


@pytest.fixture
def restore_pools(kube: Cluster) -> Iterator[None]:
    """Whatever a test does to the pools, the next test finds the default ones."""
    yield
    present = {p.name for p in kube.pools}
    if "h200" in present:
        kube.remove_pool("h200")
    if "a100" not in present:
        kube.add_pools([nodes.A100])
        kube.wait_nodes_ready()


@pytest.mark.usefixtures("restore_pools")
def test_hardware_change_builds_for_a_new_pool_and_drops_a_removed_one(
        kube: Cluster, namespace: str, weights: str) -> None:
    create(kube, namespace, engine_build("llama", weights),
           engine_deployment("chat", "llama", gpu="auto", replicas=1,
                             pool={"drainAfter": "5s"}))

    def serving_products(*wanted: str) -> dict[str, Any] | None:
        status = ed_ready(kube, namespace, "chat")
        return status if status and set(products(status)) == set(wanted) else None

    eventually(lambda: serving_products(A100, H100, L40S), timeout=240)
    assert set(deployments(kube, namespace, "chat")) == {A100, H100, L40S}

    kube.add_pools([nodes.H200])
    kube.wait_nodes_ready()
    status = eventually(lambda: serving_products(A100, H100, L40S, H200), timeout=240)
    eb = get_eb(kube, namespace, "llama")
    assert f"{H200}@9.0" in eb["status"]["autoTargets"]
    h200 = engines(kube, namespace, "llama")[H200]
    assert h200["target"] == "H200"
    assert products(status)[H200]["engineKey"] == h200["key"]
    # The H200 engine was built on an H200 node, and is served on H200 nodes.
    core = client.CoreV1Api(kube.api_client)
    (job,) = [j for j in client.BatchV1Api(kube.api_client).list_namespaced_job(
        namespace, label_selector=KEY_LABEL).items
        if j.metadata.annotations["kiln.dev/engine-key"] == h200["key"]]
    build_pods = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job.metadata.name}").items
    assert build_pods
    assert {p.spec.node_name for p in build_pods} <= set(nodes.H200.node_names())
    on_h200 = [p for p in pods(kube, namespace, "chat")
               if p.metadata.labels["kiln.dev/gpu-product"] == H200]
    assert on_h200
    assert {p.spec.node_name for p in on_h200} <= set(nodes.H200.node_names())

    kube.remove_pool("a100")
    eventually(lambda: serving_products(H100, L40S, H200), timeout=120)
    eventually(lambda: A100 not in deployments(kube, namespace, "chat"), timeout=60)
    # The EngineBuild follows (its own pass), and the Events come after the status write.
    eventually(lambda: not any(t.startswith(A100) for t in get_eb(
        kube, namespace, "llama")["status"]["autoTargets"]), timeout=30)

    def reasons() -> list[tuple[str, str]]:
        return [(e.reason, e.message) for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=chat").items]
    eventually(lambda: any(r == "ProductRemoved" and A100 in m for r, m in reasons()),
               timeout=30)
    assert any(r == "ProductMissing" and "A100" in m for r, m in reasons())
