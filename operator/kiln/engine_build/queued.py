"""What Kueue says of a build Job it holds: its Workload's admission, and why not yet. Pure.

Kueue makes one Workload per Job that carries ``kueue.x-k8s.io/queue-name`` (owned by the
Job); while it is not admitted, its ``QuotaReserved`` condition gives Kueue's own reason and
message (no quota left in a flavor, a higher priority ahead, no flavor that fits, a queue that
does not exist). Names from sigs.k8s.io/kueue apis/kueue/v1beta2/workload_types.go (v0.17).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.domain.pods import timestamp

GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"
ADMITTED, QUOTA_RESERVED = "Admitted", "QuotaReserved"


@dataclass(frozen=True)
class ObservedWorkload:
    """A build Job's Workload, as far as kiln reads it."""

    job: str
    """The Job that owns it."""
    admitted: bool
    reason: str
    """Kueue's reason it is not admitted (``Pending``, ``Inadmissible``, ...)."""
    message: str
    cluster_queue: str | None = None
    created: datetime | None = None


def job_of(body: dict[str, Any]) -> str | None:
    """The name of the build Job that owns a Workload, or None."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("name", "")).startswith("kiln-build-"):
            return str(ref["name"])
    return None


def observe_workload(body: dict[str, Any]) -> ObservedWorkload | None:
    """A Workload (a dict) as kiln reads it; None if no build Job owns it."""
    job = job_of(body)
    if job is None:
        return None
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    admitted = (conditions.get(ADMITTED) or {}).get("status") == "True"
    why = conditions.get(QUOTA_RESERVED) or conditions.get(ADMITTED) or {}
    if (why.get("status") == "True" and not admitted):
        why = conditions.get(ADMITTED) or {}
    return ObservedWorkload(
        job=job, admitted=admitted, reason=str(why.get("reason") or ""),
        message=str(why.get("message") or ""),
        cluster_queue=(status.get("admission") or {}).get("clusterQueue"),
        created=timestamp((body.get("metadata") or {}).get("creationTimestamp")))
