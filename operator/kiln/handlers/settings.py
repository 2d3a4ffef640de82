"""Kopf's settings: quiet and bounded. Every kiln handler is an event handler that marks work
due, so Kopf writes no finalizer and no annotations of its own; the names below are kiln's in
case a later handler makes it write them."""

from __future__ import annotations

from typing import Any

import kopf

PREFIX = "kiln.dev"


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
    settings.networking.request_timeout = 60
