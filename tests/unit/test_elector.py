"""The Lease's fence, on a fake clock and a fake API server: a write that passed it is sent
once and is over within the Lease's margin; a renewal in flight does not reopen it after
``release()``; work of an earlier term is fenced out when the replica leads again."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3

from kiln.handlers import context, leadership
from kiln.handlers.workqueue import WorkQueue
from kiln.kube import lease
from kiln.kube.auth import Credentials
from kiln.kube.client import ApiError, Client

TIMING = lease.Timing(lease=15, renew_deadline=10, retry=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeLeases:
    """One Lease, with resourceVersion compare-and-swap; ``hold`` blocks the next PUT."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        self.lock = threading.Lock()

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        if self.down:
            raise OSError("unreachable")
        if method == "PUT" and self.hold is not None:
            hold, self.hold = self.hold, None
            self.holding.set()
            hold.wait(10)
        with self.lock:
            if method == "GET":
                if self.lease is None:
                    raise ApiError(404, "Not Found", "{}")
                return copy.deepcopy(self.lease)
            if method in ("POST", "PUT"):
                if method == "PUT" and (self.lease is None or body["metadata"].get(
                        "resourceVersion") != self.lease["metadata"]["resourceVersion"]):
                    raise ApiError(409, "Conflict", "{}")
                self.rv += 1
                self.lease = copy.deepcopy(body)
                self.lease["metadata"]["resourceVersion"] = str(self.rv)
                return copy.deepcopy(self.lease)
        raise AssertionError(method)


def elector(monkeypatch: pytest.MonkeyPatch) -> tuple[lease.Elector, FakeLeases, Clock,
                                                       list[str]]:
    clock = Clock()
    monkeypatch.setattr(lease, "time", clock)
    api = FakeLeases()
    calls: list[str] = []
    found = lease.Elector(api, "ns", "kiln", "me_1", TIMING,  # type: ignore[arg-type]
                           on_lead=lambda: calls.append("lead"),
                           on_lose=lambda: calls.append("lose"))
    return found, api, clock, calls


def test_a_renewal_in_flight_does_not_reopen_the_fence_after_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    found, api, clock, _ = elector(monkeypatch)
    found.step()
    assert found.fence()
    clock.now += TIMING.retry
    held = api.hold = threading.Event()
    renewal = threading.Thread(target=found.step)
    renewal.start()
    assert api.holding.wait(5)  # the renewal's PUT is on its way
    found.release()
    assert not found.fence()
    held.set()  # the renewal lands after the release
    renewal.join(5)
    assert not found.fence()
    clock.now += TIMING.retry
    found.step()  # the loop, were it still running, never leads again
    assert not found.fence()


def test_work_of_an_earlier_term_is_fenced_out(monkeypatch: pytest.MonkeyPatch) -> None:
    found, api, clock, calls = elector(monkeypatch)
    found.step()
    assert calls == ["lead"] and found.term == 1
    first = contextvars.Context()
    first.run(lease.TERM.set, found.term)
    assert first.run(found.fence)
    api.down = True  # cut off: the fence closes on time, the loop stops leading
    clock.now += TIMING.renew_deadline
    found.step()
    assert calls == ["lead", "lose"] and not first.run(found.fence)
    api.down = False
    clock.now += TIMING.retry
    found.step()  # leads again: a new term
    assert calls == ["lead", "lose", "lead"] and found.term == 2
    second = contextvars.Context()
    second.run(lease.TERM.set, found.term)
    assert second.run(found.fence)
    assert not first.run(found.fence)  # an old term's worker thread, still running
    assert found.fence()  # no term (outside the leader's tasks): time alone


def test_the_leaders_tasks_and_their_worker_threads_carry_the_term() -> None:
    seen: list[int | None] = []
    queue: WorkQueue[str] = WorkQueue(2)

    async def task(_: dict[str, Any]) -> None:
        seen.append(lease.TERM.get())
        queue.add("x")
        runner = asyncio.create_task(queue.run(lambda ref, moved: seen.append(
            lease.TERM.get())))
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        runner.cancel()
        seen.append(await asyncio.to_thread(lease.TERM.get))

    async def scenario() -> None:
        saved, terms = dict(leadership._registered), list(leadership._new_term)
        leadership._registered.clear()
        leadership._new_term.clear()  # the reconcilers are not made here
        leadership._registered["t"] = task
        try:
            leadership._start({}, 7)
            await asyncio.wait_for(leadership._running["t"], 5)
        finally:
            leadership._stop()
            leadership._registered.clear()
            leadership._registered.update(saved)
            leadership._new_term[:] = terms

    asyncio.run(scenario())
    assert seen == [7, 7, 7]


def test_stop_waits_for_the_lease_loop_before_releasing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        stop.wait()
        time.sleep(0.3)  # a renewal in flight as the operator stops
        order.append("loop ended")

    class Fake:
        timing = TIMING

        def release(self) -> None:
            order.append("released")

    thread = threading.Thread(target=loop)
    thread.start()
    monkeypatch.setattr(context, "elector", Fake)
    monkeypatch.setitem(leadership._lease, "thread", thread)
    monkeypatch.setitem(leadership._lease, "stop", stop)
    try:
        asyncio.run(leadership.stop())
    finally:
        stop.set()
        thread.join()
    assert order == ["loop ended", "released"]


def test_a_fenced_write_is_sent_once_and_bounded(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes requests and never answers: urllib3's default retries would
    resend a PUT or DELETE (after the fence closed); kiln sends each once, and gives up
    within the write timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    arrivals: list[bytes] = []
    hung: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            hung.append(conn)
            arrivals.append(conn.recv(65536).split(b"\r\n", 1)[0])

    threading.Thread(target=serve, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{server.getsockname()[1]}"}}}}]
users: [{{name: u, user: {{token: abc}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1")
    api = Client(Credentials(kubeconfig=str(config)), fence=lambda: True,
                 write_timeout=lambda: 0.5)
    try:
        for method in ("PUT", "DELETE", "POST", "PATCH"):
            arrivals.clear()
            started = time.monotonic()
            with pytest.raises(urllib3.exceptions.HTTPError):  # a timeout, however wrapped
                api.request(method, "/apis/batch/v1/namespaces/x/jobs/j", {"a": 1},
                            timeout=(5.0, 5.0))
            took = time.monotonic() - started
            time.sleep(0.3)  # a retry would have arrived by now
            assert len(arrivals) == 1, (method, arrivals)
            assert took < 1.5, (method, took)
    finally:
        server.close()
        for conn in hung:
            conn.close()
