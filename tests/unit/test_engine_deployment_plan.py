"""EngineDeployment planning: pure decisions from the pool, the build's engines and the
Deployments kiln owns."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kiln.api import EngineBuild, EngineDeployment
from kiln.domain.pods import observe_pod
from kiln.domain.pool import GpuNode, auto_targets, gpu_node, pool_products, served_products
from kiln.engine_deployment.deployments import ObservedDeployment, deployment_name, observe
from kiln.engine_deployment.plan import Decision, engine_for, summarize
from kiln.engine_deployment.plan import decide as decide_at
from kiln.engine_deployment.trouble import trouble

UID = "ed-uid"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
H100, A100, L40S, H200 = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S",
                          "NVIDIA-H200")
KEY_H, KEY_H2, KEY_A = "a" * 64, "b" * 64, "c" * 64
POOL = {A100: "8.0", H100: "9.0", L40S: "8.9"}


def ed(gpu: str = "auto", fallback: str = "previous", status: dict[str, Any] | None = None,
       **spec: Any) -> EngineDeployment:
    return EngineDeployment.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": UID, "generation": 3},
        "spec": {"engineBuildRef": {"name": "llama-eb"}, "gpu": gpu, "fallback": fallback,
                 "replicas": 2, **spec},
        **({"status": status} if status else {}),
    })


def engine(target: str, product: str, key: str, state: str = "Ready",
           **extra: Any) -> dict[str, Any]:
    return {"target": target, "gpuProduct": product, "key": key, "state": state,
            "uri": f"s3://engines/engines/{key}/", **extra}


def eb(*engines: dict[str, Any], backend: str = "tensorrt",
       targets: list[dict[str, Any]] | None = None) -> EngineBuild:
    return EngineBuild.model_validate({
        "metadata": {"name": "llama-eb", "namespace": "ns", "uid": "eb-uid", "generation": 1},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": targets or [],
                 "build": {"backend": backend}},
        "status": {"engines": list(engines)},
    })


def deployed(product: str, key: str | None, mode: str = "engine", ready: int = 2,
             spec_hash: str = "h", backend: str = "tensorrt") -> ObservedDeployment:
    return ObservedDeployment(
        name=deployment_name("llama", product), product=product, owner_uids=(UID,),
        engine_key=key, engine_uri=f"s3://engines/engines/{key}/" if key else None, mode=mode,
        backend=backend, spec_hash=spec_hash, replicas=2, generation=2, observed_generation=2,
        status_replicas=2, updated_replicas=2, ready_replicas=ready, available_replicas=ready)


def decide(obj: EngineDeployment, build: EngineBuild | None, pool: dict[str, str],
           owned: list[ObservedDeployment], now: datetime = NOW) -> Decision:
    return decide_at(obj, build, pool, owned, now)


def test_pool_is_read_from_gfd_labels_and_filtered_by_the_pool_selector() -> None:
    def node(name: str, product: str | None, **labels: str) -> dict[str, Any]:
        gfd = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.compute.major": "9",
               "nvidia.com/gpu.compute.minor": "0"} if product else {}
        return {"metadata": {"name": name, "labels": {**gfd, **labels}}}

    nodes = [gpu_node(node("h1", H100, team="a")), gpu_node(node("h2", H200, team="b")),
             gpu_node(node("cpu", None))]
    assert nodes[2] is None
    gpus = [n for n in nodes if isinstance(n, GpuNode)]
    assert pool_products(gpus, None) == {H100: "9.0", H200: "9.0"}
    assert pool_products(gpus, {"team": "b"}) == {H200: "9.0"}
    # Without compute labels, the catalogue knows a product's capability.
    bare = gpu_node({"metadata": {"name": "l", "labels": {"nvidia.com/gpu.product": L40S}}})
    assert bare is not None
    assert bare.compute_capability == "8.9"


def test_products_auto_is_the_pool_and_a_name_is_its_products_present() -> None:
    assert served_products(ed(), POOL) == POOL
    assert served_products(ed("H100-SXM"), POOL) == {H100: "9.0"}
    # No such node yet: the catalogue's product (the Deployment waits for nodes).
    assert served_products(ed("H200"), POOL) == {"NVIDIA-H200": "9.0"}
    with pytest.raises(KeyError, match="unknown GPU"):
        served_products(ed("Z9000"), POOL)


def test_auto_targets_skip_products_spec_targets_cover_and_dedupe_by_gpu() -> None:
    spec = eb(targets=[{"gpu": "H100-SXM"}]).spec
    pool = {**POOL, "NVIDIA-A100-80GB-PCIe": "8.0", H200: "9.0"}
    assert auto_targets(spec, pool) == [f"{A100}@8.0", f"{H200}@9.0", f"{L40S}@8.9"]
    assert auto_targets(eb().spec, {}) == []


def test_a_mig_pool_is_its_own_target_and_never_gets_the_whole_gpus_engine() -> None:
    mig = "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
    pool = {A100: "8.0", mig: "8.0"}
    assert served_products(ed("A100-80GB"), pool) == {A100: "8.0"}
    assert served_products(ed("A100-80GB-MIG-1g.10gb"), pool) == {mig: "8.0"}
    assert auto_targets(eb().spec, pool) == [f"{mig}@8.0", f"{A100}@8.0"]
    assert auto_targets(eb(targets=[{"gpu": "A100-80GB"}]).spec, pool) == [f"{mig}@8.0"]
    status = eb(engine("A100-80GB", A100, KEY_A)).status
    assert engine_for(status, mig) is None


def test_engine_for_matches_the_product_then_the_catalogue_gpu() -> None:
    status = eb(engine("A100-80GB", A100, KEY_A), engine("H100-SXM", H100, KEY_H)).status
    assert engine_for(status, H100).key == KEY_H  # type: ignore[union-attr]
    assert engine_for(status, "NVIDIA-A100-80GB-PCIe").key == KEY_A  # type: ignore[union-attr]
    assert engine_for(status, L40S) is None


def test_ready_engines_are_served_per_product_in_deployments_of_their_own() -> None:
    build = eb(engine("H100-SXM", H100, KEY_H), engine("A100-80GB", A100, KEY_A, "Cached"))
    decision = decide(ed(), build, {A100: "8.0", H100: "9.0"}, [])
    assert [(s.product, s.mode, s.engine_key, s.backend) for s in decision.serves] == [
        (A100, "engine", KEY_A, "tensorrt"), (H100, "engine", KEY_H, "tensorrt")]
    assert decision.serves[1].deployment == "llama-h100-80gb-hbm3"
    assert decision.serves[1].gpu == "H100-SXM"
    assert not decision.waiting
    assert not decision.delete


def test_fallback_pytorch_serves_the_checkpoint_until_the_engine_is_ready() -> None:
    building = eb(engine("H100-SXM", H100, KEY_H, "Building"))
    (serve,) = decide(ed(fallback="pytorch"), building, {H100: "9.0"}, []).serves
    assert (serve.mode, serve.backend, serve.engine_key) == ("fallback", "pytorch", None)
    ready = eb(engine("H100-SXM", H100, KEY_H))
    (serve,) = decide(ed(fallback="pytorch"), ready, {H100: "9.0"},
                      [deployed(H100, None, "fallback")]).serves
    assert (serve.mode, serve.backend, serve.engine_key) == ("engine", "tensorrt", KEY_H)


def test_fallback_previous_keeps_the_last_engine_while_a_new_key_builds() -> None:
    rebuilding = eb(engine("H100-SXM", H100, KEY_H2, "Building", previousKey=KEY_H,
                           previousUri=f"s3://engines/engines/{KEY_H}/"))
    (serve,) = decide(ed(), rebuilding, {H100: "9.0"}, [deployed(H100, KEY_H)]).serves
    assert (serve.mode, serve.engine_key) == ("fallback", KEY_H)
    # Without previousKey in the build's status, the Deployment's own engine is the last one.
    lost = eb(engine("H100-SXM", H100, KEY_H2, "Building"))
    (serve,) = decide(ed(), lost, {H100: "9.0"},
                      [deployed(H100, KEY_H, backend="pytorch")]).serves
    assert (serve.engine_key, serve.backend) == (KEY_H, "pytorch")
    # Nothing served before: nothing to keep.
    decision = decide(ed(), lost, {H100: "9.0"}, [])
    assert decision.serves == []
    assert decision.waiting == [H100]


def test_fallback_none_has_no_deployment_until_the_engine_is_ready() -> None:
    building = eb(engine("H100-SXM", H100, KEY_H2, "Building", previousKey=KEY_H,
                         previousUri="s3://engines/engines/x/"))
    decision = decide(ed(fallback="none"), building, {H100: "9.0"}, [deployed(H100, KEY_H)])
    assert decision.serves == []
    assert decision.waiting == [H100]
    assert decision.delete == [deployment_name("llama", H100)]


def test_a_product_no_longer_in_the_spec_loses_its_deployment() -> None:
    """The user switched gpu from A100-80GB to H100-SXM: the A100 Deployment goes (a choice,
    not a pool change)."""
    build = eb(engine("H100-SXM", H100, KEY_H), engine("A100-80GB", A100, KEY_A))
    owned = [deployed(H100, KEY_H), deployed(A100, KEY_A)]
    decision = decide(ed("H100-SXM"), build, {H100: "9.0", A100: "8.0"}, owned)
    assert [s.product for s in decision.serves] == [H100]
    assert decision.delete == ["llama-a100-sxm4-80gb"]


def test_missing_build_leaves_deployments_alone_and_triton_serves_pytorch() -> None:
    decision = decide(ed(), None, POOL, [deployed(H100, KEY_H)])
    assert decision.pending
    assert decision.pending[0] == "EngineBuildNotFound"
    assert decision.serves == []
    assert decision.delete == []
    triton = ed(server={"kind": "triton"})
    served = decide(triton, eb(backend="pytorch"), POOL, [])
    assert not served.stalled, "Triton's LLM-API model serves pytorch engines"


def hashes(decision: Decision, value: str = "h") -> dict[str, str]:
    return {s.deployment: value for s in decision.serves}


def test_status_is_ready_only_when_every_product_serves_its_engine_rolled_out() -> None:
    build = eb(engine("H100-SXM", H100, KEY_H))
    obj = ed()
    decision = decide(obj, build, {H100: "9.0"}, [])
    status, events = summarize(obj, decision, [], hashes(decision))
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Ready"] == ("False", "RollingOut")
    assert conditions["Reconciling"][0] == "True"
    assert [e.reason for e in events] == ["ServingEngine"]
    (product,) = status.products
    assert (product.gpu, product.engine_key, product.mode, product.deployment) == (
        "H100-SXM", KEY_H, "engine", "llama-h100-80gb-hbm3")

    rolled = [deployed(H100, KEY_H)]
    later = ed(status=status.to_dict())
    status, events = summarize(later, decide(later, build, {H100: "9.0"}, rolled), rolled,
                               hashes(decision))
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions == {"Ready": ("True", "Serving"), "Reconciling": ("False", "Serving"),
                          "Stalled": ("False", "Serving")}
    assert (status.replicas, status.ready_replicas, status.observed_generation) == (2, 2, 3)
    assert (status.gpus, status.engine_keys) == ("H100-SXM", KEY_H[:12])
    assert events == []  # nothing changed


def test_status_in_fallback_reconciles_and_a_failed_build_stalls() -> None:
    obj = ed(fallback="pytorch")
    building = eb(engine("H100-SXM", H100, KEY_H, "Building"))
    decision = decide(obj, building, {H100: "9.0"}, [])
    status, events = summarize(obj, decision, [], hashes(decision))
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Reconciling"] == ("True", "WaitingForEngine")
    assert status.products[0].mode == "fallback"
    assert [e.reason for e in events] == ["ServingFallback"]
    failed = eb(engine("H100-SXM", H100, KEY_H, "Failed", message="ToolFailed: boom"))
    decision = decide(obj, failed, {H100: "9.0"}, [])
    status, events = summarize(obj, decision, [], hashes(decision))
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Stalled"] == ("True", "BuildFailed")
    assert "ToolFailed: boom" in (status.conditions[0].message or "")
    assert ("Warning", "BuildFailed") in [(e.type, e.reason) for e in events]


def test_status_names_removed_products_and_an_empty_pool() -> None:
    before = ed(status={"products": [{"gpuProduct": A100, "engineKey": KEY_A, "mode": "engine",
                                      "deployment": "llama-a100-sxm4-80gb"}]})
    decision = decide(before, eb(), {}, [deployed(A100, KEY_A)])
    status, events = summarize(before, decision, [deployed(A100, KEY_A)], {})
    assert [e.reason for e in events] == ["ProductRemoved"]
    assert status.products == []
    assert status.replicas == 0
    assert {c.type: c.reason for c in status.conditions}["Ready"] == "NoGPUs"


def test_deployment_names_fit_in_a_label_and_stay_apart() -> None:
    long_owner = "x" * 40
    a = deployment_name(long_owner, "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition")
    b = deployment_name(long_owner, "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition-MIG-1g")
    assert len(a) <= 63
    assert len(b) <= 63
    assert a != b
    assert deployment_name("llama", H200) == "llama-h200"


def test_observe_reads_what_kiln_wrote() -> None:
    seen = observe({
        "metadata": {"name": "llama-h100", "generation": 4,
                     "labels": {"kiln.dev/gpu-product": H100},
                     "annotations": {"kiln.dev/spec-hash": "abc"},
                     "ownerReferences": [{"uid": UID}]},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {
            "kiln.dev/engine-key": KEY_H, "kiln.dev/serving-mode": "engine"}}}},
        "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 1,
                   "readyReplicas": 3, "availableReplicas": 3},
    })
    assert (seen.product, seen.engine_key, seen.spec_hash, seen.owner_uids) == (
        H100, KEY_H, "abc", (UID,))
    assert not seen.rolled_out  # one pod of three is new


def test_a_product_that_leaves_the_pool_drains_instead_of_being_dropped() -> None:
    build = eb(engine("H100-SXM", H100, KEY_H), engine("L40S", L40S, KEY_A))
    owned = [deployed(H100, KEY_H), deployed(L40S, KEY_A)]
    serving = ed(status={"products": [
        {"gpuProduct": p, "engineKey": k, "mode": "engine", "deployment": deployment_name(
            "llama", p), "computeCapability": cc} for p, k, cc in
        ((H100, KEY_H, "9.0"), (L40S, KEY_A, "8.9"))]}, pool={"drainAfter": "10m"})
    # The L40S label is lost: its Deployment stays, reported, with a Warning once.
    decision = decide(serving, build, {H100: "9.0"}, owned)
    assert decision.delete == []
    assert [m.product for m in decision.missing] == [L40S]
    status, events = summarize(serving, decision, owned, hashes(decision))
    (missing,) = [p for p in status.products if p.gpu_product == L40S]
    assert missing.missing_since == NOW and missing.deployment == deployment_name("llama", L40S)
    assert "nvidia.com/gpu.product=NVIDIA-L40S" in (missing.message or "")
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Ready"] == ("False", "ProductMissing")
    assert conditions["Reconciling"] == ("True", "ProductMissing")
    assert [e.reason for e in events] == ["ProductMissing"]
    # Later passes remember since when (status is the memory), and say nothing new.
    later = ed(status=status.to_dict(), pool={"drainAfter": "10m"})
    decision = decide(later, build, {H100: "9.0"}, owned, NOW + timedelta(minutes=5))
    assert decision.delete == [] and decision.missing[0].since == NOW
    assert summarize(later, decision, owned, hashes(decision))[1] == []
    # The label comes back within the grace: nothing was deleted, it serves on.
    decision = decide(later, build, {H100: "9.0", L40S: "8.9"}, owned)
    status, events = summarize(later, decision, owned, hashes(decision))
    assert decision.delete == [] and not decision.missing
    assert [e.reason for e in events] == ["ProductReturned"]
    assert all(p.missing_since is None for p in status.products)


def test_a_drained_product_goes_only_once_the_others_are_ready() -> None:
    build = eb(engine("H100-SXM", H100, KEY_H), engine("L40S", L40S, KEY_A))
    memory = {"products": [{"gpuProduct": L40S, "engineKey": KEY_A, "mode": "engine",
                            "deployment": deployment_name("llama", L40S),
                            "computeCapability": "8.9", "missingSince": NOW.isoformat()}]}
    obj = ed(status=memory, pool={"drainAfter": "1m"})
    after = NOW + timedelta(minutes=2)
    # Past the grace, but the other product is still rolling out: kept.
    rolling = [replace(deployed(H100, KEY_H), updated_replicas=1), deployed(L40S, KEY_A)]
    decision = decide(obj, build, {H100: "9.0"}, rolling, after)
    assert decision.delete == []
    assert "until every other product is Ready" in decision.missing[0].message
    # Nothing else has ready pods: kept, it is what serves.
    alone = [deployed(H100, KEY_H, ready=0), deployed(L40S, KEY_A)]
    decision = decide(obj, build, {H100: "9.0"}, alone, after)
    assert decision.delete == [] and "no other product" in decision.missing[0].message
    # The others Ready: it goes.
    decision = decide(obj, build, {H100: "9.0"}, [deployed(H100, KEY_H), deployed(L40S, KEY_A)],
                      after)
    assert decision.delete == [deployment_name("llama", L40S)]


def test_a_named_gpu_keeps_its_deployment_name_when_its_product_leaves() -> None:
    """A100-80GB served on its PCIe product; those nodes lose their label: the Deployment
    keeps its name (no fallback to the catalogue's first product, which is another name)."""
    pcie = "NVIDIA-A100-80GB-PCIe"
    build = eb(engine("A100-80GB", pcie, KEY_A))
    obj = ed("A100-80GB", status={"products": [
        {"gpuProduct": pcie, "engineKey": KEY_A, "mode": "engine",
         "deployment": deployment_name("llama", pcie), "computeCapability": "8.0"}]})
    decision = decide(obj, build, {H100: "9.0"}, [deployed(pcie, KEY_A)])
    assert decision.serves == [] and decision.delete == []
    assert [m.deployment for m in decision.missing] == [deployment_name("llama", pcie)]


def test_a_product_whose_engine_status_lags_keeps_what_it_serves() -> None:
    """The EngineBuild has no engine entry for a product yet (it is catching up): whatever
    the fallback, the Deployment is neither deleted nor rolled."""
    for fallback in ("none", "pytorch", "previous"):
        decision = decide(ed(fallback=fallback), eb(), {H100: "9.0"}, [deployed(H100, KEY_H)])
        assert decision.delete == [] and decision.serves == [], fallback
        assert decision.kept == [deployment_name("llama", H100)]


def test_a_version_guard_refusal_in_a_serving_pod_stalls_with_both_versions() -> None:
    message = ("engine kkk cannot run in this server image: tensorrt_llm: engine built with "
               "1.2.1, this image has 1.1.0. Use a server image with the builder image's "
               "versions (spec.server.image), or rebuild the engine with this image's toolchain")
    term = json.dumps({"reason": "VersionMismatch", "message": message, "retryable": False,
                       "exitCode": 9})
    obj, build = ed(gpu="H100-SXM"), eb(engine("H100-SXM", H100, KEY_H))
    decision = decide(obj, build, {H100: "9.0"}, [])
    (serve,) = decision.serves
    pod = {"metadata": {"name": f"{serve.deployment}-5d-x", "labels": {
               "kiln.dev/gpu-product": H100},
               "annotations": {"kiln.dev/engine-key": serve.engine_key},
               "ownerReferences": [{"controller": True, "name": f"{serve.deployment}-5d"}]},
           "status": {"phase": "Running", "containerStatuses": [{
               "name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 9, "message": term}}}]}}
    rolling = ObservedDeployment(serve.deployment, H100, ("u",), serve.engine_key, "s3://e/",
                                 "engine", "tensorrt", "h", 1, generation=1,
                                 observed_generation=1, status_replicas=1, updated_replicas=1,
                                 ready_replicas=0, available_replicas=0)
    found = trouble(serve.label, rolling, [observe_pod(pod)], serve.engine_key)
    assert found is not None and (found.reason, found.stalled) == ("VersionMismatch", True)
    assert "1.2.1" in found.message and "1.1.0" in found.message
    assert f"pod {serve.deployment}-5d-x: server refused" in found.message
    old = {**pod, "metadata": {**pod["metadata"], "annotations": {"kiln.dev/engine-key": "old"}}}
    assert trouble(serve.label, rolling, [observe_pod(old)], serve.engine_key) is None, \
        "a refusal for an engine no longer served does not stall"
    segfault = {**pod, "status": {"phase": "Running", "containerStatuses": [{
        "name": "server", "lastState": {"terminated": {"exitCode": 9,
                                                       "message": "Segmentation fault"}}}]}}
    assert observe_pod(segfault).refusal is None, "a server's own exit code is not kiln's"


@pytest.mark.parametrize(("args", "ok"), [
    (["--max_batch_size=8", "--log_level", "info"], True),
    (["--kv_cache_free_gpu_memory_fraction", "0.8"], True),
    (["--max_batch_sizes=8"], False), (["--log_level=loud"], False),
    (["--max_num_tokens", "many"], False),
])
def test_server_args_are_checked_against_trtllm_serve(args: list[str], ok: bool) -> None:
    obj = ed(gpu="H100-SXM", server={"args": args})
    decision = decide(obj, eb(engine("H100-SXM", H100, KEY_H)), {H100: "9.0"}, [])
    assert (decision.stalled is None) is ok, decision.stalled
    if not ok:
        assert decision.stalled is not None and decision.stalled[0] == "InvalidServerArgs"


@pytest.mark.parametrize("fallback", ["previous", "pytorch", "none"])
def test_an_engine_built_again_under_its_key_keeps_its_pods_then_rolls_onto_the_new_upload(
        fallback: str) -> None:
    serving = replace(deployed(H100, KEY_H), engine_upload="u1")
    building = eb(engine("H100-SXM", H100, KEY_H, "Building",
                         message="EngineMissing: engine aaaa is no longer in the store"))
    decision = decide(ed("H100-SXM", fallback), building, POOL, [serving])
    (serve,) = decision.serves
    assert (serve.mode, serve.engine_key, serve.engine_upload, serve.rebuilding) == (
        "engine", KEY_H, "u1", True), "served as it is: nothing rolls"
    rebuilt = eb(engine("H100-SXM", H100, KEY_H, upload="u2"))
    (serve,) = decide(ed("H100-SXM", fallback), rebuilt, POOL, [serving]).serves
    assert (serve.engine_upload, serve.rebuilding) == ("u2", False)


def test_a_fetch_that_found_the_engine_gone_waits_while_it_is_built_again() -> None:
    rolling = replace(deployed(H100, KEY_H), template_hash="t", updated_replicas=1)
    pod = observe_pod({
        "metadata": {"name": "llama-h100-x", "annotations": {"kiln.dev/template-hash": "t"}},
        "status": {"phase": "Pending", "initContainerStatuses": [{
            "name": "fetch-engine", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 15, "message": json.dumps({
                "reason": "IntegrityError", "message": "rank0.engine is corrupt",
                "retryable": True})}}}]}})
    stuck = trouble("H100-SXM", rolling, [pod], KEY_H)
    assert stuck is not None and stuck.stalled
    waiting = trouble("H100-SXM", rolling, [pod], KEY_H, rebuilding=True)
    assert waiting is not None and not waiting.stalled
    assert waiting.reason == "IntegrityError" and "building engine" in waiting.message


def test_an_upgrade_that_names_uploads_rolls_no_deployment_serving_the_same_key() -> None:
    """Deployments made before ``status.engines[].upload`` existed carry no upload: naming the
    upload alone rolls none of them (a review found every serving Deployment rolled); a
    rebuild's new upload rolls a Deployment that carries one."""
    product, key = "NVIDIA-H100-80GB-HBM3", "k" * 64
    build = eb(engine("H100-SXM", product, key, upload="u1"))
    pool = {product: "9.0"}

    def served(current: ObservedDeployment | None) -> str | None:
        (serve,) = decide(ed(gpu="H100-SXM"), build, pool,
                          [current] if current else []).serves
        return serve.engine_upload

    assert served(None) == "u1"
    assert served(deployed(product, key)) is None
    assert served(replace(deployed(product, key), engine_upload="u0")) == "u1"


def _build(extra_args: list[str] | None = None, **build: Any) -> dict[str, Any]:
    return {"backend": "tensorrt", **({"extraArgs": extra_args} if extra_args else {}), **build}


def eb_with(build: dict[str, Any], *engines: dict[str, Any]) -> EngineBuild:
    obj = eb(*engines)
    return EngineBuild.model_validate({**obj.model_dump(by_alias=True, exclude_none=True),
                                       "spec": {"model": {"source": "s3://models/llama/"},
                                                "targets": [], "build": build}})


def test_runtime_options_an_engine_cannot_honour_are_warned_in_status() -> None:
    """trtllm-serve on an engine without paged context FMHA (int8 KV cache: trtllm-build turned
    it off, the engine's plugins say so): the executor turns block reuse (on by default) and
    chunked prefill off with a log line only; kiln names both in the product's status and a
    Warning Event, and still serves."""
    build = eb_with(_build(quantization={"algo": "int8_sq", "kvCache": "int8"}),
                    engine("H100-SXM", H100, KEY_H, plugins={"pagedContextFmha": False}))
    obj = ed(gpu="H100-SXM", server={"runtime": {"enableChunkedPrefill": True}})
    decision = decide(obj, build, POOL, [])
    assert [s.product for s in decision.serves] == [H100]
    status, events = summarize(obj, decision, [], {})
    (product,) = status.products
    assert product.message is not None
    assert "server.runtime.enableChunkedPrefill" in product.message
    assert "chunked_context_needs_paged_context_fmha" in product.message
    assert "enableBlockReuse" in product.message and "reuse_needs_paged_context_fmha" in \
        product.message
    assert any(e.reason == "RuntimeOptionIgnored" and "enableChunkedPrefill" in e.message
               for e in events)
    # Reuse asked off, no chunked prefill: nothing to say.
    quiet = ed(gpu="H100-SXM", server={"runtime": {"enableBlockReuse": False}})
    status, events = summarize(quiet, decide(quiet, build, POOL, []), [], {})
    assert status.products[0].message is None
    assert not any(e.reason == "RuntimeOptionIgnored" for e in events)


def test_context_logits_turn_reuse_off_and_a_draft_target_without_reuse_is_refused() -> None:
    logits = eb_with(_build(["--gather_context_logits"]), engine("H100-SXM", H100, KEY_H))
    obj = ed(gpu="H100-SXM")
    status, _ = summarize(obj, decide(obj, logits, POOL, []), [], {})
    assert "reuse_with_context_logits" in (status.products[0].message or "")
    draft = eb_with(_build(["--speculative_decoding_mode=draft_tokens_external",
                            "--max_draft_len=4"]), engine("H100-SXM", H100, KEY_H))
    off = ed(gpu="H100-SXM", server={"runtime": {"enableBlockReuse": False}})
    decision = decide(off, draft, POOL, [])
    assert decision.stalled is not None
    reason, message = decision.stalled
    assert reason == "RuntimeOptionRefused"
    assert "server.runtime.enableBlockReuse" in message
    assert "KV cache block reuse must be enabled for speculative decoding target model" in message
    assert decide(ed(gpu="H100-SXM"), draft, POOL, []).stalled is None
