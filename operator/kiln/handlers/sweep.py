"""One operator-wide sweep over the indexes instead of a Kopf timer per object.

A timer per object costs a task and a finalizer on every object (two writes per life, and
an object that cannot be deleted while the operator is away); one loop over the indexes
costs neither. Each round runs in a worker thread: the reconcilers use blocking clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from kiln.handlers import context, engine_build, engine_deployment

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
        try:
            await asyncio.to_thread(fn, indices)
        except Exception:
            log.exception("sweep %s failed; the next one is in %.0f s", fn.__module__, interval)
        due[fn] = time.monotonic() + interval


@kopf.on.startup()
async def start(memo: kopf.Memo, **kwargs: Any) -> None:
    """Start the sweep; Kopf passes its (still filling) indexes to startup handlers."""
    memo["sweep"] = asyncio.create_task(run_forever(kwargs, schedule()), name="kiln sweep")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await context.stop_task(memo, "sweep")
