"""The rollout's pure decisions (``kiln.engine_deployment.canary.steer``): what each product's
Deployment serves while a new key is a canary, what the status of record keeps, and how a
gate Job's failure is read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kiln.api import EngineDeployment, RolloutStatus
from kiln.contract.gate import Figures, GateReport
from kiln.domain.pods import ObservedPod
from kiln.engine_deployment import canary
from kiln.engine_deployment.canary import GateRun, gate_job_name, is_gate_of, steer
from kiln.engine_deployment.deployments import ObservedDeployment
from kiln.engine_deployment.plan import Decision, Serve, scale_status, summarize

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
PRODUCT, MAIN, CANARY = "NVIDIA-H100-80GB-HBM3", "chat-h100-80gb-hbm3", \
    "chat-h100-80gb-hbm3-canary"
OLD, NEW = "a" * 64, "b" * 64
FAST = Figures(ttft_p50_ms=90, ttft_p99_ms=100, itl_ms=10, throughput=100, error_rate=0)


def ed(rollouts: list[RolloutStatus] | None = None, notes: dict[str, str] | None = None,
       **rollout: Any) -> EngineDeployment:
    return EngineDeployment.model_validate({
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u",
                     "annotations": notes or {}},
        "spec": {"engineBuildRef": {"name": "b"}, "replicas": 2,
                 "rollout": {"analysis": "0s", **rollout}},
        "status": {"rollouts": [r.to_dict() for r in rollouts or []]}})


def serve(key: str | None = NEW, mode: str = "engine") -> Serve:
    return Serve(PRODUCT, "H100-SXM", "9.0", MAIN, mode, "tensorrt",  # type: ignore[arg-type]
                 key, f"s3://e/{key}" if key else None)


def deployment(name: str = MAIN, key: str | None = OLD, mode: str = "engine",
               ready: bool = True, replicas: int = 2) -> ObservedDeployment:
    done = replicas if ready else 0
    return ObservedDeployment(
        name=name, product=PRODUCT, owner_uids=("u",), engine_key=key,
        engine_uri=f"s3://e/{key}" if key else None, mode=mode, backend="tensorrt",
        spec_hash="h", replicas=replicas, generation=1, observed_generation=1,
        status_replicas=replicas, updated_replicas=replicas, ready_replicas=done,
        available_replicas=done, canary=name == CANARY)


def pod(owner: str, ip: str) -> ObservedPod:
    return ObservedPod(name=f"{owner}-x-y", owner=f"{owner}-x", created=NOW, phase="Running",
                       ready=True, ip=ip)


PODS = [pod(MAIN, "10.0.0.1"), pod(CANARY, "10.0.0.2")]


def record(phase: str = "Analyzing", key: str = NEW, product: str = PRODUCT,
           **extra: Any) -> RolloutStatus:
    return RolloutStatus.model_validate({"gpuProduct": product, "phase": phase,
                                         "canaryKey": key, "stableKey": OLD, **extra})


def test_a_new_key_is_gated_while_the_baseline_serves_in_fallback() -> None:
    """Issue: fallback mode during the build skipped the gate; the new key then took every
    replica unmeasured."""
    out = steer(ed(), Decision(serves=[serve()]),
                [deployment(key=None, mode="fallback")], [], [], {}, NOW)
    assert out.decision.serves == [] and out.decision.kept == [MAIN], \
        "the baseline serves on, untouched"
    assert [(r.phase, r.stable_key) for r in out.rollouts] == [("Progressing", None)]
    assert [c.serve.engine_key for c in out.canaries] == [NEW]
    gated = steer(ed(out.rollouts), Decision(serves=[serve()]),
                  [deployment(key=None, mode="fallback")], [deployment(CANARY, NEW, replicas=1)],
                  PODS, {}, NOW)
    assert [g.stable_url for g in gated.gates] == ["http://10.0.0.1:8000"]
    assert "baseline" in (gated.rollouts[0].message or "")


def test_the_stable_deployment_is_kept_exactly_as_it_is_while_the_canary_runs() -> None:
    """Issue: the stable key was rendered again from the new EngineBuild's spec, rolling the
    old key's pods while the canary was analysed."""
    for phase in ("Progressing", "Analyzing", "Rejected", "RolledBack"):
        out = steer(ed([record(phase)]), Decision(serves=[serve()]), [deployment()],
                    [deployment(CANARY, NEW, replicas=1)], PODS, {}, NOW)
        assert out.decision.serves == [], phase
        assert out.decision.kept == [MAIN], phase
        assert out.holding == {PRODUCT: NEW}, phase
        assert "as it is" in out.decision.held[MAIN]


