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

# What Kueue writes into a plain Job's pod template when it admits the Job (v0.17): it
# unsuspends the Job and merges the admission's PodSetInfo into the template (its labels and
# annotations, the flavors' node labels as nodeSelector and their tolerations, scheduling gates;
# sigs.k8s.io/kueue pkg/controller/jobs/job/job_controller.go RunWithPodSetsInfo,
# pkg/podset/podset.go Merge). The PodSetInfo is built in pkg/controller/jobframework/
# reconciler.go getPodSetsInfoFromStatus and pkg/podset/podset.go FromAssignment. Values: a
# str is the one value Kueue writes, None any (a name kiln cannot know before admission).
PODSET = "main"
"""A plain Job's one PodSet (apis/kueue/v1beta2/constants.go DefaultPodSetName)."""
ADMISSION_LABELS: dict[str, str | None] = {
    "kueue.x-k8s.io/podset": PODSET,  # pkg/constants/constants.go PodSetLabel, always
    # feature AssignQueueLabelsForPods (beta, on from v0.17): ClusterQueueLabel, LocalQueueLabel
    "kueue.x-k8s.io/cluster-queue-name": None,
}
LOCAL_QUEUE_LABEL = "kueue.x-k8s.io/local-queue-name"
"""Set to the Workload's queue: the Job's ``kueue.x-k8s.io/queue-name``."""
ADMISSION_ANNOTATIONS: dict[str, str | None] = {
    # feature TopologyAwareScheduling (beta, on from v0.14): WorkloadAnnotation, always; and
    # PodSetUnconstrainedTopologyAnnotation with a topology assignment but no request
    # (apis/kueue/v1beta2/topology_types.go)
    "kueue.x-k8s.io/workload": None,
    "kueue.x-k8s.io/podset-unconstrained-topology": "true",
    # feature ElasticJobsViaWorkloadSlices (alpha): WorkloadSliceNameAnnotation
    "kueue.x-k8s.io/workload-slice-name": None,
    # the ProvisioningRequest admission check's PodSetUpdate (pkg/controller/admissionchecks/
    # provisioning/controller.go; names from k8s.io/autoscaler cluster-autoscaler/apis
    # provisioningrequest/autoscaling.x-k8s.io/v1 types.go)
    "autoscaling.x-k8s.io/consume-provisioning-request": None,
    "autoscaling.x-k8s.io/provisioning-class-name": None,
}
ADMISSION_GATES = ({"name": "kueue.x-k8s.io/topology"},)
"""The scheduling gate of a topology assignment (topology_types.go TopologySchedulingGate);
Kueue's ungater lifts it from the pods, not from the template."""


def admission_labels(queue: str) -> dict[str, str | None]:
    """The pod-template labels Kueue adds when it admits a Job of LocalQueue ``queue``."""
    return {**ADMISSION_LABELS, LOCAL_QUEUE_LABEL: queue}


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
