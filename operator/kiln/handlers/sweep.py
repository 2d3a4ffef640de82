"""One operator-wide sweep over the indexes instead of a Kopf timer per object.

A timer per object costs a task and a finalizer on every object (two writes per life, and
an object that cannot be deleted while the operator is away); one loop over the indexes
costs neither. Each round runs in a worker thread: the reconcilers use blocking clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kiln.handlers import context, engine_build, engine_deployment, leadership

log = logging.getLogger(__name__)

Sweep = Callable[[dict[str, Any]], None]


def schedule() -> list[tuple[Sweep, float]]:
    """What runs, and how often."""
    config = context.config()
    return [(engine_build.sweep, min(config.weights_check_seconds, config.resync_seconds)),
            (engine_deployment.sweep, config.resync_seconds)]


async def run_forever(indices: dict[str, Any], sweeps: list[tuple[Sweep, float]]) -> None:
    """Run each sweep every ``interval`` seconds (first after one interval), one at a time;
    a failed round is logged and the next one comes as usual."""
    due = {fn: time.monotonic() + interval for fn, interval in sweeps}
    while True:
        fn, interval = min(sweeps, key=lambda item: due[item[0]])
        await asyncio.sleep(max(0.0, due[fn] - time.monotonic()))
        _round["started"] = time.monotonic()
        try:
            await asyncio.to_thread(fn, indices)
        except Exception:
            log.exception("sweep %s failed; the next one is in %.0f s", fn.__module__, interval)
        finally:
            _round.pop("started", None)
        due[fn] = time.monotonic() + interval


_round: dict[str, float] = {}
"""When the round running now started (absent between rounds)."""
STUCK_SECONDS = 600.0


@leadership.while_leading("kiln sweep")
def start(kwargs: dict[str, Any]) -> Coroutine[Any, Any, None]:
    """The sweep, over Kopf's (still filling) indexes."""
    return run_forever(kwargs, schedule())


@leadership.health_check
def stuck() -> str | None:
    """A round that has run for longer than ``STUCK_SECONDS`` (a hung request) is dead."""
    started = _round.get("started")
    if started is not None and time.monotonic() - started > STUCK_SECONDS:
        return f"a sweep round has run for {time.monotonic() - started:.0f} s"
    return None
