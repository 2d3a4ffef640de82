"""The liveness probe fails when a leader's task (a work queue, the sweep) or the Lease loop
has died, and not while they run."""

from __future__ import annotations

import asyncio
import threading

import pytest

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


def test_a_worker_stuck_in_one_reconcile_fails_liveness(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from kiln.handlers import engine_build, workqueue

    now = [100.0]
    monkeypatch.setattr(workqueue.time, "monotonic", lambda: now[0])
    queue: workqueue.WorkQueue[tuple[str, str]] = workqueue.WorkQueue(1)
    monkeypatch.setattr(engine_build, "_queue", queue)
    queue._since[("ns", "eb")] = 100.0
    assert engine_build.stuck() is None
    now[0] += engine_build.STUCK_SECONDS + 1
    assert engine_build.stuck() == ("EngineBuild workers: the reconcile of ('ns', 'eb') has "
                                    "run for 601 s")
    queue._since.clear()
    assert engine_build.stuck() is None
