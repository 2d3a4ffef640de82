"""EngineBuild planning: pure decisions from facts, run twice they agree."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.api import EngineBuild, EngineBuildStatus
from kiln.contract.manifest import Manifest
from kiln.engine_build.jobs import Failure, ObservedJob, failure_from_pod, job_name, observe
from kiln.engine_build.plan import Plan, Want, plan
from kiln.engine_build.targets import effective

UID = "uid-1"


def eb(generation: int = 1, status: dict[str, Any] | None = None,
       targets: list[dict[str, Any]] | None = None) -> EngineBuild:
    return EngineBuild.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": UID, "generation": generation},
        "spec": {"model": {"source": "s3://models/llama/"},
                 "targets": targets if targets is not None else [{"gpu": "H100-SXM"},
                                                                 {"gpu": "A100-80GB"}]},
        **({"status": status} if status else {}),
    })


def wants(obj: EngineBuild, prefix: str = "k") -> list[Want]:
    return [Want(t, f"{prefix}{i}" * 8, f"s3://engines/engines/{prefix}{i}/")
            for i, t in enumerate(effective(obj.spec, []))]


def manifest(key: str) -> Manifest:
    return Manifest.model_validate({
        "key": key, "inputs": {}, "versions": {"tensorrt_llm": "1.2.1", "tensorrt": "10.11"},
        "files": [], "totalBytes": 123, "buildSeconds": 4.5})


def run(obj: EngineBuild, ws: list[Want], **facts: Any) -> Plan:
    args: dict[str, Any] = {"identity": "w1", "checked_at": None, "source": "s3://m/",
                            "auto_targets": [], "manifests": {}, "jobs": {},
                            "failures": {}, "uid": UID}
    return plan(obj, ws, **(args | facts))


def job(key: str, state: str, owners: tuple[str, ...] = (UID,)) -> ObservedJob:
    return ObservedJob(job_name(key), key, state, owners)  # type: ignore[arg-type]


def test_nothing_built_yet_asks_for_one_job_per_target() -> None:
    obj = eb()
    ws = wants(obj)
    result = run(obj, ws)
    assert [w.target.name for w in result.create] == ["H100-SXM", "A100-80GB"]
    assert result.status.phase == "Building"
    assert {e.state for e in result.status.engines} == {"Building"}
    assert [e.job for e in result.status.engines] == [job_name(w.key) for w in ws]
    conditions = {c.type: c.status for c in result.status.conditions}
    assert conditions == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert [e.reason for e in result.events] == ["BuildStarted", "BuildStarted"]


def test_engines_in_the_store_are_cached_and_need_no_job() -> None:
    obj = eb()
    ws = wants(obj)
    result = run(obj, ws, manifests={w.key: manifest(w.key) for w in ws})
    assert result.create == []
    assert result.status.phase == "Ready"
    assert [e.state for e in result.status.engines] == ["Cached", "Cached"]
    assert result.status.engines[0].size_bytes == 123
    assert result.status.engines[0].trtllm_version == "1.2.1"
    assert {c.type: c.status for c in result.status.conditions}["Ready"] == "True"


def test_a_finished_job_with_its_manifest_is_ready() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    result = run(obj, [w], manifests={w.key: manifest(w.key)},
                 jobs={w.key: job(w.key, "Succeeded")})
    assert result.status.engines[0].state == "Ready"
    assert result.status.engines[0].job == job_name(w.key)


def test_the_plan_is_a_fixed_point() -> None:
    obj = eb()
    ws = wants(obj)
    first = run(obj, ws, jobs={ws[0].key: job(ws[0].key, "Active")})
    again = run(eb(status=first.status.to_dict()), ws,
                jobs={ws[0].key: job(ws[0].key, "Active")})
    assert again.status == first.status
    assert again.events == []
    assert [w.key for w in again.create] == [w.key for w in first.create]


def test_failed_build_stalls_with_the_builders_reason_and_is_not_recreated() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    failure = Failure("NoConfig", "no config.json under s3://models/llama/")
    result = run(obj, [w], jobs={w.key: job(w.key, "Failed")}, failures={w.key: failure})
    assert result.create == []
    assert result.status.phase == "Failed"
    assert result.status.engines[0].message == "NoConfig: no config.json under s3://models/llama/"
    stalled = {c.type: c for c in result.status.conditions}["Stalled"]
    assert stalled.status == "True"
    assert "NoConfig" in (stalled.message or "")
    assert [e.reason for e in result.events] == ["BuildFailed"]
    # The Job is gone (TTL); the same generation keeps the verdict instead of rebuilding.
    later = run(eb(status=result.status.to_dict()), [w])
    assert later.create == []
    assert later.status.engines[0].state == "Failed"
    # A new generation tries again.
    retried = run(eb(generation=2, status=result.status.to_dict()), [w])
    assert [x.key for x in retried.create] == [w.key]


def test_new_weights_keep_naming_the_engine_served_before() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (old,) = wants(obj, "a")
    ready = run(obj, [old], manifests={old.key: manifest(old.key)})
    (new,) = wants(obj, "b")
    building = run(eb(status=ready.status.to_dict()), [new], identity="w2")
    entry = building.status.engines[0]
    assert (entry.key, entry.state) == (new.key, "Building")
    assert (entry.previous_key, entry.previous_uri) == (old.key, old.uri)
    assert "WeightsChanged" in [e.reason for e in building.events]
    done = run(eb(status=building.status.to_dict()), [new], identity="w2",
               manifests={new.key: manifest(new.key)}, jobs={new.key: job(new.key, "Succeeded")})
    assert done.status.engines[0].state == "Ready"
    assert done.status.engines[0].previous_key is None


def test_jobs_of_keys_no_longer_wanted_are_released() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    stale = job("f" * 64, "Active")
    foreign = job("e" * 64, "Active", owners=("someone-else",))
    result = run(obj, [w], jobs={stale.key: stale, foreign.key: foreign})
    assert result.release == [stale]


def test_an_auto_target_the_spec_cannot_build_for_fails_unsupported_without_a_job() -> None:
    """targets: [] passes every CEL rule; an auto target (an EngineDeployment's GPU) must meet
    the catalogue too: fp8 on an A100 fails that engine, the H100 one builds."""
    obj = EngineBuild.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [],
                 "build": {"quantization": {"algo": "fp8"}}}})
    resolved = effective(obj.spec, ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"])
    ws = [Want(t, f"k{i}" * 8, f"s3://engines/engines/k{i}/") for i, t in enumerate(resolved)]
    result = run(obj, ws, auto_targets=["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"])
    assert [w.target.name for w in result.create] == ["H100-SXM"]
    a100 = next(e for e in result.status.engines if e.target == "A100-80GB")
    assert a100.state == "Failed" and a100.job is None
    assert a100.message is not None and a100.message.startswith("Unsupported: ")
    assert "A100-80GB" in a100.message and "quantization.algo fp8" in a100.message
    assert "8.9" in a100.message
    assert result.status.phase == "Failed"
    assert any(e.reason == "BuildFailed" and "A100-80GB" in e.message for e in result.events)
    again = run(obj.model_copy(update={"status": result.status}), ws,
                auto_targets=["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"])
    assert [w.target.name for w in again.create] == ["H100-SXM"]
    assert again.status.engines == result.status.engines


def test_an_unknown_auto_product_is_checked_by_compute_capability() -> None:
    obj = EngineBuild.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [],
                 "build": {"quantization": {"algo": "nvfp4"}}}})
    resolved = effective(obj.spec, ["NVIDIA-Future-GPU@9.0"])
    result = run(obj, [Want(resolved[0], "k" * 64, "s3://e/engines/k/")])
    assert result.create == []
    assert "compute capability 9.0" in (result.status.engines[0].message or "")


def test_no_targets_is_pending_not_stalled() -> None:
    result = run(eb(targets=[]), [])
    assert result.status.phase == "Pending"
    conditions = {c.type: c for c in result.status.conditions}
    assert conditions["Ready"].reason == "NoTargets"
    assert conditions["Stalled"].status == "False"


@pytest.mark.parametrize(("conditions", "state"), [
    ([{"type": "Complete", "status": "True"}], "Succeeded"),
    ([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], "Failed"),
    ([], "Active"),
])
def test_observe_reads_job_conditions(conditions: list[dict[str, str]], state: str) -> None:
    body = {"metadata": {"name": "j", "annotations": {"kiln.dev/engine-key": "abc"},
                         "ownerReferences": [{"uid": "u1"}, {"uid": "u2"}]},
            "status": {"conditions": conditions}}
    observed = observe(body)
    assert (observed.state, observed.key, observed.owner_uids) == (state, "abc", ("u1", "u2"))


def test_failure_from_pod_prefers_the_builders_structured_message() -> None:
    def pod(message: str) -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"state": {"terminated": {
            "exitCode": 2, "message": message}}}]}}

    structured = failure_from_pod(pod('{"reason": "NoConfig", "message": "m", "retryable": false}'))
    assert structured == Failure("NoConfig", "m", False)
    plain = failure_from_pod(pod("Traceback ... boom"))
    assert plain is not None
    assert plain.reason == "BuilderFailed"
    assert "boom" in plain.message


def test_status_round_trips_through_the_model() -> None:
    result = run(eb(), wants(eb()))
    assert EngineBuildStatus.model_validate(result.status.to_dict()) == result.status


def test_a_failed_job_is_replaced_once_the_spec_changes() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    failed = job(w.key, "Failed")
    first = run(obj, [w], jobs={w.key: failed})
    assert first.replace == []
    assert first.create == []
    edited = run(eb(generation=2, status=first.status.to_dict()), [w], jobs={w.key: failed})
    assert edited.replace == [failed]
    assert [x.key for x in edited.create] == [w.key]
    assert edited.status.engines[0].state == "Building"


def test_a_manifest_before_its_own_job_completes_is_ready_not_cached() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    result = run(obj, [w], manifests={w.key: manifest(w.key)},
                 jobs={w.key: job(w.key, "Active")})
    assert result.status.engines[0].state == "Ready"
    other = run(obj, [w], manifests={w.key: manifest(w.key)},
                jobs={w.key: job(w.key, "Active", owners=("someone-else",))})
    assert other.status.engines[0].state == "Cached"


def test_what_trtllm_build_turned_off_is_in_status_and_a_warning() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    said = ("plugins.pagedContextFmha is True in the spec, but trtllm-build built the engine "
            "with use_paged_context_fmha=False")
    built = manifest(w.key).model_copy(update={
        "built": {"pagedContextFmha": False, "contextFmha": True}, "overridden": [said]})
    result = run(obj, [w], manifests={w.key: built}, jobs={w.key: job(w.key, "Succeeded")})
    (entry,) = result.status.engines
    assert entry.state == "Ready"
    assert entry.plugins == {"pagedContextFmha": False, "contextFmha": True}
    assert entry.message == said
    warnings = [e for e in result.events if e.type == "Warning"]
    assert [(e.reason, e.message) for e in warnings] == [
        ("PluginsOverridden", f"engine {w.key[:12]} for H100-SXM: {said}")]


def test_a_retrying_pass_keeps_the_observed_generation_of_the_spec_it_last_applied() -> None:
    """A pass of a new spec that failed in a way that may heal did not apply it: a Failed
    engine of the old spec is still retried once one does (it once looked applied)."""
    from kiln.engine_build.plan import retrying
    status, _ = retrying(eb(generation=2, status={"observedGeneration": 1}), "Unavailable",
                         "Retrying Unavailable: s3 (attempt 1, next in 2s)")
    assert status.observed_generation == 1
    assert {c.type: c.status for c in status.conditions}["Reconciling"] == "True"


def test_a_retry_counts_its_delay_from_after_the_status_write() -> None:
    from kiln.reconcile.backoff import Backoff
    now = [0.0]
    backoff = Backoff(base=2.0, clock=lambda: now[0])
    backoff.failed("a", "v1")
    now[0] = 5.0  # the status write took 5 s: the 2 s delay would be gone already
    assert backoff.next_try("a") is None  # a due time already past schedules nothing...
    backoff.wait_from_now("a")
    assert backoff.next_try("a") == 2.0  # ...so the write's own pass counts from after it


def ready(obj: EngineBuild, w: Want, state: str = "Ready") -> EngineBuild:
    """``obj`` as a pass that found ``w``'s engine wrote it."""
    status = run(obj, [w], manifests={w.key: manifest(w.key)},
                 jobs={w.key: job(w.key, "Succeeded")}).status
    entry = status.engines[0].model_copy(update={"state": state})
    return eb(targets=[{"gpu": "H100-SXM"}], status=status.model_copy(
        update={"engines": [entry]}).to_dict())


@pytest.mark.parametrize("state", ["Ready", "Cached"])
def test_an_engine_that_was_ready_and_left_the_store_is_built_again_replacing_its_job(
        state: str) -> None:
    (w,) = wants(eb(targets=[{"gpu": "H100-SXM"}]))
    obj = ready(eb(targets=[{"gpu": "H100-SXM"}]), w, state)
    done = job(w.key, "Succeeded")
    why = "EngineDamaged: rank0.engine: its sha256 is a, the manifest says b: set aside"
    result = run(obj, [w], jobs={w.key: done}, lost={w.key: why})
    (entry,) = result.status.engines
    assert (entry.state, entry.message, entry.key) == ("Building", why, w.key)
    assert result.create == [w] and result.replace == [done]
    assert result.status.phase == "Building"
    assert ("Warning", "EngineDamaged") in [(e.type, e.reason) for e in result.events]
    # The next pass, its new Job running: still Building, still saying why.
    again = eb(targets=[{"gpu": "H100-SXM"}], status=result.status.to_dict())
    later = run(again, [w], jobs={w.key: job(w.key, "Active")}, lost={w.key: why})
    assert later.status.engines[0].message == why and later.replace == []
    assert "EngineDamaged" not in [e.reason for e in later.events]
    # Built again: Ready, with the new upload (serving pods roll onto it).
    rebuilt = manifest(w.key).model_copy(update={"upload": "u2"})
    final = run(eb(targets=[{"gpu": "H100-SXM"}], status=later.status.to_dict()), [w],
                manifests={w.key: rebuilt}, jobs={w.key: job(w.key, "Succeeded")})
    assert (final.status.engines[0].state, final.status.engines[0].upload) == ("Ready", "u2")


def test_a_build_that_never_made_its_engine_is_not_built_again_for_ever() -> None:
    obj = eb(targets=[{"gpu": "H100-SXM"}])
    (w,) = wants(obj)
    first = run(obj, [w], jobs={w.key: job(w.key, "Active")})
    then = eb(targets=[{"gpu": "H100-SXM"}], status=first.status.to_dict())
    result = run(then, [w], jobs={w.key: job(w.key, "Succeeded")},
                 lost={w.key: "EngineMissing: gone"})
    assert result.status.engines[0].state == "Failed"
    assert result.status.engines[0].message.startswith("ManifestMissing")  # type: ignore[union-attr]
    assert result.replace == [] and result.create == []


def test_an_auto_target_a_flag_is_refused_on_fails_unsupported_naming_the_rule() -> None:
    """extraArgs ``--gemm_swiglu_plugin=fp8``: PluginConfig.validate refuses it on compute
    capability 10.0 exactly. CEL checks spec.targets; an auto B200 is checked here, before any
    Job (and GPU time), the H100 one builds."""
    obj = EngineBuild.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [],
                 "build": {"extraArgs": ["--gemm_swiglu_plugin=fp8"]}}})
    products = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-B200"]
    resolved = effective(obj.spec, products)
    ws = [Want(t, f"k{i}" * 8, f"s3://engines/engines/k{i}/") for i, t in enumerate(resolved)]
    result = run(obj, ws, auto_targets=products)
    assert [w.target.name for w in result.create] == ["H100-SXM"]
    b200 = next(e for e in result.status.engines if e.target == "B200")
    assert b200.state == "Failed" and b200.job is None
    assert b200.message is not None and b200.message.startswith("Unsupported: ")
    assert "plugins_sm100" in b200.message and "extraArgs --gemm_swiglu_plugin=fp8" in \
        b200.message
