"""Both reconcilers called directly, without Kopf, against the test bed's apiserver and moto's
S3 (the kubebuilder practice): a pass makes what exists match; a second pass changes nothing
and writes nothing; a fresh reconciler (an operator restarted) changes nothing either, even
after the weights moved behind a pin."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cluster.test_crds_admission import install_crds
from kiln import EB_PLURAL, ED_PLURAL, GROUP, VERSION
from kiln.config import OperatorConfig
from kiln.dev.testbed import checkpoint
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL, KEY_LABEL
from kiln.domain.pods import ObservedPod, observe_pod
from kiln.domain.pool import GpuNode, gpu_node
from kiln.domain.status import Event
from kiln.engine_build.jobs import ObservedJob, observe
from kiln.engine_build.pending import CreateFailure
from kiln.engine_build.queued import ObservedWorkload
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.engine_deployment.children import ObservedChild
from kiln.engine_deployment.children import observe as observe_child
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.deployments import observe as observe_deployment
from kiln.engine_deployment.reconciler import EngineDeploymentReconciler
from kiln.handlers.indexes import create_failure, is_build_create_failure
from kiln.kube.client import Client, Kube, load_config
from waiting import eventually

pytestmark = pytest.mark.cluster
WRITES = ("create_job", "set_job_owners", "delete_job", "patch_status", "apply",
          "delete_deployment", "post_event")


class Recording(Kube):
    """The real adapter, counting the calls that write, and every call (each one at least a
    request)."""

    def __init__(self) -> None:
        super().__init__(Client(load_config()))
        self.writes: list[str] = []
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if not name.startswith("_") and callable(attr) and name in vars(Kube):
            def counted(*args: Any, **kwargs: Any) -> Any:
                with self._lock:
                    self.calls.append(name)
                    if name in WRITES:
                        self.writes.append(name)
                return attr(*args, **kwargs)
            return counted
        return attr


class ApiWorld:
    """What the indexes would hold, read from the apiserver now."""

    def __init__(self, kube: Cluster) -> None:
        self.batch = client.BatchV1Api(kube.api_client)
        self.apps = client.AppsV1Api(kube.api_client)
        self.core = client.CoreV1Api(kube.api_client)
        self.policy = client.PolicyV1Api(kube.api_client)
        self.custom = client.CustomObjectsApi(kube.api_client)
        self.api = kube.api_client

    def _jobs(self) -> list[ObservedJob]:
        items = self.batch.list_job_for_all_namespaces(label_selector=KEY_LABEL).items
        return [observe(self.api.sanitize_for_serialization(j)) for j in items]

    def by_key(self, namespace: str, key: str) -> ObservedJob | None:
        items = self.batch.list_namespaced_job(namespace, label_selector=KEY_LABEL).items
        found = [observe(self.api.sanitize_for_serialization(j)) for j in items]
        return next((j for j in found if j.key == key), None)

    def owned_by(self, uid: str) -> list[ObservedJob]:
        return [j for j in self._jobs() if uid in j.owner_uids]

    def referencing(self, namespace: str, build: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                          ED_PLURAL)["items"]
        return [i for i in items if i["spec"]["engineBuildRef"]["name"] == build]

    def gpu_nodes(self) -> list[GpuNode]:
        nodes = [gpu_node(self.api.sanitize_for_serialization(n))
                 for n in self.core.list_node().items]
        return [n for n in nodes if n is not None]

    def engine_build(self, namespace: str, name: str) -> dict[str, Any] | None:
        return get(self.custom, namespace, EB_PLURAL, name)

    def job_pods(self, namespace: str, job: str) -> list[ObservedPod]:
        items = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        pods = [observe_pod(self.api.sanitize_for_serialization(p)) for p in items]
        return [p for p in pods if p.owner == job]

    def workload(self, namespace: str, job: str) -> ObservedWorkload | None:
        return None

    def create_failure(self, namespace: str, job: str) -> CreateFailure | None:
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={job}").items
        found = [create_failure(e) for e in map(self.api.sanitize_for_serialization, items)
                 if is_build_create_failure(e)]
        return max(found, key=lambda f: f.last.timestamp() if f.last else 0.0, default=None)

    def serving_pods(self, namespace: str, owner: str) -> list[ObservedPod]:
        items = self.core.list_namespaced_pod(namespace,
                                              label_selector=f"{ED_LABEL}={owner}").items
        return [observe_pod(self.api.sanitize_for_serialization(p)) for p in items]

    def deployments(self, namespace: str, owner: str) -> list[ObservedDeployment]:
        items = self.apps.list_namespaced_deployment(
            namespace, label_selector=f"{ED_LABEL}={owner}").items
        return [observe_deployment(self.api.sanitize_for_serialization(d)) for d in items]

    def children(self, namespace: str, owner: str) -> list[ObservedChild]:
        selector = f"{ED_LABEL}={owner}"
        found = [("Service", self.core.list_namespaced_service(namespace, label_selector=selector)),
                 ("PodDisruptionBudget", self.policy.list_namespaced_pod_disruption_budget(
                     namespace, label_selector=selector)),
                 ("ConfigMap", self.core.list_namespaced_config_map(
                     namespace, label_selector=selector))]
        return [observe_child(kind, self.api.sanitize_for_serialization(item))
                for kind, listed in found for item in listed.items]


def get(custom: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                              plural, name)
    return obj


@pytest.fixture
def adapter(kube: Cluster, monkeypatch: pytest.MonkeyPatch) -> Recording:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    install_crds(kube)
    return Recording()


@pytest.fixture
def weights(s3_client: Any, bucket: str, tmp_path: Path) -> str:
    return checkpoint.upload(s3_client, checkpoint.write(tmp_path / "ckpt"), bucket, "llama/")


def config(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> OperatorConfig:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return OperatorConfig(default_store="s3://engines-reconcilers/", rebuild_settle="0s")


def emitted() -> tuple[list[Event], Any]:
    events: list[Event] = []
    return events, lambda body, event: events.append(event)


def test_engine_build_reconciler_is_a_fixed_point_across_a_restart(
        kube: Cluster, namespace: str, adapter: Recording, weights: str, s3_client: Any,
        bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_client.create_bucket(Bucket="engines-reconcilers")
    world = ApiWorld(kube)
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
        "metadata": {"name": "llama"},
        # No node matches: the Job's pod stays Pending, the facts hold still between passes.
        "spec": {"model": {"source": weights},
                 "targets": [{"nodeSelector": {"testbed.kiln.dev/pool": "nowhere"},
                              "computeCapability": "9.0"}],
                 "build": {"backend": "pytorch"}, "rebuild": {"onWeightChange": False}}})
    events, emit = emitted()
    first = EngineBuildReconciler(adapter, config(s3_endpoint, monkeypatch), emit)

    plan = first.reconcile(get(world.custom, namespace, EB_PLURAL, "llama"), world).value
    assert plan is not None and len(plan.create) == 1
    assert adapter.writes.count("create_job") == 1 and "patch_status" in adapter.writes
    key = plan.status.engines[0].key
    assert world.by_key(namespace, key or "") is not None
    assert [e.reason for e in events] == ["BuildStarted"]

    # The scheduler's verdict on the Job's pod is a fact too: once it is in, the facts hold.
    job = plan.status.engines[0].job or ""
    eventually(lambda: any(p.unschedulable for p in world.job_pods(namespace, job)) or None,
               timeout=30)
    plan = first.reconcile(get(world.custom, namespace, EB_PLURAL, "llama"), world).value
    assert plan is not None and "Unschedulable: " in (plan.status.engines[0].message or "")
    adapter.writes.clear()
    first.reconcile(get(world.custom, namespace, EB_PLURAL, "llama"), world)
    assert adapter.writes == [], "a second pass over the same facts writes nothing"

    # The weights move behind the pin; the operator restarts (a fresh reconciler).
    s3_client.put_object(Bucket=bucket, Key="llama/tokenizer_config.json", Body=b"{}")
    restarted = EngineBuildReconciler(adapter, config(s3_endpoint, monkeypatch), emit)
    plan = restarted.reconcile(get(world.custom, namespace, EB_PLURAL, "llama"), world).value
    assert plan is not None and plan.status.engines[0].key == key, "the pin held"
    assert adapter.writes == [], "a restarted operator rewrites nothing"
    assert [e.reason for e in events] == ["BuildStarted", "Unschedulable"]


def test_engine_deployment_reconciler_is_a_fixed_point_across_a_restart(
        kube: Cluster, namespace: str, adapter: Recording) -> None:
    world = ApiWorld(kube)
    key = "d" * 64
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
        "metadata": {"name": "llama"},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}]}})
    world.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, EB_PLURAL,
                                                       "llama", {"status": {"engines": [{
        "target": "H100-SXM", "gpuProduct": "NVIDIA-H100-80GB-HBM3",
        "computeCapability": "9.0", "key": key, "state": "Ready",
        "uri": f"s3://engines/engines/{key}/"}]}})
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, ED_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
        "metadata": {"name": "chat"},
        "spec": {"engineBuildRef": {"name": "llama"}, "gpu": "H100-SXM", "replicas": 1}})
    events, emit = emitted()
    first = EngineDeploymentReconciler(adapter, OperatorConfig(), emit)

    first.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    # the Deployment, Service, budget, trust keys, LLM API options
    assert adapter.writes.count("apply") == 5
    (deployment,) = world.deployments(namespace, "chat")
    assert deployment.engine_key == key
    # The Deployment controller and kwok move it along; a pass then reports that.
    eventually(lambda: all(d.rolled_out for d in world.deployments(namespace, "chat")) or None,
               timeout=60)
    first.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    status = get(world.custom, namespace, ED_PLURAL, "chat")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"

    adapter.writes.clear()
    adapter.calls.clear()
    first.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    assert adapter.calls == [], "a second pass over the same facts makes no request"

    restarted = EngineDeploymentReconciler(adapter, OperatorConfig(), emit)
    restarted.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    assert adapter.calls == [], "a restarted operator makes no request"

    # A child deleted by hand, another edited: the next pass applies those two, no more.
    world.core.delete_namespaced_config_map("chat-llm-api", namespace)
    world.policy.patch_namespaced_pod_disruption_budget(
        "chat", namespace, {"spec": {"maxUnavailable": 0}})
    restarted.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    assert adapter.calls == ["apply", "apply"]
    assert world.core.read_namespaced_config_map("chat-llm-api", namespace).data
    assert world.policy.read_namespaced_pod_disruption_budget(
        "chat", namespace).spec.max_unavailable == 1
    adapter.calls.clear()
    restarted.reconcile(get(world.custom, namespace, ED_PLURAL, "chat"), world)
    assert adapter.calls == [], "repaired: the next pass makes no request"
    assert [e.reason for e in events] == ["ServingEngine"]


class Interleaved(Recording):
    """Runs ``meanwhile`` once, between this reconciler's read of a Job and what it does next:
    another EngineBuild acting on the same Job at the worst moment."""

    def __init__(self, job: str, meanwhile: Any) -> None:
        super().__init__()
        self.job, self.meanwhile = job, meanwhile

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = super().read_job(namespace, name)
        if name == self.job and self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return found


def test_a_job_released_while_another_build_joins_it_is_kept_for_the_joiner(
        kube: Cluster, namespace: str, adapter: Recording, weights: str, s3_client: Any,
        s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_client.create_bucket(Bucket="engines-reconcilers")
    world = ApiWorld(kube)

    def build(name: str, batch: int) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
                "metadata": {"name": name},
                "spec": {"model": {"source": weights},
                         "targets": [{"nodeSelector": {"testbed.kiln.dev/pool": "nowhere"},
                                      "computeCapability": "9.0"}],
                         "build": {"backend": "pytorch", "maxBatchSize": batch}}}

    conf = config(s3_endpoint, monkeypatch)
    _, emit = emitted()
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL,
                                                 build("a", 8))
    plan = EngineBuildReconciler(adapter, conf, emit).reconcile(
        get(world.custom, namespace, EB_PLURAL, "a"), world).value
    assert plan is not None
    key = plan.status.engines[0].key or ""
    job = world.by_key(namespace, key)
    assert job is not None
    # A moves to another key (it releases the Job) just as B, which wants the key, joins.
    world.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL, "a",
                                                {"spec": {"build": {"maxBatchSize": 16}}})
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL,
                                                 build("b", 8))

    def join() -> None:
        EngineBuildReconciler(adapter, conf, emit).reconcile(
            get(world.custom, namespace, EB_PLURAL, "b"), world)

    releasing = Interleaved(job.name, join)
    EngineBuildReconciler(releasing, conf, emit).reconcile(
        get(world.custom, namespace, EB_PLURAL, "a"), world)
    kept = world.by_key(namespace, key)
    b_uid = get(world.custom, namespace, EB_PLURAL, "b")["metadata"]["uid"]
    assert kept is not None, "the Job B joined was deleted under it"
    assert kept.owner_uids == (b_uid,)


def test_an_auto_target_a_flag_is_refused_on_fails_before_any_job(
        kube: Cluster, namespace: str, adapter: Recording, weights: str, s3_client: Any,
        s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``targets: []`` passes every CEL rule; the auto target (a B200 node an
    EngineDeployment serves on) meets PluginConfig.validate's SM 10.0 refusal of
    ``--gemm_swiglu_plugin=fp8`` at plan time: its engine is Failed ``Unsupported`` naming the
    rule and the flag, and no Job (no GPU time) is created for it."""
    s3_client.create_bucket(Bucket="engines-reconcilers")
    world = ApiWorld(kube)
    node = f"b200-{namespace}"[:63]
    world.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node, labels={
        "nvidia.com/gpu.product": "NVIDIA-B200", "nvidia.com/gpu.compute.major": "10",
        "nvidia.com/gpu.compute.minor": "0", "kiln-test/pool": node})))
    try:
        world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, EB_PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
            "metadata": {"name": "swiglu"},
            "spec": {"model": {"source": weights}, "targets": [],
                     "build": {"extraArgs": ["--gemm_swiglu_plugin=fp8"]},
                     "rebuild": {"onWeightChange": False}}})
        world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, ED_PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
            "metadata": {"name": "swiglu"},
            "spec": {"engineBuildRef": {"name": "swiglu"}, "gpu": "auto",
                     "pool": {"nodeSelector": {"kiln-test/pool": node}}}})
        events, emit = emitted()
        reconciler = EngineBuildReconciler(adapter, config(s3_endpoint, monkeypatch), emit)
        plan = reconciler.reconcile(get(world.custom, namespace, EB_PLURAL, "swiglu"),
                                    world).value
        assert plan is not None and plan.create == []
        (b200,) = plan.status.engines
        assert b200.target == "B200" and b200.state == "Failed" and b200.job is None
        assert (b200.message or "").startswith("Unsupported: ")
        assert "extraArgs --gemm_swiglu_plugin=fp8" in (b200.message or "")
        assert "plugins_sm100" in (b200.message or "")
        assert "create_job" not in adapter.writes
        stored = get(world.custom, namespace, EB_PLURAL, "swiglu")["status"]
        assert stored["phase"] == "Failed"
        assert any(e.reason == "BuildFailed" and "B200" in e.message for e in events)
    finally:
        world.core.delete_node(node)
