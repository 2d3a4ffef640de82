"""Properties linking kiln.api, the catalogue and the real apiserver:

* valid models (drawn by hypothesis) are accepted; what the apiserver stores, with its own
  defaults filled in, is the model's full dump and parses back into an equal model;
* the CRD's quantization rules accept exactly what ``catalogue.supports`` accepts.
"""

from __future__ import annotations

import itertools
import json
import os
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kiln import GROUP, VERSION
from kiln.api import (
    EXTRA_ARGS,
    BuildSpec,
    Calibration,
    Condition,
    EngineBuildRef,
    EngineBuildSpec,
    EngineBuildStatus,
    EngineDeploymentSpec,
    EngineDeploymentStatus,
    EngineStatus,
    JobSpec,
    KilnModel,
    ModelSpec,
    Output,
    Parallelism,
    Plugins,
    Pool,
    ProductStatus,
    Quantization,
    Rebuild,
    Resources,
    Server,
    Strategy,
    Target,
    Toleration,
    Toolchain,
    Weights,
)
from kiln.api.engine_build import CALIBRATED, FP8_FMHA_ALGOS
from kiln.domain import catalogue
from kiln.trtllm import refusals

ROOT = Path(__file__).parents[2]
CAPABILITIES = ["8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0", "12.1"]
SETTINGS = settings(
    max_examples=int(os.environ.get("KILN_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def api(kube: Any) -> Iterator[tuple[client.CustomObjectsApi, str]]:
    """The CRDs installed, a custom-objects client and a namespace of this module's own."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 f"crd/enginebuilds.{GROUP}", f"crd/enginedeployments.{GROUP}")
    core = client.CoreV1Api(kube.api_client)
    name = "roundtrip-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield client.CustomObjectsApi(kube.api_client), name
    core.delete_namespace(name, propagation_policy="Background")


# -- strategies: valid by construction -------------------------------------------------------

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
label_value = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True)
selectors = st.dictionaries(
    st.sampled_from(["pool", "nvidia.com/gpu.product", "example.com/tier", "zone"]),
    label_value, min_size=1, max_size=3)
segment = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,8}", fullmatch=True)
bucket = st.from_regex(r"[a-z0-9][a-z0-9-]{1,12}[a-z0-9]", fullmatch=True)
s3_uris = st.builds(lambda b, segs: f"s3://{b}/" + "".join(f"{s}/" for s in segs),
                    bucket, st.lists(segment, max_size=3))
pvc_uris = st.builds(lambda c, segs: f"pvc://{c}" + "".join(f"/{s}" for s in segs),
                     dns_label, st.lists(segment, max_size=3))
hf_part = st.from_regex(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,8}", fullmatch=True)
hf_uris = st.builds(lambda o, n, r: f"hf://{o}/{n}" + (f"@{r}" if r else ""),
                    hf_part, hf_part, st.none() | st.sampled_from(["main", "refs/pr/1", "a" * 40]))
quantities = st.integers(0, 512) | st.sampled_from(["500m", "64Gi", "1.5", "2e3", "100Mi", "8"])
resources = st.builds(
    Resources,
    limits=st.none() | st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities,
                                       min_size=1),
    requests=st.none() | st.dictionaries(st.sampled_from(["cpu", "memory", "ephemeral-storage"]),
                                         quantities, min_size=1))
durations = st.integers(60, 10**6).map(
    lambda s: f"{s}s" if s % 60 else (f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600
                                      else f"{s // 60}m"))
images = st.sampled_from([
    "nvcr.io/nvidia/tensorrt-llm/release:0.21.0",
    "registry.local:5000/kiln/builder:1.2.0",
    "ghcr.io/acme/trtllm@sha256:" + "0123456789abcdef" * 4,
])


def where(target: Target) -> str:
    return target.gpu or target.compute_capability or ""


@st.composite
def tolerations(draw: st.DrawFn) -> Toleration:
    if draw(st.booleans()):
        return Toleration(key=draw(st.none() | st.just("nvidia.com/gpu")), operator="Exists",
                          effect=draw(st.none() | st.sampled_from(["NoSchedule", "NoExecute"])))
    effect = draw(st.none() | st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]))
    seconds = draw(st.none() | st.integers(0, 3600)) if effect == "NoExecute" else None
    return Toleration(key=draw(segment), value=draw(st.none() | label_value), effect=effect,
                      toleration_seconds=seconds)


@st.composite
def build_specs(draw: st.DrawFn, targets: list[Target]) -> BuildSpec:
    backend = draw(st.sampled_from(catalogue.BACKENDS))
    combos = [(a, k) for a, k in itertools.product(catalogue.QUANT_ALGOS, catalogue.KV_CACHE_QUANTS)
              if catalogue.available(backend, a, k).ok
              and all(catalogue.supports(where(t), backend, a, k).ok for t in targets)]
    algo, kv = draw(st.sampled_from(combos))
    tensor = draw(st.sampled_from([1, 2, 4, 8]))
    max_input = draw(st.integers(1, 2**20))
    # In-flight batching (both servers) needs the attention plugin, packed input, paged KV.
    attention = draw(st.sampled_from(["auto", "float16", "bfloat16", "float32"]))
    paged_kv = True
    context_fmha = draw(st.booleans())
    gemm: list[str | None] = [None, "auto", "float16", "bfloat16", "float32", "disable"]
    gemm += [algo] if algo in ("fp8", "nvfp4") else []
    forms = [f"--{name}" if values == () else
             f"--{name}=4" if values is None else f"--{name}={values[-1]}"
             for name, values in EXTRA_ARGS.items()]  # values[-1]: disable where it exists
    # The CRD refuses what trtllm-build refuses on every GPU (EAGLE, context logits with drafts).
    extra = st.lists(st.sampled_from(forms), max_size=4).filter(
        lambda args: not refusals.flag_refusals(args, None))
    paged_context = context_fmha and paged_kv and draw(st.booleans())
    fp8_fmha = [None, *([True] if algo in FP8_FMHA_ALGOS and (kv == "fp8" or not paged_context)
                        else []),
                *([] if kv == "fp8" and paged_context and algo in FP8_FMHA_ALGOS else [False])]
    calibrates = backend == "tensorrt" and (algo in CALIBRATED or kv != "none")
    calibration = st.none() | (st.builds(Calibration, dataset=s3_uris | pvc_uris,
                                         samples=st.none() | st.integers(1, 65536))
                               if calibrates else st.none())
    return BuildSpec(
        backend=backend,
        dtype=draw(st.sampled_from(["auto", "float16", "bfloat16", "float32"])),
        quantization=Quantization(algo=algo, kv_cache=kv, calibration=draw(calibration)),
        parallelism=Parallelism(tensor=tensor, pipeline=draw(st.integers(1, 8 // tensor))),
        max_batch_size=draw(st.integers(1, 65536)),
        max_input_len=max_input,
        max_seq_len=draw(st.none() | st.integers(max_input, 2**20)),
        max_num_tokens=draw(st.integers(1, 2**20)),
        plugins=Plugins(
            gpt_attention=attention, gemm=draw(st.sampled_from(gemm)), context_fmha=context_fmha,
            paged_kv_cache=paged_kv, paged_context_fmha=paged_context,
            fp8_context_fmha=draw(st.sampled_from(fp8_fmha)),
            remove_input_padding=True, multiple_profiles=draw(st.booleans()),
            reduce_fusion=draw(st.booleans())),
        extra_args=draw(extra) if backend == "tensorrt" else [],
    )


@st.composite
def engine_build_specs(draw: st.DrawFn) -> EngineBuildSpec:
    targets = draw(st.lists(
        st.builds(Target, gpu=st.sampled_from(catalogue.names()))
        | st.builds(Target, node_selector=selectors,
                    compute_capability=st.sampled_from(CAPABILITIES)),
        max_size=4, unique_by=lambda t: t.gpu or str(id(t))))
    source = draw(s3_uris | hf_uris | pvc_uris)
    return EngineBuildSpec(
        model=ModelSpec(source=source, credentials_secret=draw(st.none() | dns_label),
                        revision=draw(st.none() | segment) if source.startswith("pvc") else None),
        targets=targets,
        build=draw(build_specs(targets)),
        toolchain=Toolchain(image=draw(st.none() | images)),
        output=Output(store=draw(st.none() | s3_uris | pvc_uris)),
        rebuild=Rebuild(on_weight_change=draw(st.booleans()), poll_interval=draw(durations)),
        job=JobSpec(resources=draw(st.none() | resources),
                    active_deadline_seconds=draw(st.integers(60, 604800)),
                    backoff_limit=draw(st.integers(0, 10)),
                    priority_class_name=draw(st.none() | dns_label),
                    tolerations=draw(st.lists(tolerations(), max_size=3))),
    )


percent_or_int = st.integers(0, 5) | st.integers(0, 100).map(lambda p: f"{p}%")


@st.composite
def engine_deployment_specs(draw: st.DrawFn) -> EngineDeploymentSpec:
    kind = draw(st.sampled_from(["trtllm-serve", "triton"]))
    fallbacks = ["previous", "none"] + (["pytorch"] if kind == "trtllm-serve" else [])
    surge, unavailable = draw(st.tuples(percent_or_int, percent_or_int).filter(
        lambda p: not all(v in (0, "0%") for v in p)))
    return EngineDeploymentSpec(
        engine_build_ref=EngineBuildRef(name=draw(dns_label)),
        replicas=draw(st.integers(0, 1000)),
        gpu=draw(st.sampled_from(["auto", *catalogue.names()])),
        pool=Pool(node_selector=draw(st.none() | selectors)),
        server=Server(kind=kind, image=draw(st.none() | images),
                      port=draw(st.integers(1, 65535)),
                      args=draw(st.lists(st.sampled_from(
                          ["--max_batch_size=64", "--log_level=info", "--max_num_tokens=4096",
                           "--kv_cache_free_gpu_memory_fraction=0.9"]), max_size=3)),
                      resources=draw(st.none() | resources)),
        fallback=draw(st.sampled_from(fallbacks)),
        strategy=Strategy(max_surge=surge, max_unavailable=unavailable),
    )


times = st.datetimes(timezones=st.just(UTC)).map(
    lambda t: t.replace(microsecond=0))
words = st.text(string.ascii_letters + string.digits + " .,:-", max_size=40)
conditions = st.lists(
    st.builds(Condition, type=st.sampled_from(["Ready", "Reconciling", "Stalled"]),
              status=st.sampled_from(["True", "False", "Unknown"]),
              reason=st.none() | st.sampled_from(["Built", "Building", "InvalidInput"]),
              message=st.none() | words, observed_generation=st.none() | st.integers(0, 10**6),
              last_transition_time=st.none() | times),
    max_size=3, unique_by=lambda c: c.type)
hex_keys = st.text("0123456789abcdef", min_size=64, max_size=64)
build_statuses = st.builds(
    EngineBuildStatus,
    observed_generation=st.none() | st.integers(0, 10**6),
    phase=st.none() | st.sampled_from(["Pending", "Building", "Ready", "Failed"]),
    conditions=conditions,
    weights=st.none() | st.builds(Weights, identity=st.none() | hex_keys,
                                  checked_at=st.none() | times),
    auto_targets=st.lists(st.sampled_from(["NVIDIA-L40S", "NVIDIA-H200"]), max_size=2),
    engines=st.lists(st.builds(
        EngineStatus, target=st.sampled_from(catalogue.names()), key=st.none() | hex_keys,
        state=st.sampled_from(["Cached", "Building", "Ready", "Failed"]),
        build_seconds=st.none() | st.floats(0, 1e6, allow_nan=False).map(lambda f: round(f, 3)),
        size_bytes=st.none() | st.integers(0, 2**45), message=st.none() | words), max_size=3),
    gpus=st.none() | words, engine_keys=st.none() | words,
)
deployment_statuses = st.builds(
    EngineDeploymentStatus,
    observed_generation=st.none() | st.integers(0, 10**6), conditions=conditions,
    replicas=st.none() | st.integers(0, 100), ready_replicas=st.none() | st.integers(0, 100),
    products=st.lists(st.builds(
        ProductStatus, gpu_product=st.sampled_from(["NVIDIA-L40S", "NVIDIA-H200", "NVIDIA-A10"]),
        engine_key=st.none() | hex_keys, mode=st.sampled_from(["engine", "fallback"]),
        ready_replicas=st.none() | st.integers(0, 10)),
        max_size=3, unique_by=lambda p: p.gpu_product),
)


# -- the properties ---------------------------------------------------------------------------

_names = itertools.count()
PLURAL = {"EngineBuild": "enginebuilds", "EngineDeployment": "enginedeployments"}


def round_trip(api: tuple[client.CustomObjectsApi, str], kind: str, spec: KilnModel,
               status: KilnModel | None = None) -> dict[str, Any]:
    """Create an object from ``spec`` with defaults left out (the apiserver must fill them
    in), optionally write ``status`` through /status; return what the apiserver stores."""
    objects, namespace = api
    name = f"h{next(_names)}"
    minimal = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name},
            "spec": minimal}
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], body,
                                            field_validation="Strict")
    try:
        if status is not None:
            objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL[kind], name, {"status": status.to_dict()})
        stored: dict[str, Any] = objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[kind], name)
        return stored
    finally:
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], name)


@SETTINGS
@given(spec=engine_build_specs())
def test_engine_build_specs_round_trip(api: tuple[client.CustomObjectsApi, str],
                                       spec: EngineBuildSpec) -> None:
    stored = round_trip(api, "EngineBuild", spec)
    assert stored["spec"] == spec.to_dict()
    assert EngineBuildSpec.model_validate(stored["spec"]) == spec


@SETTINGS
@given(spec=engine_deployment_specs())
def test_engine_deployment_specs_round_trip(api: tuple[client.CustomObjectsApi, str],
                                            spec: EngineDeploymentSpec) -> None:
    stored = round_trip(api, "EngineDeployment", spec)
    assert stored["spec"] == spec.to_dict()
    assert EngineDeploymentSpec.model_validate(stored["spec"]) == spec


@SETTINGS
@given(status=build_statuses)
def test_engine_build_status_round_trips(api: tuple[client.CustomObjectsApi, str],
                                         status: EngineBuildStatus) -> None:
    spec = EngineBuildSpec(model=ModelSpec(source="s3://models/llama-3.1-8b/"))
    stored = round_trip(api, "EngineBuild", spec, status)
    assert stored["spec"] == spec.to_dict()
    assert EngineBuildStatus.model_validate(stored["status"]) == status


@SETTINGS
@given(status=deployment_statuses)
def test_engine_deployment_status_round_trips(api: tuple[client.CustomObjectsApi, str],
                                              status: EngineDeploymentStatus) -> None:
    spec = EngineDeploymentSpec(engine_build_ref=EngineBuildRef(name="llama"))
    stored = round_trip(api, "EngineDeployment", spec, status)
    assert EngineDeploymentStatus.model_validate(stored["status"]) == status


def test_apiserver_agrees_with_the_catalogue(api: tuple[client.CustomObjectsApi, str]) -> None:
    """For every backend, algo, kv cache and target (catalogue GPU or compute capability), the
    CRD accepts exactly the combinations ``catalogue.supports`` accepts."""
    objects, namespace = api
    targets = [{"gpu": n} for n in catalogue.names()] + [
        {"nodeSelector": {"pool": "x"}, "computeCapability": cc} for cc in CAPABILITIES]
    combos = list(itertools.product(
        catalogue.BACKENDS, catalogue.QUANT_ALGOS, catalogue.KV_CACHE_QUANTS, targets))

    def answer(combo: tuple[str, str, str, dict[str, Any]]) -> str | None:
        """None if the apiserver admits it (a dry run), else its answer."""
        backend, algo, kv, target = combo
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
                "metadata": {"name": "agree"},
                "spec": {"model": {"source": "s3://models/x/"}, "targets": [target],
                         "build": {"backend": backend,
                                   "quantization": {"algo": algo, "kvCache": kv}}}}
        try:
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "enginebuilds",
                                                    body, dry_run="All")
        except ApiException as error:
            return f"{error.status} {error.body}"
        return None

    # Over 5,000 dry runs: a few at once (the apiserver answers each on its own).
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(answer, combos))
    disagreements = []
    for (backend, algo, kv, target), why in zip(combos, answers, strict=True):
        where_ = target.get("gpu") or target["computeCapability"]
        expected = catalogue.supports(where_, backend, algo, kv)
        accepted = why is None
        if why is not None:
            assert why.startswith("422 "), why
            assert "spec.build.quantization." in json.loads(why[4:])["message"], why
        if accepted != expected.ok:
            disagreements.append((backend, algo, kv, where_, expected.reason, why or ""))
    assert disagreements == []
