"""Render the build Job for one engine key (pure: spec + resolved facts in, a dict out)."""

from __future__ import annotations

from typing import Any

from kiln.api import EngineBuildSpec
from kiln.config import OperatorConfig
from kiln.contract import env as names
from kiln.contract.exitcodes import pod_failure_policy
from kiln.contract.pvc import pvc_mounts
from kiln.domain.labels import (
    GPU_PRODUCT_LABEL,
    HASH_ANNOTATION,
    KEY_ANNOTATION,
    KEY_LABEL,
    QUEUE_LABEL,
    TARGET_ANNOTATION,
    WORKLOAD_PRIORITY_LABEL,
    key_label,
    managed_by,
)
from kiln.domain.podspec import (
    container_security,
    gpu_resources,
    gpu_tolerations,
    owner_reference,
    pod_security,
    secret_env,
    spec_hash,
)
from kiln.engine_build.jobs import BUILDER, job_name
from kiln.engine_build.plan import Want

WORKDIR = "/work"


def _affinity(products: tuple[str, ...]) -> dict[str, Any] | None:
    if not products:
        return None
    term = {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In",
                                  "values": list(products)}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}


def render_job(*, namespace: str, owner_name: str, owner_uid: str, spec: EngineBuildSpec,
               want: Want, image: str, task_json: str,
               config: OperatorConfig, trusted_keys: str = "") -> dict[str, Any]:
    """The Job that builds ``want.key``; its name is derived from the key alone.
    ``trusted_keys``: the public keys (PEM) whose signature makes a stored engine count."""
    gpus = spec.build.parallelism.tensor * spec.build.parallelism.pipeline
    labels = {**managed_by("build"), KEY_LABEL: key_label(want.key)}
    queue = spec.job.queue_name or config.build_queue
    queued = {QUEUE_LABEL: queue} if queue else {}
    if queue and spec.job.workload_priority_class:
        queued[WORKLOAD_PRIORITY_LABEL] = spec.job.workload_priority_class
    env: list[dict[str, Any]] = [
        {"name": names.TASK, "value": task_json},
        {"name": names.WORKDIR, "value": WORKDIR},
        *({"name": k, "value": v} for k, v in sorted(config.build_env.items())),
    ]
    if trusted_keys:
        env.append({"name": names.TRUSTED_KEYS, "value": trusted_keys})
    if config.build_namespace:
        env.append({"name": names.BUILD_NAMESPACE, "value": config.build_namespace})
    if spec.model.credentials_secret:
        env += secret_env(spec.model.credentials_secret, names.CREDENTIAL_KEYS)
    if config.store_secret:
        env += secret_env(config.store_secret, names.STORE_KEYS, names.STORE_PREFIX)
    overrides = spec.job.security_context.to_dict() if spec.job.security_context else None
    calibration = spec.build.quantization.calibration
    claims = {spec.model.source: False, want.uri: True}
    if calibration is not None:
        claims.setdefault(calibration.dataset, False)
    claim_mounts, claim_volumes = pvc_mounts(claims)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": dict(want.target.node_selector),
        "tolerations": gpu_tolerations(t.to_dict() for t in spec.job.tolerations),
        "containers": [{
            "name": BUILDER,
            "image": image,
            "command": ["kiln-builder"],
            "env": env,
            "resources": gpu_resources(
                spec.job.resources.to_dict() if spec.job.resources else None, gpus),
            "volumeMounts": [{"name": "work", "mountPath": WORKDIR}, *claim_mounts],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security(overrides),
        }],
        "volumes": [{"name": "work", "emptyDir": {}}, *claim_volumes],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(overrides),
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
            "labels": {**labels, **queued},
            "annotations": {KEY_ANNOTATION: want.key, TARGET_ANNOTATION: want.target.name,
                            HASH_ANNOTATION: job_spec_hash(spec)},
            "ownerReferences": [build_owner(owner_name, owner_uid)],
        },
        "spec": {
            **({"suspend": True} if queue else {}),  # Kueue starts it once admitted
            "backoffLimit": spec.job.backoff_limit,
            "activeDeadlineSeconds": spec.job.active_deadline_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "podFailurePolicy": pod_failure_policy(BUILDER),
            "template": {
                "metadata": {"labels": {**config.build_pod_labels, **labels}},  # kiln's win
                "spec": pod_spec,
            },
        },
    }


def job_spec_hash(spec: EngineBuildSpec) -> str:
    """The digest of what ``spec.job`` puts in the pod (security context, priority class,
    tolerations, resources): a Job of another one whose pod never ran is replaced. The
    operator's own settings are left out: changing them replaces no waiting Job."""
    return spec_hash(spec.job.to_dict())


def build_owner(name: str, uid: str) -> dict[str, Any]:
    """An EngineBuild as an owner of a build Job (several may share one Job)."""
    return owner_reference("EngineBuild", name, uid, controller=False)
