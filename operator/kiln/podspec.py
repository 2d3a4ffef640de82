"""Pod-spec pieces both controllers render: GPUs, tolerations, owners, Secret env."""

from __future__ import annotations

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
