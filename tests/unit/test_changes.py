"""An event of kiln's own objects that only moved their status (kiln's write) marks nothing."""

from __future__ import annotations

from typing import Any

from kiln.handlers.changes import BeyondStatus


def body(generation: int = 1, status: str = "a", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "u", "generation": generation, **meta},
            "spec": {}, "status": {"phase": status}}


def test_only_a_change_beyond_status_moves() -> None:
    seen = BeyondStatus()
    assert seen.moved("ADDED", body())
    assert not seen.moved("MODIFIED", body(status="b"))  # kiln's own status write
    assert seen.moved(None, body(status="b"))  # a listing: an event may have been lost
    assert seen.moved("MODIFIED", body(generation=2))  # a spec edit, kubectl scale
    assert seen.moved("MODIFIED", body(generation=2, labels={"team": "x"}))
    assert seen.moved("MODIFIED", body(generation=2, labels={"team": "x"},
                                       deletionTimestamp="2026-12-01T00:00:00Z"))
    assert seen.moved("DELETED", body())
    assert seen.moved("MODIFIED", body(status="c"))  # forgotten: new again
    seen.forget("u")
    assert seen.moved("MODIFIED", body(status="c"))
