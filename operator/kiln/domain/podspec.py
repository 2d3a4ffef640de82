"""Pod-spec pieces both controllers render: GPUs, tolerations, owners, Secret env."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from kiln import GROUP, VERSION
from kiln.api.common import GPU_RESOURCE


def gpu_resources(resources: dict[str, Any] | None, gpus: int) -> dict[str, Any]:
    """``resources`` (limits and requests as the user gave them) with ``gpus`` GPUs in both."""
    resources = resources or {}
    gpu = {GPU_RESOURCE: str(gpus)}
    return {"limits": {**resources.get("limits", {}), **gpu},
            "requests": {**resources.get("requests", {}), **gpu}}


def gpu_tolerations(extra: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The toleration of GPU nodes' usual taint, then ``extra``."""
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}, *extra]


def owner_reference(kind: str, name: str, uid: str, *, controller: bool) -> dict[str, Any]:
    """An owner reference to a kiln object (``controller``: its only controlling owner; a build
    Job shared by several EngineBuilds has none)."""
    ref: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": name,
                           "uid": uid}
    if controller:
        ref["controller"] = True
    return {**ref, "blockOwnerDeletion": False}


def secret_env(secret: str, keys: Iterable[str], prefix: str = "") -> list[dict[str, Any]]:
    """``prefix + key`` from each of ``keys`` of ``secret``, each optional, by reference."""
    return [{"name": prefix + key,
             "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in keys]


RUN_AS = 10001
"""The UID and GID kiln's pods run as (the builder and operator images' ``kiln`` user)."""


def pod_security(override: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod ``securityContext`` that Pod Security "restricted" admits: non-root with a
    numeric UID, ``RuntimeDefault`` seccomp; ``override`` (camelCase) fields win."""
    override = override or {}
    context: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                               "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}
    for name in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"):
        if name in override:
            context[name] = override[name]
    return context


def kiln_container_security() -> dict[str, Any]:
    """The context of a container running kiln's own program (``fetch-engine``) in a pod whose
    context a user may override: everything "restricted" needs set on the container itself,
    so that nothing of the pod's (root, no seccomp) reaches it."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def container_security(override: dict[str, Any] | None = None) -> dict[str, Any]:
    """A container ``securityContext`` that "restricted" admits: no privilege escalation, every
    capability dropped; ``override`` (camelCase) fields win (the pod-level ones too, so that a
    container of another user is consistent)."""
    override = override or {}
    context: dict[str, Any] = {"allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"]}}
    for name in ("allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsNonRoot",
                 "runAsUser", "runAsGroup", "seccompProfile"):
        if name in override:
            context[name] = override[name]
    if "capabilities" in override:
        caps = override["capabilities"]
        context["capabilities"] = {"drop": caps.get("drop") or ["ALL"],
                                   **({"add": caps["add"]} if caps.get("add") else {})}
    return context


def spec_hash(obj: dict[str, Any]) -> str:
    """A digest of a rendered object (without the hash annotation itself)."""
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()[:20]
