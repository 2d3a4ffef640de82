"""What the handlers share: the operator config, the credentials, the API client, the Lease,
the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import kopf

from kiln import __version__
from kiln.config import OperatorConfig
from kiln.domain.status import Event
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.kube import lease
from kiln.kube.auth import Credentials
from kiln.kube.client import Client, Kube


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def identity() -> str:
    """This replica's name, in the Lease and in its requests' User-Agent."""
    return lease.identity()


@functools.cache
def credentials() -> Credentials:
    """The one set of credentials: kiln's calls and Kopf's login."""
    return Credentials(user_agent=f"kiln/{__version__} ({identity()})")


@functools.cache
def client() -> Client:
    return Client(credentials(), fence=fence, write_timeout=write_timeout)


@functools.cache
def elector() -> lease.Elector | None:
    """The Lease this replica campaigns for; None when leader election is off."""
    cfg = config()
    if not cfg.leader_election:
        return None
    return lease.Elector(client(), cfg.lease_namespace, cfg.lease_name, identity(),
                          lease.Timing.from_env(), on_lead=lambda: None,
                          on_lose=lambda: None)


def fence() -> bool:
    """Whether this replica may write: always without leader election, else while its Lease
    is valid."""
    found = elector()
    return found is None or found.fence()


def write_timeout() -> float | None:
    """The most a fenced write may take: within the Lease's margin (None without election)."""
    found = elector()
    return None if found is None else found.write_timeout


@functools.cache
def kube() -> Kube:
    return Kube(client())


def emit(body: dict[str, Any], event: Event) -> None:
    """Post a Kubernetes Event about ``body``, through kiln's client: past the Lease's fence
    (Kopf's own posting is off, see ``settings``: its queue would post from a standby)."""
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
    return EngineBuildReconciler(kube(), config(), emit, wake=_wake)


def _wake(namespace: str, name: str) -> None:
    """Mark an EngineBuild due from a thread of the reconciler's own (an engine it asked
    about was checked and set aside)."""
    from kiln.handlers import engine_build  # it imports this module

    engine_build.mark_threadsafe(namespace, name)
