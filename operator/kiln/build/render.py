"""Render the build Job for one engine key (pure: spec + resolved facts in, a dict out)."""

from __future__ import annotations

from typing import Any

from kiln import GROUP, VERSION
from kiln.api import EngineBuildSpec
from kiln.build.jobs import (
    KEY_ANNOTATION,
    KEY_LABEL,
    MANAGED_BY,
    TARGET_ANNOTATION,
    job_name,
    key_label,
)
from kiln.build.plan import Want
from kiln.config import OperatorConfig
from kiln.pvc import pvc_mounts
from kiln.targets import PRODUCT_LABEL

GPU_RESOURCE = "nvidia.com/gpu"
WORKDIR = "/work"
SOURCE_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                          "AWS_REGION", "AWS_ENDPOINT_URL", "HF_TOKEN", "HF_ENDPOINT")
"""Keys read from ``spec.model.credentialsSecret`` (each optional), by reference."""
STORE_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                         "AWS_REGION", "AWS_ENDPOINT_URL")
STORE_ENV_PREFIX = "KILN_STORE_"
"""The store's credentials reach the builder as ``KILN_STORE_<KEY>``, apart from the source's."""


def secret_env(secret: str, keys: tuple[str, ...], prefix: str = "") -> list[dict[str, Any]]:
    return [{"name": prefix + key,
             "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in keys]


def _affinity(products: tuple[str, ...]) -> dict[str, Any] | None:
    if not products:
        return None
    term = {"matchExpressions": [{"key": PRODUCT_LABEL, "operator": "In",
                                  "values": list(products)}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}


def render_job(*, namespace: str, owner_name: str, owner_uid: str, spec: EngineBuildSpec,
               want: Want, image: str, task_json: str, pod_failure_policy: dict[str, Any],
               config: OperatorConfig) -> dict[str, Any]:
    """The Job that builds ``want.key``; its name is derived from the key alone."""
    gpus = spec.build.parallelism.tensor * spec.build.parallelism.pipeline
    labels = {**MANAGED_BY, KEY_LABEL: key_label(want.key)}
    resources = spec.job.resources.to_dict() if spec.job.resources else {}
    limits = {**resources.get("limits", {}), GPU_RESOURCE: str(gpus)}
    requests = {**resources.get("requests", {}), GPU_RESOURCE: str(gpus)}
    env: list[dict[str, Any]] = [
        {"name": "KILN_TASK", "value": task_json},
        {"name": "KILN_WORKDIR", "value": WORKDIR},
        *({"name": k, "value": v} for k, v in sorted(config.build_env.items())),
    ]
    if spec.model.credentials_secret:
        env += secret_env(spec.model.credentials_secret, SOURCE_CREDENTIAL_KEYS)
    if config.store_secret:
        env += secret_env(config.store_secret, STORE_CREDENTIAL_KEYS, STORE_ENV_PREFIX)
    claim_mounts, claim_volumes = pvc_mounts({spec.model.source: False, want.uri: True})
    tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [t.to_dict() for t in spec.job.tolerations]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": dict(want.target.node_selector),
        "tolerations": tolerations,
        "containers": [{
            "name": "builder",
            "image": image,
            "command": ["kiln-builder"],
            "env": env,
            "resources": {"limits": limits, "requests": requests},
            "volumeMounts": [{"name": "work", "mountPath": WORKDIR}, *claim_mounts],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {"allowPrivilegeEscalation": False},
        }],
        "volumes": [{"name": "work", "emptyDir": {}}, *claim_volumes],
        "enableServiceLinks": False,
    }
    if affinity := _affinity(want.target.products):
        pod_spec["affinity"] = affinity
    if spec.job.priority_class_name:
        pod_spec["priorityClassName"] = spec.job.priority_class_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(want.key),
            "namespace": namespace,
            "labels": labels,
            "annotations": {KEY_ANNOTATION: want.key, TARGET_ANNOTATION: want.target.name},
            "ownerReferences": [owner_reference(owner_name, owner_uid)],
        },
        "spec": {
            "backoffLimit": spec.job.backoff_limit,
            "activeDeadlineSeconds": spec.job.active_deadline_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "podFailurePolicy": pod_failure_policy,
            "template": {
                "metadata": {"labels": {**labels, **config.build_pod_labels}},
                "spec": pod_spec,
            },
        },
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """An EngineBuild as an owner of a build Job (several may share one Job)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild", "name": name,
            "uid": uid, "blockOwnerDeletion": False}
