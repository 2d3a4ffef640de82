"""Weights that move: a build that finds them changed makes kiln read them again at once and
build the new key; weights still being uploaded are not built until they hold still."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from field.conftest import MODELS
from field.support import conditions, create, engine_build, get, is_ready, job_keys, keys
from kiln import EB_PLURAL
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.dev.testbed import nodes
from kiln.dev.testbed.cluster import Cluster
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")
GATE = "field.kiln.dev/gate"


def test_a_build_that_sees_the_weights_change_starts_the_new_key_at_once(
        kube: Cluster, namespace: str, weights: str, s3_client: Any) -> None:
    """The build pod is held Pending (its nodes need a label) until the weights are replaced,
    so its builder surely reads weights other than its task's: WeightsChanged."""
    h100 = nodes.H100.node_names()[0]
    target = {"nodeSelector": {GATE: namespace, "nvidia.com/gpu.product": nodes.H100.product},
              "computeCapability": "9.0"}
    create(kube, namespace, engine_build("llama", weights, targets=[target]))
    (old,) = eventually(lambda: keys(kube, namespace, "llama").values() or None, timeout=30)
    eventually(lambda: old in job_keys(kube, namespace) or None, timeout=30)
    s3_client.put_object(Bucket=MODELS, Key=f"{namespace}/llama/tokenizer_config.json",
                         Body=b'{"replaced": true}')
    kube.kubectl("label", "node", h100, f"{GATE}={namespace}", "--overwrite")
    try:
        # The builder starts, finds other weights, exits WeightsChanged; kiln reads them
        # again at once (pollInterval is an hour) and builds the new key.
        new = eventually(lambda: [k for k in job_keys(kube, namespace) if k != old] or None,
                         timeout=30)
        assert new == [eventually(  # the status is written just after the Job is created
            lambda: keys(kube, namespace, "llama").get("cc9.0") == new[0] and new[0],
            timeout=10)]
        eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "llama")) or None,
                   timeout=120)
    finally:
        kube.kubectl("label", "node", h100, f"{GATE}-")


def test_weights_uploaded_file_by_file_are_built_once_after_they_settle(
        kube: Cluster, namespace: str, s3_client: Any, tmp_path: Path) -> None:
    files = sorted(checkpoints.write(tmp_path / "ckpt").iterdir())
    prefix = f"{namespace}/uploading/"
    s3_client.upload_file(str(files[0]), MODELS, prefix + files[0].name)
    create(kube, namespace, engine_build("llama", f"s3://{MODELS}/{prefix}",
                                         targets=[{"gpu": "H100-SXM"}],
                                         rebuild={"settle": "8s"}))
    seen: set[str] = set()
    settling: list[bool] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(job_keys(kube, namespace))
            reason = conditions(get(kube, namespace, EB_PLURAL, "llama")).get("Reconciling")
            settling.append(reason == ("True", "WeightsSettling"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for path in files[1:]:  # about 20 s of uploading, a file every 5 s
            time.sleep(20 / (len(files) - 1))
            s3_client.upload_file(str(path), MODELS, prefix + path.name)
            assert not seen, "nothing is built while the upload goes on"
        eventually(lambda: is_ready(get(kube, namespace, EB_PLURAL, "llama")) or None,
                   timeout=120)
    finally:
        stop.set()
        sampler.join(timeout=10)
    assert any(settling), "WeightsSettling was visible meanwhile"
    (key,) = keys(kube, namespace, "llama").values()
    assert seen == {key}, "built once, for the weights as they ended"
    assert client.BatchV1Api(kube.api_client).list_namespaced_job(namespace).items