def test_rollouts_of_record_survive_a_stalled_or_pending_pass() -> None:
    """Issue: status.rollouts was wiped on stalled or pending passes (refused keys then
    tried again)."""
    kept = [record("Rejected", reason="TtftRegressed")]
    for decision in (Decision(stalled=("UnknownGPU", "x")),
                     Decision(pending=("EngineBuildNotFound", "y"))):
        status, _ = summarize(ed(kept), decision, [deployment()], {})
        assert status.rollouts == kept


def test_rejected_records_are_the_last_trimmed() -> None:
    """Issue: trimming dropped refusals first; a rejected key is never tried again only while
    its record stays."""
    rejected = [record("Rejected", key=f"{i:064x}") for i in range(canary.HISTORY)]
    promoted = [record("Promoted", key=f"f{i:063x}") for i in range(4)]
    rolled = [record("RolledBack", key=f"e{i:063x}") for i in range(2)]
    kept = canary.trim(rolled + rejected + promoted, set())
    assert kept == rejected
    assert canary.trim(promoted + rolled + rejected[:12], set()) == \
        promoted[2:] + rolled + rejected[:12]


def test_an_under_way_record_no_plan_reaches_is_aborted() -> None:
    """Issue: stale under-way records were never resolved."""
    third = "c" * 64
    out = steer(ed([record("Analyzing")]), Decision(serves=[serve(third)]), [deployment()],
                [deployment(CANARY, NEW, replicas=1)], PODS, {}, NOW)
    stale = next(r for r in out.rollouts if r.canary_key == NEW)
    assert (stale.phase, stale.reason) == ("Aborted", "Superseded")
    gone = steer(ed([record("Progressing")]), Decision(serves=[]), [], [], [], {}, NOW)
    assert [(r.phase, r.reason) for r in gone.rollouts] == [("Aborted", "Gone")]
    again = steer(ed(gone.rollouts), Decision(serves=[serve()]), [deployment()], [], [], {},
                  NOW)
    assert [r.phase for r in again.rollouts] == ["Progressing"], "an aborted key is tried again"


def test_a_decision_is_sticky_for_a_key() -> None:
    """Issue: both annotations on a key flipped it between Promoting and Rejected each pass."""
    notes = {"kiln.dev/promote": NEW[:12], "kiln.dev/reject": NEW[:12]}
    state = [record("Analyzing")]
    seen = []
    for _ in range(4):
        out = steer(ed(state, notes), Decision(serves=[serve()]), [deployment()],
                    [deployment(CANARY, NEW, replicas=1)], PODS, {}, NOW)
        state = out.rollouts
        seen.append(state[0].phase)
    assert seen == ["Analyzing"] * 4 and "neither" in (state[0].message or "")
    promote = {"kiln.dev/promote": NEW[:12]}
    gated = [record("Rejected", reason="TtftRegressed")]
    out = steer(ed(gated, promote), Decision(serves=[serve()]), [deployment()], [], PODS, {},
                NOW)
    assert out.rollouts[0].phase == "Promoting", "a person may promote what the gate refused"
    state = out.rollouts
    for _ in range(2):  # and it stays promoted, whatever the gate's figures said
        state = steer(ed(state, promote), Decision(serves=[serve()]), [deployment()], [],
                      PODS, {}, NOW).rollouts
        assert state[0].phase == "Promoting"


def _failed(pods: list[dict[str, Any]], reason: str = "BackoffLimitExceeded") -> GateRun:
    job = {"metadata": {"name": "g"},
           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason}]}}
    return canary.observe_gate(job, pods)


