"""The liveness probe fails when a leader's task (a work queue, the sweep) or the Lease loop
has died, and not while they run."""

from __future__ import annotations

import asyncio
import threading

from kiln.handlers import leadership


def test_a_dead_queue_or_sweep_or_lease_loop_fails_liveness() -> None:
    async def scenario() -> list[list[str]]:
        async def forever() -> None:
            await asyncio.Event().wait()

        async def crash() -> None:
            raise RuntimeError("worker bug")

        leadership._running.update(queue=asyncio.create_task(forever()),
                                   sweep=asyncio.create_task(forever()))
        await asyncio.sleep(0)
        healthy = leadership.problems()
        leadership._running["sweep"] = asyncio.create_task(crash())
        await asyncio.sleep(0.01)
        dead = leadership.problems()
        for task in leadership._stop():
            task.cancel()
        return [healthy, dead]

    healthy, dead = asyncio.run(scenario())
    assert healthy == []
    assert dead == ["sweep has died: RuntimeError('worker bug')"]
    stopped = threading.Thread(target=lambda: None)
    stopped.start()
    stopped.join()
    leadership._lease["thread"] = stopped
    try:
        assert leadership.problems() == ["the Lease loop has died"]
    finally:
        leadership._lease.clear()
