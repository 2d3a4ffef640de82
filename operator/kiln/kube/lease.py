"""Leader election on a ``coordination.k8s.io`` Lease, and the fence every write passes.

client-go's rules, on this process's monotonic clock: a candidate takes the Lease only after
seeing its record unchanged for ``leaseDurationSeconds`` (or held by nobody); the leader renews
every ``retry`` seconds, and counts as leader only until ``renew_deadline`` after the start of
its last successful renewal. As ``renew_deadline < lease``, a leader that cannot renew (cut
off, or stopped with SIGSTOP) stops writing before anyone can take the Lease: ``fence()``
closes on time alone, whether or not the loop below got to run. A write that passed the fence
is sent once (no urllib3 retries) with a total timeout of ``lease - renew_deadline``
(:attr:`Elector.write_timeout`), so it is over before the Lease can be taken. Each time this
replica starts leading begins a new *term*; work started in an earlier term (a worker thread
that outlived its cancelled queue) carries that term in :data:`TERM` and is fenced out, and
once ``release()`` ran the fence never opens again. Neither the client's
``leaderelection`` module (ConfigMap locks only, wall clock, a leading thread nobody stops) nor
Kopf's peering (priorities, no deadline) gives that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3

from kiln.errors import InvalidInput, KilnError
from kiln.kube.client import ApiError, Client

log = logging.getLogger(__name__)

TERM: ContextVar[int | None] = ContextVar("kiln_leader_term", default=None)
"""The term the work running in this context was started in (set by the leader's tasks and
carried into their threads); None outside them (then the fence decides on time alone)."""


@dataclass(frozen=True)
class Timing:
    """The Lease's durations, in seconds (client-go's defaults)."""

    lease: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.lease:
            raise InvalidInput(f"leader election needs 0 < retry ({self.retry}) < renew "
                               f"deadline ({self.renew_deadline}) < lease ({self.lease})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Timing:
        env = os.environ if env is None else env
        return cls(lease=float(env.get("KILN_LEASE_DURATION_SECONDS", "15")),
                   renew_deadline=float(env.get("KILN_LEASE_RENEW_DEADLINE_SECONDS", "10")),
                   retry=float(env.get("KILN_LEASE_RETRY_SECONDS", "2")))


def identity() -> str:
    """This replica's name in the Lease: the pod's (``POD_NAME``) or host's, made unique."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Campaigns for ``namespace/name`` in a thread (``run``); ``on_lead`` and ``on_lose``
    are called from that thread as leadership starts and ends."""

    def __init__(self, api: Client, namespace: str, name: str, me: str, timing: Timing,
                 on_lead: Callable[[], object], on_lose: Callable[[], object]) -> None:
        self.api, self.namespace, self.name, self.me = api, namespace, name, me
        self.timing = timing
        self.on_lead, self.on_lose = on_lead, on_lose
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._valid_until = 0.0
        self._leading = False
        self._released = False
        self.term = 0
        """How many times this replica started leading; the current term while it leads."""
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0
        self.holder: str | None = None
        """Who held the Lease when last read."""

    @property
    def write_timeout(self) -> float:
        """The most a fenced write may take: sent before the fence closes (the renew deadline
        after the last renewal started), it is over before the Lease can expire."""
        return self.timing.lease - self.timing.renew_deadline

    def fence(self) -> bool:
        """Whether this replica may write now: it renewed its Lease less than the renew
        deadline ago, has not released it, and the caller's work (if any) belongs to the
        current term."""
        if self._released or time.monotonic() >= self._valid_until:
            return False
        term = TERM.get()
        return term is None or term == self.term

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        timeout = (self.timing.retry, max(1.0, self.timing.renew_deadline / 2))
        return self.api.request(method, path, body, fenced=False, timeout=timeout)

    def _try(self) -> bool:
        """Take or renew the Lease; whether this replica holds it now."""
        try:
            lease = self._request("GET", self.path)
        except ApiError as error:
            if error.status != 404:
                raise
            lease = None
        now = _now()
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": round(self.timing.lease),
                "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec}
            self._request("POST", self.path.rsplit("/", 1)[0], body)
            self.holder = self.me
            return True
        old = lease.get("spec") or {}
        self.holder = old.get("holderIdentity") or None
        record = (self.holder, old.get("renewTime"), old.get("leaseTransitions"),
                  lease["metadata"]["resourceVersion"])
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        lease_seconds = float(old.get("leaseDurationSeconds") or self.timing.lease)
        if (self.holder not in (None, self.me)
                and time.monotonic() < self._seen_at + lease_seconds):
            return False  # held by another, and not expired as far as this replica saw
        if self.holder == self.me:
            spec["acquireTime"] = old.get("acquireTime") or now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0)
        else:
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + 1
        lease["spec"] = spec  # resourceVersion kept: a concurrent taker gets a 409
        self._request("PUT", self.path, lease)
        if self.holder != self.me:
            log.info("Lease %s/%s taken over from %s", self.namespace, self.name,
                     self.holder or "nobody")
        self.holder = self.me
        return True

    def step(self) -> None:
        """One round: take or renew, and start or stop leading accordingly."""
        if self._released:
            return
        started = time.monotonic()
        try:
            held = self._try()
        except ApiError as error:
            held = False
            if error.status != 409:  # 409: another replica wrote first
                log.warning("Lease %s/%s: %s %s", self.namespace, self.name, error.status,
                            error.message)
        except (KilnError, urllib3.exceptions.HTTPError, OSError) as error:
            held = False
            log.warning("Lease %s/%s unreachable: %s", self.namespace, self.name, error)
        if held and not self._released:  # release() may have run during the request
            self._valid_until = started + self.timing.renew_deadline
        if held and not self._leading and not self._released:
            self._leading = True
            self.term += 1
            log.info("Leading as %s (Lease %s/%s)", self.me, self.namespace, self.name)
            self.on_lead()
        elif self._leading and not self.fence():
            self._leading = False
            log.warning("Lost the Lease %s/%s (not renewed for %.0f s): standing by",
                        self.namespace, self.name, self.timing.renew_deadline)
            self.on_lose()

    def run(self, stop: threading.Event) -> None:
        """Campaign until ``stop`` is set."""
        while not stop.is_set():
            self.step()
            stop.wait(self.timing.retry)

    def release(self) -> None:
        """Stop leading for good and hand the Lease back, so a standby takes it at once.
        Call it after the Lease loop stopped (a renewal in flight would take it again); the
        fence stays closed afterwards whatever that loop does."""
        was_leading = not self._released and time.monotonic() < self._valid_until
        self._released = True
        self._valid_until = 0.0
        if not was_leading:
            return
        try:
            lease = self._request("GET", self.path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.me:
                lease["spec"] = {**lease["spec"], "holderIdentity": None,
                                 "leaseDurationSeconds": 1, "renewTime": _now()}
                self._request("PUT", self.path, lease)
                log.info("Lease %s/%s released", self.namespace, self.name)
        except (ApiError, KilnError, urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("Lease %s/%s not released: %s", self.namespace, self.name, error)
