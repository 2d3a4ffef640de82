"""Kopf's settings: quiet and bounded; kiln's own names for the finalizer and annotations Kopf
would write (no handler needs them today: kiln writes only ``status``)."""

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
    settings.posting.level = 20  # INFO and above become Events only when posted explicitly
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 600
    settings.networking.request_timeout = 60
