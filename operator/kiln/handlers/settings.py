"""Kopf's settings: quiet and bounded. Every kiln handler is an event handler that marks work
due, so Kopf writes no finalizer and no annotations of its own; the names below are kiln's in
case a later handler makes it write them."""

from __future__ import annotations

from typing import Any

import kopf

from kiln.domain.labels import ED_LABEL, KEY_LABEL

PREFIX = "kiln.dev"


SERVER_SIDE_LABELS = {
    ("v1", "pods"): "app.kubernetes.io/managed-by=kiln",  # build and serving pods
    ("batch", "jobs"): KEY_LABEL,
    ("apps", "deployments"): ED_LABEL,
    # An EngineDeployment's other children: its Service, budget, trust and LLM API ConfigMaps.
    ("v1", "services"): ED_LABEL,
    ("policy", "poddisruptionbudgets"): ED_LABEL,
    ("v1", "configmaps"): ED_LABEL,
}
"""The label selector of each watch of Kubernetes' own kinds (``kiln.domain.labels``)."""
EVENTS_FIELDS = "involvedObject.kind=Job,reason=FailedCreate"
"""The Events kiln reads: the Job controller's ``FailedCreate`` (``indexes``)."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    settings.posting.reporting_component = "kiln"
    # Kopf would post Events (its per-object log lines, kopf.event) from its own queue, on
    # every replica and outside the Lease's fence: off. kiln posts its Events itself, through
    # its client (``context.emit``), as the leader only.
    settings.posting.enabled = False
    settings.posting.level = 20
    settings.execution.max_workers = 16  # the index functions are sync: Kopf's thread pool
    settings.watching.server_timeout = 600
    # What kiln indexes, filtered by the API server: the handlers' own filters are Kopf's,
    # client-side, so every Pod and Event of the cluster would be streamed to the operator.
    for resource, selector in SERVER_SIDE_LABELS.items():
        settings.watching.label_selectors[resource] = selector
    settings.watching.field_selectors["v1", "events"] = EVENTS_FIELDS
    settings.networking.request_timeout = 60
