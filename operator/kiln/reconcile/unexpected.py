"""Exceptions a reconcile did not expect: logged with the traceback once per object and type,
a line after that (a bug retried with backoff must not flood the log), counted by kind."""

from __future__ import annotations

import logging
import traceback

from kiln import metrics


class Unexpected:
    """What each object has already had a traceback logged for."""

    def __init__(self, kind: str, log: logging.Logger) -> None:
        self.kind, self.log = kind, log
        self._seen: set[tuple[str, str, str]] = set()

    def record(self, namespace: str, name: str, error: Exception) -> None:
        metrics.record_unexpected_error(self.kind, error)
        seen = (namespace, name, type(error).__name__)
        if seen in self._seen:
            self.log.warning("reconcile of %s/%s failed again: %s: %s", namespace, name,
                             type(error).__name__, error)
            return
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen.add(seen)
        self.log.error("reconcile of %s/%s failed unexpectedly (retried with backoff):\n%s",
                       namespace, name, "".join(traceback.format_exception(error)))