def test_an_infrastructure_failure_of_the_gate_is_transient() -> None:
    """Issue: an evicted or never-started gate pod made the key Rejected for good."""
    evicted = {"status": {"reason": "Evicted", "message": "node low on memory",
                          "containerStatuses": []}}
    assert _failed([evicted]).transient
    assert _failed([], "DeadlineExceeded").transient  # its pod never started (image pull)
    killed = {"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}]}}
    assert _failed([killed]).transient
    unreachable = {"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 1, "message": '{"reason": "Unavailable", "message": "no answer", '
                                  '"retryable": true}'}}}]}}
    assert _failed([unreachable]).transient
    tool = {"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 1, "message": '{"reason": "ToolFailed", "message": "aiperf died"}'}}}]}}
    assert not _failed([tool]).transient


def test_an_infrastructure_failure_runs_the_gate_again_then_waits_for_a_person() -> None:
    first = gate_job_name("chat", PRODUCT, NEW, 0)
    runs = {first: GateRun(first, True, False, message="pod Evicted", transient=True)}
    out = steer(ed([record("Analyzing")]), Decision(serves=[serve()]), [deployment()],
                [deployment(CANARY, NEW, replicas=1)], PODS, runs, NOW)
    r = out.rollouts[0]
    assert (r.phase, r.reason, r.gate_attempts) == ("Analyzing", "GateRetrying", 1)
    again = steer(ed(out.rollouts), Decision(serves=[serve()]), [deployment()],
                  [deployment(CANARY, NEW, replicas=1)], PODS, {}, NOW)
    assert [g.name for g in again.gates] == [gate_job_name("chat", PRODUCT, NEW, 1)]
    last = gate_job_name("chat", PRODUCT, NEW, 2)
    spent = steer(ed([record("Analyzing", gateAttempts=2)]), Decision(serves=[serve()]),
                  [deployment()], [deployment(CANARY, NEW, replicas=1)], PODS,
                  {last: GateRun(last, True, False, message="pod Evicted", transient=True)},
                  NOW)
    r = spent.rollouts[0]
    assert (r.phase, r.reason) == ("Analyzing", "GateUnavailable")
    assert spent.decision.kept == [MAIN] and not spent.gates


def test_a_gate_job_is_known_by_its_owner_and_annotations_not_its_name() -> None:
    """Issue: the gate Job's name held 10 characters of the key: keys alike there shared a
    Job, and its report."""
    twin = NEW[:10] + "c" * 54
    assert gate_job_name("chat", PRODUCT, NEW) != gate_job_name("chat", PRODUCT, twin)
    job = {"metadata": {"ownerReferences": [{"uid": "u", "controller": True}],
                        "annotations": {"kiln.dev/engine-key": NEW,
                                        "kiln.dev/gpu-product": PRODUCT}}}
    assert is_gate_of(job, "u", PRODUCT, NEW)
    assert not is_gate_of(job, "u", PRODUCT, twin) and not is_gate_of(job, "v", PRODUCT, NEW)
    name = gate_job_name("chat", PRODUCT, NEW)
    out = steer(ed([record("Analyzing")]), Decision(serves=[serve()]), [deployment()],
                [deployment(CANARY, NEW, replicas=1)], PODS,
                {name: GateRun(name, True, True, GateReport(canary=FAST, stable=FAST),
                               foreign=True)}, NOW)
    assert (out.rollouts[0].phase, out.rollouts[0].reason) == ("Analyzing", "GateJobNameTaken")


def test_the_scale_selector_counts_no_canary_pod() -> None:
    """Issue: an HPA read the canary's pods through /scale's selector."""
    from kiln.api import ProductStatus
    selector = scale_status("chat", [ProductStatus(gpu_product=PRODUCT, mode="engine",
                                                   deployment=MAIN)], [deployment()])["selector"]
    assert selector.endswith(",!kiln.dev/track")


def test_a_small_regression_within_the_floors_is_noise() -> None:
    """Issue: single-run figures made the ratios alone flaky on fast keys."""
    slow = Figures(ttft_p99_ms=10, throughput=20, error_rate=0)
    noisy = Figures(ttft_p99_ms=20, throughput=16, error_rate=0)  # 2x, -20%: a few ms, tok/s
    report = GateReport(canary=noisy, stable=slow, golden_prompts=5, golden_mismatches=0)
    assert canary.verdict(ed(), report)[:2] == (True, "GatePassed")
    worse = Figures(ttft_p99_ms=10 + 30, throughput=20, error_rate=0)
    assert canary.verdict(ed(), GateReport(canary=worse, stable=slow, golden_prompts=5,
                                           golden_mismatches=0))[1] == "TtftRegressed"


def test_a_triton_server_with_the_gate_is_refused_at_once() -> None:
    from kiln.api import EngineBuild
    from kiln.engine_deployment.plan import decide
    eb = EngineBuild.model_validate({"metadata": {"name": "b", "namespace": "ns"},
                                     "spec": {"model": {"source": "hf://org/m"},
                                              "targets": [{"gpu": "H100-SXM"}]}})
    triton = ed().model_copy(deep=True)
    triton.spec.server.kind = "triton"
    assert decide(triton, eb, {}, [], NOW).stalled[0] == "GateUnsupported"  # type: ignore[index]


def test_a_canary_without_room_says_why() -> None:
    """Issue: at exact quota headroom the canary's pods were never created and the rollout
    waited in Progressing, saying nothing."""
    blocked = replace(deployment(CANARY, NEW, ready=False, replicas=1),
                      replica_failure='pods "x" is forbidden: exceeded quota: gpus')
    out = steer(ed([record("Progressing")]), Decision(serves=[serve()]), [deployment()],
                [blocked], [], {}, NOW)
    r = out.rollouts[0]
    assert (r.phase, r.reason) == ("Progressing", "CanaryBlocked")
    assert "exceeded quota" in (r.message or "") and out.decision.kept == [MAIN]
    assert [e.reason for e in out.events] == ["CanaryBlocked"]
