"""Which events of kiln's own objects tell something beyond their status.

kiln is the one writer of an EngineBuild's and an EngineDeployment's status; an event that
only moved it is kiln's own write coming back, and would mark the next pass due after every
pass (a failing object would retry in a loop instead of backing off). Status written by
someone else marks nothing either: the next resync's pass plans from the cluster's copy and
repairs it (``kiln.reconcile.written``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _beyond_status(body: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = body["metadata"]
    return (meta.get("generation"), meta.get("deletionTimestamp"),
            sorted((meta.get("labels") or {}).items()),
            sorted((meta.get("annotations") or {}).items()))


class BeyondStatus:
    """What of each object (by uid) was last seen besides its status."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, ...]] = {}

    def moved(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Whether this event tells more than a status write: a new object, a listing (type
        None: an event may have been lost), a deletion, or a change of spec or metadata."""
        uid = str(body["metadata"].get("uid"))
        if event_type == "DELETED":
            self._last.pop(uid, None)
            return True
        seen = _beyond_status(body)
        if self._last.get(uid) == seen and event_type is not None:
            return False
        self._last[uid] = seen
        return True

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)
