"""The build Job renderer: pure, deterministic, no credentials copied."""

from __future__ import annotations

import pytest

from kiln.api import EngineBuildSpec
from kiln.config import OperatorConfig
from kiln.contract import exitcodes
from kiln.contract.pvc import pvc_path
from kiln.engine_build.plan import Want
from kiln.engine_build.render import render_job
from kiln.engine_build.targets import effective

KEY = "ab" * 32


def spec(**build: object) -> EngineBuildSpec:
    return EngineBuildSpec.model_validate({
        "model": {"source": "s3://models/llama/", "credentialsSecret": "model-creds"},
        "targets": [{"gpu": "H100-SXM"}],
        "build": {"parallelism": {"tensor": 2, "pipeline": 2}, **build},
        "job": {"backoffLimit": 3, "priorityClassName": "gpu-batch",
                "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    })


def render(config: OperatorConfig | None = None) -> dict:  # type: ignore[type-arg]
    s = spec()
    (target,) = effective(s, [])
    return render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=s,
                      want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
                      task_json='{"key": "x"}',
                      config=config or OperatorConfig(store_secret="store-creds"))


def test_job_is_named_after_the_key_and_pinned_to_the_gpu() -> None:
    job = render()
    assert job["metadata"]["name"] == f"kiln-build-{KEY[:24]}"
    assert job["metadata"]["annotations"]["kiln.dev/engine-key"] == KEY
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.compute.major": "9",
                                   "nvidia.com/gpu.compute.minor": "0"}
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expr,) = term["nodeSelectorTerms"][0]["matchExpressions"]
    assert expr["key"] == "nvidia.com/gpu.product"
    assert "NVIDIA-H100-80GB-HBM3" in expr["values"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    assert {"key": "dedicated", "operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "gpu-batch"
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u1"


def test_pod_failure_policy_as_rendered_follows_the_exit_code_table() -> None:
    """The Job's policy, as rendered: every code in the one table lands in exactly the rule of
    its action, for the container the pod really has."""
    job = render()
    container = job["spec"]["template"]["spec"]["containers"][0]["name"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    by_action = {r["action"]: r["onExitCodes"] for r in rules[1:]}
    assert set(by_action) == {"FailJob", "Count"}
    for rule in by_action.values():
        assert rule["containerName"] == container and rule["operator"] == "In"
    for code in exitcodes.CODES:
        assert code.code in by_action[code.action]["values"], code
        other = "Count" if code.action == "FailJob" else "FailJob"
        assert code.code not in by_action[other]["values"], code
    assert exitcodes.WEIGHTS_CHANGED in by_action["FailJob"]["values"]
    assert exitcodes.UNAVAILABLE in by_action["Count"]["values"]
    assert exitcodes.OK not in by_action["FailJob"]["values"] + by_action["Count"]["values"]


def test_credentials_are_referenced_never_copied() -> None:
    env = render()["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert refs["AWS_SECRET_ACCESS_KEY"] == "model-creds"
    assert refs["HF_TOKEN"] == "model-creds"
    assert refs["KILN_STORE_AWS_SECRET_ACCESS_KEY"] == "store-creds"
    assert all("value" not in e for e in env if "valueFrom" in e)


def test_owner_labels_are_not_copied_to_the_job() -> None:
    job = render(OperatorConfig(build_pod_labels={"team": "ml"}))
    labels = job["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in labels
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"


def test_rendering_is_deterministic() -> None:
    assert render() == render()


def _pod_with(source: str, engine_uri: str) -> dict:  # type: ignore[type-arg]
    s = EngineBuildSpec.model_validate({
        "model": {"source": source}, "targets": [{"gpu": "H100-SXM"}]})
    (target,) = effective(s, [])
    job = render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=s,
                     want=Want(target, KEY, engine_uri), image="builder:1", task_json="{}",
                     config=OperatorConfig())
    pod: dict = job["spec"]["template"]["spec"]  # type: ignore[type-arg]
    return pod


def test_pvc_weights_are_mounted_read_only_and_a_pvc_store_writable() -> None:
    pod = _pod_with("pvc://models/llama", f"pvc://engines/kiln/engines/{KEY}/")
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts[1:] == [
        {"name": "pvc-0", "mountPath": "/mnt/kiln/pvc/engines"},
        {"name": "pvc-1", "mountPath": "/mnt/kiln/pvc/models", "readOnly": True}]
    assert pod["volumes"][1:] == [
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "engines"}},
        {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}]


def test_one_claim_for_weights_and_store_is_one_writable_volume() -> None:
    pod = _pod_with("pvc://shared/models/llama", f"pvc://shared/engines/{KEY}/")
    assert [m["name"] for m in pod["containers"][0]["volumeMounts"]] == ["work", "pvc-0"]
    assert pod["volumes"][1]["persistentVolumeClaim"] == {"claimName": "shared"}


def test_s3_and_hf_need_no_volume() -> None:
    pod = _pod_with("hf://meta-llama/Llama-3.1-8B", f"s3://e/engines/{KEY}/")
    assert pod["volumes"] == [{"name": "work", "emptyDir": {}}]


def test_the_mount_is_where_the_builder_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_PVC_ROOT", raising=False)
    pod = _pod_with("pvc://models/llama", f"s3://e/engines/{KEY}/")
    (mount,) = pod["containers"][0]["volumeMounts"][1:]
    assert str(pvc_path("pvc://models/llama")).startswith(mount["mountPath"] + "/")


def test_the_job_carries_its_pod_templates_digest_and_a_job_fix_changes_it() -> None:
    """The reconciler replaces a never-started Job whose template the spec no longer renders
    (a ``spec.job`` fix that does not change the key): the digest tells them apart."""
    s = spec()
    (target,) = effective(s, [])
    want = Want(target, KEY, f"s3://e/engines/{KEY}/")

    def digest(job_spec: EngineBuildSpec) -> str:
        job = render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=job_spec,
                         want=want, image="builder:1", task_json='{"key": "x"}',
                         config=OperatorConfig())
        return str(job["metadata"]["annotations"]["kiln.dev/spec-hash"])

    fixed = s.model_copy(update={"job": s.job.model_copy(update={"priority_class_name": None})})
    assert digest(s) == digest(s)
    assert digest(fixed) != digest(s)


def test_a_queued_build_job_joins_its_kueue_queue_suspended_with_its_priority() -> None:
    """Kueue's plain-Job contract: the ``kueue.x-k8s.io/queue-name`` label and ``suspend``;
    the Workload's priority from ``kueue.x-k8s.io/priority-class`` or the pod's class."""
    plain = render()
    assert "suspend" not in plain["spec"]
    assert not any(k.startswith("kueue.x-k8s.io/") for k in plain["metadata"]["labels"])
    default = render(OperatorConfig(build_queue="gpu-builds"))
    assert default["spec"]["suspend"] is True
    assert default["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-builds"
    assert default["spec"]["template"]["spec"]["priorityClassName"] == "gpu-batch"
    s = spec()
    s = s.model_copy(update={"job": s.job.model_copy(update={
        "queue_name": "team-a", "workload_priority_class": "builds-low"})})
    (target,) = effective(s, [])
    job = render_job(namespace="ns", owner_name="llama", owner_uid="u1", spec=s,
                     want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
                     task_json="{}", config=OperatorConfig(build_queue="gpu-builds"))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "builds-low"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
