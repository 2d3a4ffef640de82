"""The operator-wide sweep loop: cadence, isolation of a failing sweep, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from kiln.handlers.sweep import run_forever


def test_sweeps_run_at_their_own_interval_and_survive_failures() -> None:
    calls: dict[str, int] = {"fast": 0, "slow": 0}
    threads: set[int] = set()

    def fast(indices: dict[str, Any]) -> None:
        assert indices == {"idx": 1}
        threads.add(threading.get_ident())
        calls["fast"] += 1
        raise RuntimeError("a failed round must not end the loop")

    def slow(indices: dict[str, Any]) -> None:
        calls["slow"] += 1

    async def main() -> None:
        task = asyncio.create_task(run_forever({"idx": 1}, [(fast, 0.02), (slow, 0.2)]))
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert calls["fast"] >= 8, calls  # ~25 rounds in 0.5 s; failures did not stop it
    assert 1 <= calls["slow"] <= 3, calls  # first run after one interval, not at once
    assert threading.get_ident() not in threads  # off the event loop's thread
