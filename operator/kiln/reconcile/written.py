"""The status this process last wrote per object, until the watch delivers it.

An index copy can predate kiln's own last write (another event overtaking the object's own),
and planning from it would repeat Events and move transition times; so a pass reads its own
write over a copy the write was made over (or one of kiln's own earlier writes). Freshness is
bounded by the watch: any other resourceVersion (kiln's last write delivered, someone else's
write, an etcd restore) means the cluster's copy wins and the entry is dropped.
resourceVersions are compared for equality only, as Kubernetes asks. An entry lives at most
one leadership term (the reconcilers are made anew for each).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.domain.status import merge_patch

Patch = Callable[[str, str, dict[str, Any]], Any]
"""Writes a merge patch of ``status``: (namespace, name, patch) -> the object written."""
MAX_VERSIONS = 16


@dataclass(frozen=True)
class _Written:
    uid: str
    older: frozenset[str]
    """The versions the watch may still show before it delivers the write: the one it was
    made over, and kiln's own writes before it."""
    last: str
    """The version the write produced."""
    status: str


class WrittenStatus:
    """Status writes, and what this process wrote that the watch has not delivered yet."""

    def __init__(self, patch: Patch) -> None:
        self._patch = patch
        self._written: dict[tuple[str, str], _Written] = {}
        self._guard = threading.Lock()

    def overlay(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the status last written for it while ``body`` is a copy from before
        that write; ``body`` itself otherwise (the entry is dropped)."""
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        with self._guard:
            written = self._written.get(ref)
            if written is None:
                return body
            if written.uid != meta.get("uid") or str(meta.get("resourceVersion")) not in (
                    written.older):
                self._written.pop(ref, None)
                return body
        return {**body, "status": json.loads(written.status)}

    def write(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch ``status`` over ``body``'s when it differs; whether it was written."""
        meta = body["metadata"]
        current = body.get("status") or {}
        if status == current:
            return False
        answer = self._patch(meta["namespace"], meta["name"], merge_patch(status, current))
        version = (answer.get("metadata") or {}).get("resourceVersion") if isinstance(
            answer, dict) else None
        ref, seen = (meta["namespace"], meta["name"]), str(meta.get("resourceVersion"))
        with self._guard:
            before = self._written.get(ref)
            if version is None:  # not found, or no version told: nothing to read over
                self._written.pop(ref, None)
                return True
            older = {seen}
            if before is not None and before.uid == meta.get("uid") and seen in before.older:
                older |= before.older | {before.last}
            if len(older) <= MAX_VERSIONS:
                self._written[ref] = _Written(str(meta["uid"]), frozenset(older), str(version),
                                              json.dumps(status))
            else:
                self._written.pop(ref, None)
        return True

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._written.pop((namespace, name), None)
