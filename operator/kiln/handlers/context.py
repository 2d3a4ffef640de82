"""What the handlers share: the operator config, the API client, the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any, cast

import kopf

from kiln.config import OperatorConfig
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.kube import Kube, load_config
from kiln.status import Event


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def kube() -> Kube:
    return Kube(load_config())


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
