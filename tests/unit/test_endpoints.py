"""Slots per endpoint: a burst against a healthy endpoint queues, calls to one that hangs
fail fast once every slot is held by a call that does not answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kiln.errors import Unavailable
from kiln.sources import endpoints


def test_a_burst_at_a_busy_but_healthy_endpoint_waits_its_turn() -> None:
    """Twelve 0.3 s calls on eight workers: some wait longer than a call takes, none fails."""
    def call(_: int) -> bool:
        with endpoints.slot("healthy", "read"):
            time.sleep(0.3)
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(12)))


def test_calls_to_a_hanging_endpoint_fail_fast_and_release_nothing_they_did_not_take(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "HUNG_SECONDS", 0.5)
    release = threading.Event()

    def hang() -> None:
        with endpoints.slot("hanging", "read"):
            release.wait(10)

    holders = [threading.Thread(target=hang) for _ in range(endpoints.IN_FLIGHT)]
    for t in holders:
        t.start()
    time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(Unavailable) as busy, endpoints.slot("hanging", "read"):
        pass
    assert busy.value.reason == "EndpointBusy"
    assert time.monotonic() - started < 2.0
    with endpoints.slot("another", "read"):  # other endpoints are not held up
        pass
    release.set()
    for t in holders:
        t.join()
    with endpoints.slot("hanging", "read"):  # every slot came back
        pass


def test_slow_but_answering_calls_keep_waiters_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings slower than the hang threshold, one finishing now and then: not a hang."""
    monkeypatch.setattr(endpoints, "HUNG_SECONDS", 0.4)

    def call(i: int) -> bool:
        with endpoints.slot("slow", "list"):
            time.sleep(0.3 + 0.2 * (i % endpoints.IN_FLIGHT))
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(12)))


def test_tenants_of_a_shared_endpoint_do_not_share_slots_and_one_server_is_one() -> None:
    assert endpoints.endpoint_of("s3://a/x/", None) != endpoints.endpoint_of("s3://b/x/", None)
    assert endpoints.endpoint_of("hf://org/a@main", None) != endpoints.endpoint_of(
        "hf://org/b", None)
    assert endpoints.endpoint_of("s3://a/", {"AWS_ENDPOINT_URL": "http://H:9/"}) == \
        endpoints.endpoint_of("s3://b/", {"AWS_ENDPOINT_URL": "http://h:9"})
    assert endpoints.endpoint_of("s3://a/", {"AWS_ENDPOINT_URL": "https://x"}) == \
        endpoints.endpoint_of("s3://a/", {"AWS_ENDPOINT_URL": "https://x:443"})
    assert endpoints.endpoint_of("s3://a/", {"AWS_ENDPOINT_URL": "10.0.0.1:9000"}) != \
        endpoints.endpoint_of("s3://a/", {"AWS_ENDPOINT_URL": "10.0.0.2:9000"})


def test_one_namespace_holds_its_share_of_tenant_slots_and_another_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: tenant A's calls to endpoints it named hang; A's next call is refused at
    once, tenant B's call to an endpoint of its own goes on."""
    monkeypatch.setattr(endpoints, "HUNG_SECONDS", 0.3)
    release = threading.Event()
    held = [threading.Event() for _ in range(endpoints.TENANT_SHARE)]

    def hang(i: int) -> None:
        with endpoints.slot(f"http://a-{i}:80", "read", tenant="tenant-a"):
            held[i].set()
            release.wait(10)

    holders = [threading.Thread(target=hang, args=(i,)) for i in range(endpoints.TENANT_SHARE)]
    for t in holders:
        t.start()
    assert all(h.wait(10) for h in held), "tenant A's calls did not take their slots"
    try:
        with pytest.raises(Unavailable) as busy, endpoints.slot(
                "http://a-9:80", "read", tenant="tenant-a"):
            pass
        assert busy.value.reason == "EndpointBusy"
        with endpoints.slot("http://b:80", "read", tenant="tenant-b"):
            pass
    finally:
        release.set()
        for t in holders:
            t.join()
