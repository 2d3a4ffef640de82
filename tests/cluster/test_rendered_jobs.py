"""Rendered build Jobs are accepted by the real apiserver as rendered (volumes and all)."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.api import EngineBuildSpec
from kiln.config import OperatorConfig
from kiln.dev.testbed.cluster import Cluster
from kiln.engine_build.plan import Want
from kiln.engine_build.render import render_job
from kiln.engine_build.targets import effective
from kiln.kube.auth import Credentials
from kiln.kube.client import Client

pytestmark = pytest.mark.cluster
KEY = "cd" * 32


@pytest.mark.parametrize(("source", "engine_uri"), [
    ("pvc://models/llama", f"pvc://engines/kiln/engines/{KEY}/"),
    ("pvc://shared/models/llama", f"pvc://shared/engines/{KEY}/"),
    ("s3://models/llama/", f"s3://e/engines/{KEY}/"),
])
def test_the_apiserver_takes_the_job_as_rendered(kube: Cluster, namespace: str, source: str,
                                                 engine_uri: str) -> None:
    spec = EngineBuildSpec.model_validate({"model": {"source": source},
                                           "targets": [{"gpu": "H100-SXM"}]})
    (target,) = effective(spec, [])
    job = render_job(namespace=namespace, owner_name="llama",
                     owner_uid="00000000-0000-0000-0000-000000000001", spec=spec,
                     want=Want(target, KEY, engine_uri), image="builder:1", task_json="{}",
                     config=OperatorConfig())
    api = Client(Credentials(str(kube.kubeconfig)))
    made: dict[str, Any] = api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs",
                                       job, query={"dryRun": "All"})
    pod = made["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == [v["name"] for v in
                                                   job["spec"]["template"]["spec"]["volumes"]]
    assert pod["containers"][0]["volumeMounts"] == \
        job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]


def test_a_pvc_calibration_dataset_is_mounted_read_only(kube: Cluster, namespace: str) -> None:
    spec = EngineBuildSpec.model_validate({
        "model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}],
        "build": {"quantization": {"algo": "fp8",
                                   "calibration": {"dataset": "pvc://datasets/cnn"}}}})
    (target,) = effective(spec, [])
    job = render_job(namespace=namespace, owner_name="llama",
                     owner_uid="00000000-0000-0000-0000-000000000001", spec=spec,
                     want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
                     task_json="{}", config=OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"datasets": {"claimName": "datasets", "readOnly": True}}
    api = Client(Credentials(str(kube.kubeconfig)))
    api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job,
                query={"dryRun": "All"})
