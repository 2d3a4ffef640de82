"""Who reconciles: the work queues and the sweep run only while this replica leads.

Every replica watches and keeps its indexes (a hot standby: taking over costs no listing);
only the leader runs the tasks registered with :func:`while_leading`, and every write passes
the Lease's fence (``kiln.kube.client``), so a replica whose Lease ran out writes nothing even
before the tasks are stopped. Without leader election the tasks run from the start.
The liveness probe fails when the Lease loop or, while leading, one of the tasks has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import kopf

from kiln.handlers import context
from kiln.kube import lease

log = logging.getLogger(__name__)

Task = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
"""Makes the coroutine of a leader's task from Kopf's startup kwargs (its indexes)."""

_registered: dict[str, Task] = {}
_running: dict[str, asyncio.Task[None]] = {}
_checks: list[Callable[[], str | None]] = []
_lease: dict[str, Any] = {}
_new_term: list[Callable[[], None]] = []


def while_leading(name: str) -> Callable[[Task], Task]:
    """Register a task that runs while this replica leads (cancelled when it stops)."""
    def register(fn: Task) -> Task:
        _registered[name] = fn
        return fn
    return register


def new_term(fn: Callable[[], None]) -> Callable[[], None]:
    """Register what starts afresh when this replica starts leading: per-object caches
    belong to one term, so a replica that leads again plans from the cluster, not from what
    it kept of its previous term."""
    _new_term.append(fn)
    return fn


def health_check(fn: Callable[[], str | None]) -> Callable[[], str | None]:
    """Register a check run by the liveness probe while leading: a message means unhealthy."""
    _checks.append(fn)
    return fn


def _start(kwargs: dict[str, Any], term: int | None = None) -> None:
    """Start the tasks of ``term``: each runs (and its threads run) in a fresh context that
    carries the term, so the fence refuses their writes once another term began."""
    if not _running:
        for fresh in _new_term:
            try:
                fresh()
            except Exception:  # made at first use instead; the tasks start regardless
                log.exception("could not start a new term afresh")
    for name, make in _registered.items():
        if name not in _running:
            ctx = contextvars.Context()
            ctx.run(lease.TERM.set, term)
            _running[name] = ctx.run(asyncio.create_task, make(kwargs), name=name)


def _stop() -> list[asyncio.Task[None]]:
    tasks = list(_running.values())
    for task in tasks:
        task.cancel()
    _running.clear()
    return tasks


def leading() -> bool:
    return bool(_running)


@kopf.on.startup()
async def start(memo: kopf.Memo, **kwargs: Any) -> None:
    """Run the tasks now, or campaign for the Lease in a thread and run them while leading."""
    elector = context.elector()
    if elector is None:
        _start(kwargs)
        return
    loop = asyncio.get_running_loop()
    elector.on_lead = lambda: loop.call_soon_threadsafe(_start, kwargs, elector.term)
    elector.on_lose = lambda: loop.call_soon_threadsafe(_stop)
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop,), name="kiln lease", daemon=True)
    _lease.update(thread=thread, stop=stop)
    thread.start()


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the tasks, stop the Lease loop and wait for it (a renewal in flight would take
    the Lease again), then hand the Lease back (a standby takes it at once)."""
    for task in _stop():
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elector = context.elector()
    if elector is not None and _lease:
        _lease["stop"].set()
        thread: threading.Thread = _lease["thread"]
        await asyncio.to_thread(thread.join, elector.timing.renew_deadline + elector.timing.retry)
        if thread.is_alive():
            log.warning("the Lease loop did not stop in time; releasing the Lease regardless")
        await asyncio.to_thread(elector.release)


def problems() -> list[str]:
    """What the liveness probe reports as dead."""
    found = []
    thread = _lease.get("thread")
    if thread is not None and not thread.is_alive():
        found.append("the Lease loop has died")
    for name, task in _running.items():
        if task.done():
            error = None if task.cancelled() else task.exception()
            found.append(f"{name} has died" + (f": {error!r}" if error else ""))
    if _running:
        found += [message for check in _checks if (message := check())]
    return found


@kopf.on.probe(id="reconciling", errors=kopf.ErrorsMode.PERMANENT)
def alive(**_: Any) -> dict[str, Any]:
    """Liveness: fails (HTTP 500) when the Lease loop or a leader's task has died."""
    found = problems()
    if found:
        log.error("Liveness probe failing: %s", "; ".join(found))
        raise kopf.PermanentError("; ".join(found))
    elector = context.elector()
    return {"leading": leading(), "holder": elector.holder if elector else None,
            "identity": context.identity()}
