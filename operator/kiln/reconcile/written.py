"""The status this process last wrote per object, until the watch delivers it.

An index copy can predate kiln's own last write (another event overtaking the object's own),
and planning from it would repeat Events and move transition times; so a pass reads its own
write over an older copy. Freshness is bounded by the watch: once the index holds the
resourceVersion the write produced, or a newer one, the cluster's copy wins (someone else may
have written since) and the entry is dropped. An entry lives at most one leadership term (the
reconcilers are made anew for each).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from kiln.domain.status import merge_patch

Patch = Callable[[str, str, dict[str, Any]], Any]
"""Writes a merge patch of ``status``: (namespace, name, patch) -> the object written."""


def _version(value: Any) -> int | None:
    """A resourceVersion as a number (etcd's revision), or None when it is not one."""
    try:
        return int(str(value))
    except ValueError:
        return None


class WrittenStatus:
    """Status writes, and what this process wrote that the watch has not delivered yet."""

    def __init__(self, patch: Patch) -> None:
        self._patch = patch
        self._written: dict[tuple[str, str], tuple[str, int, str]] = {}
        """(namespace, name) -> (uid, the resourceVersion written, the status as JSON)."""
        self._guard = threading.Lock()

    def overlay(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the status last written for it, while ``body`` is older than that
        write; ``body`` itself once the watch has caught up (the entry is dropped)."""
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        with self._guard:
            written = self._written.get(ref)
            if written is None:
                return body
            seen = _version(meta.get("resourceVersion"))
            if written[0] != meta.get("uid") or seen is None or seen >= written[1]:
                self._written.pop(ref, None)
                return body
        return {**body, "status": json.loads(written[2])}

    def write(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch ``status`` over ``body``'s when it differs; whether it was written."""
        meta = body["metadata"]
        current = body.get("status") or {}
        if status == current:
            return False
        answer = self._patch(meta["namespace"], meta["name"], merge_patch(status, current))
        version = _version(((answer or {}).get("metadata") or {}).get("resourceVersion")
                           if isinstance(answer, dict) else None)
        with self._guard:
            if version is None:  # not found, or no version told: nothing to read over
                self._written.pop((meta["namespace"], meta["name"]), None)
            else:
                self._written[(meta["namespace"], meta["name"])] = (
                    str(meta["uid"]), version, json.dumps(status))
        return True

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._written.pop((namespace, name), None)
