"""What both controllers write about their objects: kstatus conditions (``Ready``,
``Reconciling``, ``Stalled``), Events, and the merge patch of a status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln.api import Condition


def set_conditions(old: list[Condition], *, generation: int, ready: bool, reconciling: bool,
                   stalled: bool, reason: str, message: str,
                   now: datetime | None = None) -> list[Condition]:
    """The three conditions, and any other type ``old`` has (``ArtifactsStale``: its own
    writer decides it) as it was; ``lastTransitionTime`` moves only when a status flips."""
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
    return conditions + [c for c in old if c.type not in {k for k, _ in wanted}]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about an object: ``Normal`` or ``Warning``, a reason, a message."""

    type: str
    reason: str
    message: str


def merge_patch(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from ``old`` to ``new``: top-level keys gone from ``new`` become null."""
    return {**{k: None for k in old if k not in new}, **new}


def stalled_conditions(raw: Any, generation: int, reason: str,
                       message: str) -> list[dict[str, Any]]:
    """``Stalled`` conditions over conditions as the cluster holds them (any that do not
    parse are dropped): for an object whose spec the operator cannot read."""
    old = []
    for item in raw if isinstance(raw, list) else []:
        try:
            old.append(Condition.model_validate(item))
        except ValueError:
            continue
    return [c.to_dict() for c in set_conditions(old, generation=generation, ready=False,
                                                reconciling=False, stalled=True,
                                                reason=reason, message=message)]
