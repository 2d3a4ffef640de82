"""What the handlers share: the operator config, the API client, the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any, cast

import kopf

from kiln.api import Condition
from kiln.config import OperatorConfig
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.errors import KilnError
from kiln.kube import Kube, load_config
from kiln.status import Event, set_conditions


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def kube() -> Kube:
    return Kube(load_config())


def stall(plural: str, body: dict[str, Any], error: KilnError, **extra: Any) -> None:
    """A permanent problem before the object's own work could start: ``Stalled`` in its
    status (plus ``extra`` status fields) and a Warning Event; nothing written if unchanged."""
    generation = int(body["metadata"].get("generation") or 0)
    current = body.get("status") or {}
    old = [Condition.model_validate(c) for c in current.get("conditions") or []]
    message = f"{error.reason}: {error.message}"
    conditions = set_conditions(old, generation=generation, ready=False, reconciling=False,
                                stalled=True, reason=error.reason, message=message)
    status = {"observedGeneration": generation, **extra,
              "conditions": [c.to_dict() for c in conditions]}
    if {k: current.get(k) for k in status} != status:
        meta = body["metadata"]
        kube().patch_status(plural, meta["namespace"], meta["name"], status)
        emit(body, Event("Warning", error.reason, error.message))


def emit(body: dict[str, Any], event: Event) -> None:
    """Post a Kubernetes Event about ``body``: through Kopf's queue from its handlers, directly
    from elsewhere (the sweep), where Kopf has no queue to give."""
    try:
        kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason,
                   message=event.message)
    except LookupError:
        kube().post_event(body, event.type, event.reason, event.message)


async def stop_task(memo: kopf.Memo, name: str) -> None:
    """Cancel the background task a startup handler kept in ``memo[name]``, and wait for it."""
    task: asyncio.Task[None] | None = memo.get(name)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@functools.cache
def engine_builds() -> EngineBuildReconciler:
    return EngineBuildReconciler(kube(), config(), emit)
