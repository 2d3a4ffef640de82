"""What both controllers write about their objects: kstatus conditions (``Ready``,
``Reconciling``, ``Stalled``), Events, and the merge patch of a status."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln.api import Condition


def set_conditions(old: list[Condition], *, generation: int, ready: bool, reconciling: bool,
                   stalled: bool, reason: str, message: str,
                   now: datetime | None = None) -> list[Condition]:
    """The three conditions; ``lastTransitionTime`` moves only when a status flips."""
    previous = {c.type: c for c in old}
    stamp = now or datetime.now(UTC).replace(microsecond=0)
    wanted = (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled))
    conditions = []
    for kind, value in wanted:
        status = "True" if value else "False"
        before = previous.get(kind)
        text = message if value or kind == "Ready" else ""
        conditions.append(Condition(
            type=kind, status=status, reason=reason,
            message=text or None, observed_generation=generation,
            last_transition_time=(stamp if before is None or before.status != status
                                  else before.last_transition_time),
        ))
    return conditions


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about an object: ``Normal`` or ``Warning``, a reason, a message."""

    type: str
    reason: str
    message: str


def merge_patch(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from ``old`` to ``new``: top-level keys gone from ``new`` become null."""
    return {**{k: None for k in old if k not in new}, **new}


class WrittenStatus:
    """The status this process last wrote per object, and the writes themselves.

    kiln is the only writer of its objects' status, so what it last wrote is the truth; an
    index copy can predate that write (another event overtaking the object's own), and
    planning from it would repeat Events and move transition times. ``patch(namespace, name,
    merge_patch)`` writes.
    """

    def __init__(self, patch: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._patch = patch
        self._written: dict[tuple[str, str], tuple[str, str]] = {}

    def overlay(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the status last written for it (same uid), if any."""
        meta = body["metadata"]
        written = self._written.get((meta["namespace"], meta["name"]))
        if written is None or written[0] != meta["uid"]:
            return body
        return {**body, "status": json.loads(written[1])}

    def write(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch ``status`` over ``body``'s when it differs; whether it was written."""
        meta = body["metadata"]
        current = body.get("status") or {}
        if status == current:
            return False
        self._patch(meta["namespace"], meta["name"], merge_patch(status, current))
        self._written[(meta["namespace"], meta["name"])] = (str(meta["uid"]), json.dumps(status))
        return True

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)
