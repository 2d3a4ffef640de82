"""The reconcile work queue: coalescing, one thread per object at a time, re-runs, failures."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

from kiln.handlers.workqueue import WorkQueue


def _run(queue: WorkQueue[str], work: Callable[[str, bool], None],
         body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(queue.run(work))
        try:
            await body()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def _settle(queue: WorkQueue[str], calls: list[tuple[str, bool]], count: int) -> None:
    for _ in range(500):
        if len(calls) >= count and not len(queue):
            await asyncio.sleep(0.05)  # and nothing more comes
            return
        await asyncio.sleep(0.01)


def test_marks_before_a_turn_coalesce_and_merge_moved() -> None:
    queue: WorkQueue[str] = WorkQueue(2)
    calls: list[tuple[str, bool]] = []
    for ref, moved in [("a", False), ("a", True), ("a", False), ("b", False), ("b", False)]:
        queue.add(ref, moved)  # all before the workers start

    async def body() -> None:
        await _settle(queue, calls, 2)

    _run(queue, lambda ref, moved: calls.append((ref, moved)), body)
    assert sorted(calls) == [("a", True), ("b", False)]


def test_one_object_never_runs_in_two_threads_and_runs_again_if_marked_meanwhile() -> None:
    queue: WorkQueue[str] = WorkQueue(4)
    calls: list[tuple[str, bool]] = []
    running: set[str] = set()
    overlap: list[str] = []
    started = threading.Event()
    threads: set[int] = set()

    def work(ref: str, moved: bool) -> None:
        if ref in running:
            overlap.append(ref)
        running.add(ref)
        threads.add(threading.get_ident())
        started.set()
        time.sleep(0.1)
        running.discard(ref)
        calls.append((ref, moved))

    async def body() -> None:
        queue.add("a")
        while not started.is_set():
            await asyncio.sleep(0.005)
        queue.add("a", True)  # while "a" runs: one more run after, not a parallel one
        queue.add("a")
        await _settle(queue, calls, 2)

    _run(queue, work, body)
    assert overlap == []
    assert calls == [("a", False), ("a", True)]
    assert threading.get_ident() not in threads


def test_a_failing_reconcile_does_not_stop_its_worker() -> None:
    queue: WorkQueue[str] = WorkQueue(1)
    calls: list[tuple[str, bool]] = []

    def work(ref: str, moved: bool) -> None:
        calls.append((ref, moved))
        if ref == "bad":
            raise RuntimeError("boom")

    async def body() -> None:
        queue.add("bad")
        queue.add("good")
        await _settle(queue, calls, 2)

    _run(queue, work, body)
    assert calls == [("bad", False), ("good", False)]


def test_marks_from_another_thread_reach_the_workers() -> None:
    queue: WorkQueue[str] = WorkQueue(1)
    calls: list[tuple[str, bool]] = []

    async def body() -> None:
        await asyncio.sleep(0.01)  # run() has started
        await asyncio.to_thread(queue.add_threadsafe, "x", True)
        await _settle(queue, calls, 1)

    _run(queue, lambda ref, moved: calls.append((ref, moved)), body)
    assert calls == [("x", True)]


def test_what_an_event_marked_runs_before_periodic_work_and_once() -> None:
    """A resync marking thousands must not delay a new object: events go first; an object
    marked by both runs once, in the events' lane."""
    queue: WorkQueue[str] = WorkQueue(1)
    calls: list[tuple[str, bool]] = []
    for i in range(5):
        queue.add(f"p{i}", periodic=True)
    queue.add("p3", True)  # an event for one already due periodically
    queue.add("e")

    async def body() -> None:
        await _settle(queue, calls, 6)

    _run(queue, lambda ref, moved: calls.append((ref, moved)), body)
    assert [ref for ref, _ in calls[:2]] == ["p3", "e"]
    assert sorted(calls) == [("e", False), ("p0", False), ("p1", False), ("p2", False),
                             ("p3", True), ("p4", False)]


def test_a_stream_of_events_never_starves_periodic_work() -> None:
    queue: WorkQueue[str] = WorkQueue(1)
    calls: list[tuple[str, bool]] = []
    queue.add("resync", periodic=True)
    for i in range(40):
        queue.add(f"e{i}")

    async def body() -> None:
        await _settle(queue, calls, 41)

    _run(queue, lambda ref, moved: calls.append((ref, moved)), body)
    assert [ref for ref, _ in calls].index("resync") < 10


def test_one_namespace_holds_at_most_half_the_workers_and_the_rest_run_meanwhile() -> None:
    queue: WorkQueue[str] = WorkQueue(4, group=lambda ref: ref.partition("/")[0])
    release = threading.Event()
    lock = threading.Lock()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    done: list[str] = []

    def work(ref: str, _moved: bool) -> None:
        owner = ref.partition("/")[0]
        with lock:
            running[owner] = running.get(owner, 0) + 1
            most[owner] = max(most.get(owner, 0), running[owner])
        if owner == "hung":
            release.wait(10)  # an endpoint of the tenant's choosing that does not answer
        with lock:
            running[owner] -= 1
            done.append(ref)

    async def body() -> None:
        for i in range(20):
            queue.add(f"hung/{i}")
        await asyncio.sleep(0.1)
        for i in range(6):
            queue.add(f"other/{i}")
        for _ in range(500):  # the other namespace finishes while every hung one waits
            if sum(r.startswith("other/") for r in done) == 6:
                break
            await asyncio.sleep(0.01)
        release.set()
        for _ in range(1000):
            if len(done) == 26:
                return
            await asyncio.sleep(0.01)

    _run(queue, work, body)
    assert sum(r.startswith("other/") for r in done) == 6
    assert sorted(done) == sorted([f"hung/{i}" for i in range(20)]
                                  + [f"other/{i}" for i in range(6)])
    assert most["hung"] == 2  # ceil(4 / 2)
