"""The rollout gate's Job: ``kiln gate`` on the canary's GPU product, against one Ready pod
of the canary and one of the current key. Pure."""

from __future__ import annotations

from typing import Any

from kiln.api import EngineBuild, EngineDeployment, parse_duration
from kiln.config import OperatorConfig
from kiln.contract import env as names
from kiln.contract.termination import DEFAULT_PATH as TERMINATION_LOG
from kiln.domain.labels import GPU_PRODUCT_LABEL, KEY_ANNOTATION
from kiln.domain.podspec import (
    container_security,
    gpu_tolerations,
    owner_reference,
    pod_security,
)
from kiln.engine_deployment.canary import GATE_LABEL, PRODUCT_ANNOTATION, GateWanted
from kiln.engine_deployment.render import MANAGED_BY


def tokenizer(ed: EngineDeployment, eb: EngineBuild) -> str:
    """``gate.tokenizer``, else the Hugging Face name of an ``hf://`` source, else AIPerf's
    ``builtin``."""
    assert ed.spec.rollout is not None
    if ed.spec.rollout.gate.tokenizer:
        return ed.spec.rollout.gate.tokenizer
    source = eb.spec.model.source
    if source.startswith("hf://"):
        return source.removeprefix("hf://").partition("@")[0]
    return "builtin"


def render_gate_job(ed: EngineDeployment, eb: EngineBuild, want: GateWanted,
                    config: OperatorConfig) -> dict[str, Any]:
    assert ed.spec.rollout is not None
    gate = ed.spec.rollout.gate
    name = str(ed.metadata["name"])
    labels = {GATE_LABEL: name}  # not ED_LABEL: no Service, budget or HPA selects it
    args = ["gate", "--canary", want.canary_url, "--stable", want.stable_url,
            "--tokenizer", tokenizer(ed, eb), "--requests", str(gate.requests),
            "--concurrency", str(gate.concurrency), "--input-tokens", str(gate.input_tokens),
            "--output-tokens", str(gate.output_tokens)]
    job_meta = {"name": want.name, "namespace": ed.metadata["namespace"],
                "labels": {**MANAGED_BY, **labels},
                "annotations": {KEY_ANNOTATION: want.key, PRODUCT_ANNOTATION: want.product},
                "ownerReferences": [owner_reference("EngineDeployment", name,
                                                    ed.metadata["uid"], controller=True)]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(60, int(parse_duration(gate.timeout).total_seconds())),
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {
                "metadata": {"labels": {**config.build_pod_labels, **MANAGED_BY, **labels}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {**(ed.spec.pool.node_selector or {}),
                                     GPU_PRODUCT_LABEL: want.product},
                    "tolerations": gpu_tolerations(),
                    "containers": [{
                        "name": "gate",
                        "image": gate.image or config.gate_image or config.builder_image,
                        "command": ["kiln"],
                        "args": args,
                        "env": [{"name": names.TERMINATION_LOG, "value": TERMINATION_LOG}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                        "securityContext": container_security(None),
                    }],
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(None),
                },
            },
        },
    }
