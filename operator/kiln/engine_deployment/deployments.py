"""The serving Deployments kiln owns: their labels, and what one of them tells."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from kiln.domain.labels import (
    BACKEND_ANNOTATION,
    HASH_ANNOTATION,
    KEY_ANNOTATION,
    MODE_ANNOTATION,
    SERVING_PRODUCT_LABEL,
    TEMPLATE_ANNOTATION,
    TRACK_LABEL,
    UPLOAD_ANNOTATION,
    URI_ANNOTATION,
)


@dataclass(frozen=True)
class ObservedDeployment:
    """The parts of a serving Deployment the planner reads."""

    name: str
    product: str
    owner_uids: tuple[str, ...]
    engine_key: str | None
    engine_uri: str | None
    mode: str | None
    backend: str | None
    spec_hash: str | None
    replicas: int
    """``spec.replicas``."""
    generation: int = 0
    observed_generation: int = 0
    status_replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    template_hash: str | None = None
    """The pod template's digest (``kiln.dev/template-hash``): its pods carry it too."""
    deadline_exceeded: str | None = None
    """The controller's message once the rollout passed ``progressDeadlineSeconds``."""
    engine_upload: str | None = None
    """Which upload of ``engine_key`` its pods fetch (``kiln.dev/engine-upload``)."""
    canary: bool = False
    """A canary's Deployment (``kiln.dev/track: canary``), beside the product's own."""
    replica_failure: str | None = None
    """The controller's message while it cannot create pods (``ReplicaFailure``: a quota
    exceeded, an admission refusal)."""

    @property
    def rolled_out(self) -> bool:
        """The controller saw the latest spec and every pod runs it and is available."""
        return (self.observed_generation >= self.generation
                and self.updated_replicas == self.replicas
                and self.status_replicas == self.replicas
                and self.available_replicas >= self.replicas)


def observe(obj: dict[str, Any]) -> ObservedDeployment:
    """Summarize a Deployment (a dict, camelCase)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    notes = template.get("annotations") or {}
    replicas = spec.get("replicas")
    deadline = next((str(c.get("message") or "") for c in status.get("conditions") or []
                     if c.get("type") == "Progressing" and c.get("status") == "False"
                     and c.get("reason") == "ProgressDeadlineExceeded"), None)
    return ObservedDeployment(
        name=meta["name"],
        product=(meta.get("labels") or {}).get(SERVING_PRODUCT_LABEL, ""),
        owner_uids=tuple(r["uid"] for r in meta.get("ownerReferences") or []),
        engine_key=notes.get(KEY_ANNOTATION) or None,
        engine_uri=notes.get(URI_ANNOTATION) or None,
        mode=notes.get(MODE_ANNOTATION) or None,
        backend=notes.get(BACKEND_ANNOTATION) or None,
        spec_hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
        template_hash=notes.get(TEMPLATE_ANNOTATION) or None,
        replicas=1 if replicas is None else int(replicas),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        status_replicas=int(status.get("replicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        deadline_exceeded=deadline,
        engine_upload=notes.get(UPLOAD_ANNOTATION) or None,
        canary=(meta.get("labels") or {}).get(TRACK_LABEL) == "canary",
        replica_failure=next((str(c.get("message") or c.get("reason") or "")
                              for c in status.get("conditions") or []
                              if c.get("type") == "ReplicaFailure"
                              and c.get("status") == "True"), None),
    )


def deployment_name(owner: str, product: str) -> str:
    """``<owner>-<product slug>``, at most 63 characters (a hash keeps cut names apart)."""
    slug = re.sub(r"[^a-z0-9]+", "-", product.lower()).strip("-")
    slug = slug.removeprefix("nvidia-") or "gpu"
    room = 63 - len(owner) - 1
    if len(slug) > room:
        digest = hashlib.sha256(product.encode()).hexdigest()[:6]
        slug = slug[:room - 7].rstrip("-") + "-" + digest
    return f"{owner}-{slug}"
