"""The operator signs an engine only after the key's own build Job succeeded.

What it checks first: the Job is the one kiln renders for the key (one container, the key's
builder image running ``kiln-builder`` on a task for that key); one of its own pods ended with
exit code 0 and a summary saying it wrote the manifest (not found one), with the manifest's
sha256; the stored ``manifest.json`` has exactly that digest, names the key, and its inputs
hash to it. A build pod can write anything to the store, but only its own termination message,
which only it and the kubelet can set; the digest binds the manifest to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kiln.contract import env as names
from kiln.contract import provenance
from kiln.contract.manifest import Manifest
from kiln.contract.task import BuildTask
from kiln.engine_build.jobs import BUILDER
from kiln.key import key_of, short_key
from kiln.labels import KEY_ANNOTATION


@dataclass(frozen=True)
class Built:
    """What a succeeded build Job's pod reported it committed."""

    job: provenance.JobRef
    manifest_sha256: str


def kiln_job_problem(job: dict[str, Any], key: str, image: str) -> str | None:
    """Why ``job`` is not the Job kiln renders for ``key`` and ``image``; None if it is."""
    meta = job.get("metadata") or {}
    if (meta.get("annotations") or {}).get(KEY_ANNOTATION) != key:
        return "it is not annotated with the key"
    spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or []
    if spec.get("initContainers") or len(containers) != 1:
        return "its pod has other containers than kiln's builder"
    container = containers[0]
    if container.get("name") != BUILDER or container.get("image") != image:
        return f"its container is not {BUILDER} running {image}"
    if container.get("command") != ["kiln-builder"] or container.get("args"):
        return "its container does not run kiln-builder as kiln renders it"
    task = next((e.get("value") for e in container.get("env") or []
                 if e.get("name") == names.TASK), None)
    try:
        parsed = BuildTask.from_json(task or "")
    except Exception:  # any malformed task disqualifies the Job
        return "its task is not kiln's"
    if parsed.key != key or parsed.builder_image != image:
        return "its task is for another key or image"
    return None


def built(job: dict[str, Any], pods: list[dict[str, Any]]) -> Built | None:
    """The manifest digest a pod of ``job`` (owned by it, exit code 0) reported writing."""
    meta = job["metadata"]
    for pod in pods:
        owners = {r.get("uid") for r in pod["metadata"].get("ownerReferences") or []}
        if meta["uid"] not in owners:
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            done = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") != BUILDER or done.get("exitCode") != 0:
                continue
            try:
                summary = json.loads(done.get("message") or "")
            except ValueError:
                continue
            digest = summary.get("manifestSha256") if isinstance(summary, dict) else None
            if isinstance(digest, str) and not summary.get("cached"):
                return Built(provenance.JobRef(meta["namespace"], meta["name"], meta["uid"]),
                             digest)
    return None


def signable(key: str, manifest_bytes: bytes | None, report: Built) -> Manifest | str:
    """The manifest to sign, or why the stored one is not the one the Job wrote."""
    if manifest_bytes is None:
        return "no manifest in the store"
    if provenance.sha256(manifest_bytes) != report.manifest_sha256:
        return (f"the stored manifest is not the one Job {report.job.name} wrote (its sha256 "
                f"differs: replaced by another writer)")
    manifest = Manifest.model_validate_json(manifest_bytes)
    if manifest.key != key or key_of(manifest.inputs) != key:
        return f"the manifest's inputs do not hash to key {short_key(key)}"
    return manifest
