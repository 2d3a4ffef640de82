"""A work queue: objects due for a reconcile, coalesced, run by a few worker threads.

Kopf gives each object a task that feeds its events, one at a time, to the handlers. A handler
that waits for a reconcile keeps every newer event of that object queued behind it, each a
whole parsed body: under a burst of 2,000 EngineBuilds and their Jobs that backlog was most
of the operator's memory. So the handlers only mark the object due and return; the workers
reconcile each due object once, from the newest copy in Kopf's index, and never one object in
two threads at once (marked again while it runs, it runs once more after).

Two lanes: what an event (or a retry after backoff) marked goes before what periodic work
marked (the sweep, a new term's first round), so a new object never waits behind a resync of
thousands; an object marked both ways runs once, in the first lane. Every ``FAIR``-th turn
goes to periodic work while it waits, so a stream of events never starves a resync.

Shared fairly between tenants: objects of one group (a namespace) hold at most ``share``
workers at once (half of them, rounded up), so one tenant whose reconciles wait on a slow
endpoint of its own choosing leaves the other half to everyone else. What comes up while its
group is at its share waits aside, still due, and goes back in line as one of the group's
reconciles ends: decided by what runs now, nothing counted over time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
FAIR = 8
"""One turn in this many goes to the periodic lane when both lanes wait."""

Ref = TypeVar("Ref", bound=Hashable)


class WorkQueue(Generic[Ref]):
    """``add(ref, moved)`` marks ``ref`` due; ``run(work)`` calls ``work(ref, moved)`` in a
    thread for each due ref, ``moved`` being true if any mark since the last call said so."""

    def __init__(self, workers: int,
                 group: Callable[[Ref], Hashable] | None = None) -> None:
        self.workers = workers
        self.group = group
        """Whose a ref is (its namespace); None: one group, no share."""
        self.share = math.ceil(workers / 2) if group is not None else workers
        """Workers one group may hold at once."""
        self._busy: Counter[Hashable] = Counter()
        """Workers each group holds now."""
        self._aside: defaultdict[Hashable, deque[Ref]] = defaultdict(deque)
        """Due refs of a group at its share, in the order they came up."""
        self._due: dict[Ref, bool] = {}
        self._lane: dict[Ref, int] = {}
        """Each due ref's lane: 0 (an event marked it) or 1 (periodic work did)."""
        self._running: set[Ref] = set()
        self._since: dict[Ref, float] = {}
        """When each running reconcile started (monotonic)."""
        self._lanes: tuple[deque[Ref], deque[Ref]] = (deque(), deque())
        """Refs to run, per lane; an entry whose ref ran or moved lanes since is skipped."""
        self._turns = 0
        self._queued = asyncio.Semaphore(0)
        """How many entries the lanes hold."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, ref: Ref, moved: bool = False, *, periodic: bool = False) -> None:
        """Mark ``ref`` due (on the event loop's thread); ``periodic`` work goes after what
        events marked."""
        lane = 1 if periodic else 0
        if ref in self._due:
            self._due[ref] |= moved
            if lane < self._lane[ref]:
                self._lane[ref] = lane
                if ref not in self._running:
                    self._enqueue(ref)
            return
        self._due[ref], self._lane[ref] = moved, lane
        if ref not in self._running:
            self._enqueue(ref)

    def _enqueue(self, ref: Ref) -> None:
        self._lanes[self._lane[ref]].append(ref)
        self._queued.release()

    def add_threadsafe(self, ref: Ref, moved: bool = False, *, periodic: bool = False) -> None:
        """Mark ``ref`` due from another thread (the sweep's); no-op before ``run()``."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                lambda: self.add(ref, moved, periodic=periodic))

    def add_later(self, ref: Ref, delay: float) -> None:
        """Mark ``ref`` due in ``delay`` seconds, from any thread (a retry after backoff:
        it is due then, in the first lane)."""
        if self._loop is not None:
            loop = self._loop
            loop.call_soon_threadsafe(lambda: loop.call_later(delay, self.add, ref))

    def hung(self, what: str, limit: float) -> str | None:
        """For the liveness probe: ``what`` hung, if a reconcile ran longer than ``limit``."""
        found = self.stuck(limit)
        return None if found is None else f"{what}: {found}"

    def stuck(self, limit: float) -> str | None:
        """A message if a reconcile has run for longer than ``limit`` seconds (a hung call:
        that worker is lost), else None."""
        if not self._since:
            return None
        ref, since = min(self._since.items(), key=lambda item: item[1])
        took = time.monotonic() - since
        return f"the reconcile of {ref} has run for {took:.0f} s" if took > limit else None

    def __len__(self) -> int:
        return len(self._due)

    async def run(self, work: Callable[[Ref, bool], None]) -> None:
        """Run the workers until cancelled."""
        self._loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, "kiln-reconcile")
        try:
            await asyncio.gather(*(self._worker(pool, work) for _ in range(self.workers)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _next(self) -> Ref:
        """The next ref to run: the first lane first; stale entries are dropped."""
        while True:
            await self._queued.acquire()
            self._turns += 1
            lane = 1 if not self._lanes[0] or (
                self._lanes[1] and self._turns % FAIR == 0) else 0
            ref = self._lanes[lane].popleft()
            if ref in self._due and ref not in self._running and self._lane[ref] == lane:
                owner = self._group_of(ref)
                if self._busy[owner] >= self.share:
                    self._aside[owner].append(ref)  # back in line when one of its ends
                    continue
                return ref

    def _group_of(self, ref: Ref) -> Hashable:
        return None if self.group is None else self.group(ref)

    def _ended(self, owner: Hashable) -> None:
        """One of ``owner``'s reconciles ended: its first ref set aside goes back in line."""
        self._busy[owner] -= 1
        if self._busy[owner] <= 0:
            del self._busy[owner]
        waiting = self._aside.get(owner)
        while waiting:
            ref = waiting.popleft()
            if ref in self._due and ref not in self._running:
                self._enqueue(ref)
                break
        if not waiting:
            self._aside.pop(owner, None)

    async def _worker(self, pool: concurrent.futures.Executor,
                      work: Callable[[Ref, bool], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ref = await self._next()
            moved = self._due.pop(ref)
            self._lane.pop(ref, None)
            self._running.add(ref)
            owner = self._group_of(ref)
            self._busy[owner] += 1
            self._since[ref] = time.monotonic()
            try:  # in this task's context: the thread's writes carry the leader's term
                await loop.run_in_executor(pool, contextvars.copy_context().run, work, ref,
                                           moved)
            except Exception:
                log.exception("reconcile of %s failed", ref)
            finally:
                self._running.discard(ref)
                self._since.pop(ref, None)
                self._ended(owner)
                if ref in self._due:
                    self._enqueue(ref)
