"""The rollout gate's pure parts: AIPerf's export read into figures, the report in the
termination message, the verdict against the thresholds, and the canary's Deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.api import EngineDeployment
from kiln.contract.gate import Figures, GateReport, parse_report
from kiln.domain.labels import HASH_ANNOTATION, TEMPLATE_ANNOTATION, TRACK_LABEL
from kiln.engine_deployment.canary import canary_name, render_canary, verdict
from kiln.engine_deployment.deployments import observe
from kiln.gate.aiperf import EXPORT_JSON, figures


def ed(**gate: Any) -> EngineDeployment:
    return EngineDeployment.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u"},
        "spec": {"engineBuildRef": {"name": "b"}, "rollout": {"gate": gate}}})


STABLE = Figures(ttft_p50_ms=90, ttft_p99_ms=100, itl_ms=10, throughput=100, error_rate=0)


def test_aiperf_export_is_read_into_figures(tmp_path: Path) -> None:
    (tmp_path / EXPORT_JSON).write_text(json.dumps({
        "time_to_first_token": {"unit": "ms", "avg": 50, "p50": 40, "p99": 120},
        "inter_token_latency": {"unit": "ms", "avg": 7.5},
        "output_token_throughput": {"unit": "tokens/sec", "avg": 640},
        "request_count": {"unit": "requests", "avg": 9},
        "error_request_count": {"unit": "requests", "avg": 1}}))
    assert figures(tmp_path / EXPORT_JSON) == Figures(
        ttft_p50_ms=40, ttft_p99_ms=120, itl_ms=7.5, throughput=640, error_rate=0.1,
        requests=10)


def test_the_report_survives_the_termination_message() -> None:
    report = GateReport(canary=STABLE, stable=STABLE, golden_prompts=5, golden_mismatches=1,
                        examples=["'x': 'a' -> 'b'"])
    assert parse_report(report.message().decode()) == report
    assert parse_report('{"reason": "ToolFailed"}') is None


@pytest.mark.parametrize(("canary", "mismatches", "passed", "reason"), [
    (Figures(ttft_p99_ms=110, throughput=95, error_rate=0), 0, True, "GatePassed"),
    (Figures(ttft_p99_ms=130, throughput=95, error_rate=0), 0, False, "TtftRegressed"),
    (Figures(ttft_p99_ms=100, throughput=80, error_rate=0), 0, False, "ThroughputRegressed"),
    (Figures(ttft_p99_ms=100, throughput=100, error_rate=0.5), 0, False, "ErrorRate"),
    (Figures(ttft_p99_ms=50, throughput=200, error_rate=0), 1, False, "GoldenMismatch"),
    (Figures(), 0, False, "ErrorRate"),
])
def test_the_verdict_holds_every_threshold(canary: Figures, mismatches: int, passed: bool,
                                           reason: str) -> None:
    report = GateReport(canary=canary, stable=STABLE, golden_prompts=5,
                        golden_mismatches=mismatches)
    assert verdict(ed(), report)[:2] == (passed, reason)


def test_a_golden_tolerance_lets_a_share_of_answers_differ() -> None:
    report = GateReport(canary=STABLE, stable=STABLE, golden_prompts=5, golden_mismatches=1)
    assert verdict(ed(goldenTolerance=0.2), report)[0]


def test_the_canary_is_its_own_deployment_with_its_own_pods() -> None:
    main = {"metadata": {"name": "chat-h100", "labels": {"a": "b"},
                         "annotations": {HASH_ANNOTATION: "x"}},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"},
                                               "annotations": {TEMPLATE_ANNOTATION: "t"}},
                                  "spec": {}}}}
    out = render_canary(main, canary_name("chat-h100"), 1)
    seen = observe(out)
    assert (seen.name, seen.replicas, seen.canary) == ("chat-h100-canary", 1, True)
    assert out["spec"]["selector"]["matchLabels"][TRACK_LABEL] == "canary"
    assert seen.template_hash != "t" and seen.spec_hash != "x"
    assert main["spec"]["replicas"] == 4, "the product's own Deployment is left as it is"
    assert len(canary_name("x" * 60)) <= 63
