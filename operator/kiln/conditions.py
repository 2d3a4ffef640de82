"""kstatus conditions (``Ready``, ``Reconciling``, ``Stalled``), shared by both kinds."""

from __future__ import annotations

from datetime import UTC, datetime

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
