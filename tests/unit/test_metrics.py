"""kiln's metrics: each helper moves its figure in the exposition text, ``once`` makes
level-based calls count a fact once, labels stay bounded, ``/metrics`` is served over HTTP.

Counters are process-wide, so every test compares before and after, and uses identities of
its own (a fresh uuid) for ``once`` and for owners.
"""

from __future__ import annotations

import socket
import urllib.request
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kiln import metrics

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape() -> dict[tuple[str, Labels], float]:
    """The registry as Prometheus would read it: exposition text, parsed back."""
    return parse(generate_latest(metrics.REGISTRY).decode())


def value(name: str, **labels: str) -> float:
    return scrape().get((name, tuple(sorted(labels.items()))), 0.0)


def moved(action: Callable[[], object], name: str, **labels: str) -> float:
    before = value(name, **labels)
    action()
    return value(name, **labels) - before


def ident() -> str:
    return uuid.uuid4().hex


def test_every_documented_metric_is_exposed() -> None:
    names = {name for name, _ in scrape()}
    for expected in ("kiln_builds_started_total", "kiln_builds_succeeded_total",
                     "kiln_build_seconds_count", "kiln_build_seconds_bucket",
                     "kiln_engine_cache_hits_total", "kiln_engine_cache_misses_total"):
        assert expected in names, expected
    assert ("kiln_engines_served", (("mode", "engine"),)) in scrape()
    assert ("kiln_engines_served", (("mode", "fallback"),)) in scrape()
    assert ("kiln_reconcile_errors_total", (("kind", "EngineBuild"),)) in scrape()
    assert ("kiln_reconcile_errors_total", (("kind", "EngineDeployment"),)) in scrape()


def test_build_started_counts_each_call_without_an_identity() -> None:
    def twice() -> None:
        metrics.record_build_started()
        metrics.record_build_started()

    assert moved(twice, "kiln_builds_started_total") == 2


def test_once_counts_a_fact_seen_on_every_reconcile_only_once() -> None:
    job = ident()

    def reconcile_three_times() -> None:
        for _ in range(3):
            metrics.record_build_started(once=job)

    assert moved(reconcile_three_times, "kiln_builds_started_total") == 1
    assert moved(lambda: metrics.record_build_started(once=ident()),
                 "kiln_builds_started_total") == 1


def test_success_counts_and_observes_the_build_time() -> None:
    job = ident()
    before = scrape()
    metrics.record_build_succeeded(700.0, once=job)
    metrics.record_build_succeeded(700.0, once=job)
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("kiln_builds_succeeded_total") == 1
    assert delta("kiln_build_seconds_count") == 1
    assert delta("kiln_build_seconds_sum") == 700.0
    assert delta("kiln_build_seconds_bucket", le="600.0") == 0
    assert delta("kiln_build_seconds_bucket", le="900.0") == 1


def test_a_finished_build_is_either_a_success_or_a_failure_not_both() -> None:
    job = ident()
    metrics.record_build_succeeded(10.0, once=job)
    assert moved(lambda: metrics.record_build_failed("ToolFailed", once=job),
                 "kiln_builds_failed_total", reason="ToolFailed") == 0


def test_failures_are_counted_by_reason() -> None:
    assert moved(lambda: metrics.record_build_failed("OutOfDisk", 30.0),
                 "kiln_builds_failed_total", reason="OutOfDisk") == 1
    assert moved(lambda: metrics.record_build_failed("BackoffLimitExceeded"),
                 "kiln_builds_failed_total", reason="BackoffLimitExceeded") == 1


@pytest.mark.parametrize("reason", [None, "", "not a code", "x" * 100, "lower", "A-B",
                                    "Reason\nInjected"])
def test_reasons_that_are_not_codes_become_unknown(reason: str | None) -> None:
    assert metrics.reason_label(reason) == "Unknown"
    assert moved(lambda: metrics.record_build_failed(reason),
                 "kiln_builds_failed_total", reason="Unknown") == 1


def test_cache_hits_and_misses() -> None:
    key = ident()
    assert moved(lambda: metrics.record_cache(True), "kiln_engine_cache_hits_total") == 1
    assert moved(lambda: metrics.record_cache(False), "kiln_engine_cache_misses_total") == 1

    def level_based() -> None:
        for _ in range(3):
            metrics.record_cache(hit=True, once=key)

    assert moved(level_based, "kiln_engine_cache_hits_total") == 1


def test_reconcile_errors_by_kind_with_a_bounded_label() -> None:
    assert moved(lambda: metrics.record_reconcile_error("EngineBuild"),
                 "kiln_reconcile_errors_total", kind="EngineBuild") == 1
    assert moved(lambda: metrics.record_reconcile_error("Something/else"),
                 "kiln_reconcile_errors_total", kind="Other") == 1


def test_engines_served_is_the_sum_over_deployments() -> None:
    a, b = f"ns/{ident()}", f"ns/{ident()}"
    engine0, fallback0 = value("kiln_engines_served", mode="engine"), value(
        "kiln_engines_served", mode="fallback")
    metrics.set_engines_served(a, {"engine": 2, "fallback": 1})
    metrics.set_engines_served(b, {"engine": 1})
    assert value("kiln_engines_served", mode="engine") == engine0 + 3
    assert value("kiln_engines_served", mode="fallback") == fallback0 + 1
    metrics.set_engines_served(a, {"engine": 3})  # the fallback was replaced by an engine
    assert value("kiln_engines_served", mode="engine") == engine0 + 4
    assert value("kiln_engines_served", mode="fallback") == fallback0
    metrics.forget_engines_served(a)
    metrics.forget_engines_served(b)
    assert value("kiln_engines_served", mode="engine") == engine0


def test_engines_served_refuses_unknown_modes_and_negative_counts() -> None:
    with pytest.raises(ValueError, match="serving mode"):
        metrics.set_engines_served("ns/x", {"turbo": 1})
    with pytest.raises(ValueError, match="negative"):
        metrics.set_engines_served("ns/x", {"engine": -1})


def test_port_from_env() -> None:
    assert metrics.port_from_env({}) == 8081
    assert metrics.port_from_env({"KILN_METRICS_PORT": "9100"}) == 9100
    assert metrics.port_from_env({"KILN_METRICS_PORT": "0"}) == 0
    with pytest.raises(ValueError, match="not a port"):
        metrics.port_from_env({"KILN_METRICS_PORT": "70000"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_are_served_over_http() -> None:
    port = _free_port()
    assert metrics.serve(port, addr="127.0.0.1") == port
    metrics.record_build_started()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        served = parse(response.read().decode())
    assert served[("kiln_builds_started_total", ())] == value("kiln_builds_started_total")
    assert ("process_cpu_seconds_total", ()) in served


def test_port_zero_disables_and_a_busy_port_does_not_stop_the_operator() -> None:
    assert metrics.serve(0) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert metrics.serve(busy.getsockname()[1], addr="127.0.0.1") is None
