"""``pvc://claim/path`` URIs: the claim, and where a pod mounts it (``$KILN_PVC_ROOT/claim``).

The build Job, the serving pods' init container and the operator (for pvc:// stores) all
mount a claim at the same place, so one path means the same files everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.errors import InvalidInput

PVC_ROOT = "/mnt/kiln/pvc"


def pvc_claim(uri: str) -> str | None:
    """The claim of a ``pvc://`` URI; None for any other URI."""
    if not uri.startswith("pvc://"):
        return None
    return uri.removeprefix("pvc://").split("/", 1)[0] or None


def pvc_path(uri: str) -> Path:
    """Where ``pvc://claim/path`` is mounted in this process (``$KILN_PVC_ROOT/claim/path``)."""
    rest = uri.removeprefix("pvc://").strip("/")
    claim, _, sub = rest.partition("/")
    if not uri.startswith("pvc://") or not claim or any(
            p in ("", ".", "..") for p in rest.split("/")):
        raise InvalidInput(f"{uri!r} is not a PVC URI such as pvc://claim/path")
    return Path(os.environ.get("KILN_PVC_ROOT", PVC_ROOT)) / claim / sub


def pvc_mounts(uris: dict[str, bool]) -> tuple[list[dict[str, str | bool]],
                                               list[dict[str, object]]]:
    """Volume mounts and volumes for the claims of ``uris`` (URI → written to?): one volume
    per claim, read-only unless some URI on it is written."""
    claims: dict[str, bool] = {}
    for uri, written in uris.items():
        if claim := pvc_claim(uri):
            claims[claim] = claims.get(claim, False) or written
    mounts: list[dict[str, str | bool]] = []
    volumes: list[dict[str, object]] = []
    for i, (claim, written) in enumerate(sorted(claims.items())):
        name = f"pvc-{i}"
        read_only: dict[str, bool] = {} if written else {"readOnly": True}  # as stored
        mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", **read_only})
        volumes.append({"name": name,
                        "persistentVolumeClaim": {"claimName": claim, **read_only}})
    return mounts, volumes
