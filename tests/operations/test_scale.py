"""``/scale`` on EngineDeployment: ``kubectl scale`` rolls every GPU product to the new count,
and the HPA controller (the real one, in kube-controller-manager) reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.support import ROOT, Operator
from kiln import GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL, GPU_PRODUCT_LABEL, SERVING_PRODUCT_LABEL, TRACK_LABEL
from operations.conftest import operator_env
from operations.support import ENGINES, running
from waiting import eventually


def replicas_per_product(kube: Cluster, namespace: str, name: str) -> dict[str, int]:
    found = client.AppsV1Api(kube.api_client).list_namespaced_deployment(
        namespace, label_selector=f"{ED_LABEL}={name}").items
    return {d.metadata.labels[SERVING_PRODUCT_LABEL]: d.spec.replicas for d in found}


@pytest.mark.timeout(180)
def test_kubectl_scale_and_an_hpa_read_and_write_scale(
        kube: Cluster, release: tuple[Path, str], namespace: str, weights: str,
        s3_endpoint: str, tmp_path: Path) -> None:
    custom = client.CustomObjectsApi(kube.api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "enginebuilds", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild", "metadata": {"name": "m"},
        "spec": {"model": {"source": weights}, "build": {"backend": "pytorch"}}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "enginedeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
        "metadata": {"name": "x"},
        "spec": {"engineBuildRef": {"name": "m"}, "gpu": "auto", "replicas": 1,
                 "fallback": "pytorch"}})
    operator = Operator(kube, operator_env(release[0], s3_endpoint, f"s3://{ENGINES}/"),
                        tmp_path / "kiln.log", args=["-n", namespace])
    with running(operator):
        gpus = {n.metadata.labels[GPU_PRODUCT_LABEL] for n in client.CoreV1Api(
            kube.api_client).list_node(label_selector=GPU_PRODUCT_LABEL).items}
        # A Deployment per GPU product (not the first two applied: a third comes after).
        products = eventually(lambda: (r := replicas_per_product(kube, namespace, "x"))
                              and len(r) == len(gpus) and r, timeout=60)
        assert set(products.values()) == {1}
        kube.kubectl("scale", "-n", namespace, "ed/x", "--replicas=3")
        eventually(lambda: set(replicas_per_product(kube, namespace, "x").values()) == {3}
                   and len(replicas_per_product(kube, namespace, "x")) == len(products),
                   timeout=30)

        def scale() -> dict[str, Any]:
            out = kube.kubectl("get", "-n", namespace, "ed/x", "--subresource=scale",
                               "-o", "yaml").stdout
            found: dict[str, Any] = yaml.safe_load(out)
            return found

        first = sorted(products)[0]
        seen = eventually(lambda: (s := scale())["status"].get("replicas") == 3 and s,
                          timeout=30)
        assert seen["spec"]["replicas"] == 3
        # the product's own pods: a canary's (kiln.dev/track) are not the HPA's to count
        assert seen["status"]["selector"] == \
            f"{ED_LABEL}=x,{SERVING_PRODUCT_LABEL}={first},!{TRACK_LABEL}"

        # The example HPA, pointed at this EngineDeployment: the controller reads /scale.
        hpa = yaml.safe_load((ROOT / "examples" / "hpa-llama-3-1-8b.yaml").read_text())
        hpa["metadata"]["name"] = "x"
        hpa["spec"]["scaleTargetRef"]["name"] = "x"
        autoscaling = client.AutoscalingV2Api(kube.api_client)
        autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)

        def read_scale() -> Any:
            status = autoscaling.read_namespaced_horizontal_pod_autoscaler(
                "x", namespace).status
            able = {c.type: c for c in status.conditions or []}.get("AbleToScale")
            return able is not None and able.status == "True" and status

        status = eventually(read_scale, timeout=60, interval=1)
        assert status.current_replicas == 3
        able = {c.type: c for c in status.conditions}["AbleToScale"]
        assert able.reason == "SucceededGetScale", able
