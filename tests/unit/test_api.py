"""kiln.api models: defaults, names on the wire, the Python twins of the CRD's rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kiln.api import (
    BuildSpec,
    Condition,
    EngineBuild,
    EngineBuildSpec,
    EngineBuildStatus,
    EngineDeployment,
    EngineDeploymentSpec,
    EngineStatus,
    ModelSpec,
    Parallelism,
    Quantization,
    Strategy,
    Target,
    parse_duration,
)
from kiln.api.common import check_uri

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_build_spec_defaults_validate_and_dump_in_camel_case() -> None:
    spec = BuildSpec()
    assert spec.backend == "tensorrt"
    assert spec.quantization == Quantization(algo="none", kv_cache="none")
    assert spec.parallelism == Parallelism(tensor=1, pipeline=1)
    dumped = spec.to_dict()
    assert dumped["maxInputLen"] == 1024
    assert dumped["quantization"] == {"algo": "none", "kvCache": "none"}
    assert "maxSeqLen" not in dumped  # None is left out
    assert "max_input_len" not in dumped


def test_models_accept_both_python_and_json_names() -> None:
    by_alias = BuildSpec.model_validate({"maxSeqLen": 4096, "quantization": {"kvCache": "fp8"}})
    by_name = BuildSpec(max_seq_len=4096, quantization=Quantization(kv_cache="fp8"))
    assert by_alias == by_name


def test_every_field_has_a_description() -> None:
    from kiln import api

    missing = [
        f"{name}.{field}"
        for name in api.__all__
        if isinstance(model := getattr(api, name), type) and issubclass(model, api.KilnModel)
        for field, info in model.model_fields.items()
        if not info.description
    ]
    assert missing == []


KILN_EXAMPLES = [p for p in sorted(EXAMPLES.glob("*.yaml"))
                 if yaml.safe_load(p.read_text())["apiVersion"].startswith("kiln.dev/")]


@pytest.mark.parametrize("path", KILN_EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_and_dump_back_to_what_they_say(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    model_cls: Any = {"EngineBuild": EngineBuild, "EngineDeployment": EngineDeployment}[doc["kind"]]
    model = model_cls.model_validate(doc)
    dumped = model.to_dict()

    def subset(small: Any, big: Any) -> bool:
        if isinstance(small, dict):
            return all(k in big and subset(v, big[k]) for k, v in small.items())
        return bool(small == big)

    assert subset(doc, dumped)


@pytest.mark.parametrize("uri", [
    "s3://models/llama-3.1-8b/", "s3://models/", "s3://my.bucket-1/a/b/c/",
    "hf://meta-llama/Llama-3.1-8B", "hf://org/name@main", "hf://org/name@refs/pr/1",
    "pvc://weights", "pvc://weights/llama/8b", "pvc://weights/llama/",
])
def test_source_uris_that_are_well_formed(uri: str) -> None:
    assert ModelSpec(source=uri).source == uri


@pytest.mark.parametrize(("uri", "why"), [
    ("models/llama/", "must start with"),
    ("https://huggingface.co/org/name", "must start with"),
    ("s3://models/llama", "s3://bucket/prefix/"),
    ("s3://Models/llama/", "s3://bucket/prefix/"),
    ("s3://ab/llama/", "s3://bucket/prefix/"),
    ("hf://org", "hf://org/name"),
    ("hf://org/name@", "hf://org/name"),
    ("pvc://Weights/x", "pvc://claim/path"),
    ("pvc://weights/../secrets", "'..'"),
    ("s3://models/a/../", "'..'"),
])
def test_source_uris_that_are_refused(uri: str, why: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        ModelSpec(source=uri)


def test_store_takes_no_hf_uri() -> None:
    with pytest.raises(ValueError, match="must start with one of s3://, pvc://"):
        check_uri("hf://org/name", ("s3", "pvc"))


@pytest.mark.parametrize(("arg", "ok"), [
    ("--max_beam_width=4", True), ("--use_fused_mlp=enable", True), ("--fast_build", True),
    ("--strongly_typed", False), ("--streamingllm=enable", False), ("--fast_build=1", False),
    ("--max_beam_width", False), ("--log_level=", False), ("--log_level=loud", False),
    ("--output_dir=out", False), ("--checkpoint_dir", False), ("--max_beam_width=/tmp", False),
    ("--lora_dir=x", False), ("engine", False), ("--max_beam_width 4", False),
])
def test_extra_args_allow_list(arg: str, ok: bool) -> None:
    if ok:
        assert BuildSpec(extra_args=[arg]).extra_args == [arg]
    else:
        with pytest.raises(ValidationError):
            BuildSpec(extra_args=[arg])


def test_bounds_are_enforced_in_python_too() -> None:
    with pytest.raises(ValidationError):
        Parallelism(tensor=16)
    with pytest.raises(ValidationError):
        EngineDeploymentSpec.model_validate({"engineBuildRef": {"name": "x"}, "replicas": -1})
    with pytest.raises(ValidationError):
        Strategy(max_surge="150%")


def test_strategy_keeps_ints_and_percentages_apart() -> None:
    strategy = Strategy.model_validate({"maxSurge": "25%", "maxUnavailable": 0})
    assert strategy.max_surge == "25%"
    assert strategy.max_unavailable == 0
    assert Strategy().to_dict() == {"maxSurge": 1, "maxUnavailable": 0}


def test_target_is_a_name_or_a_selector() -> None:
    assert Target(gpu="H100-SXM").to_dict() == {"gpu": "H100-SXM"}
    selector = Target(node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-NVL"},
                      compute_capability="9.0")
    assert selector.to_dict()["computeCapability"] == "9.0"


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600), ("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1500ms", 1.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["1 hour", "1d", "", "m", "-1h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_status_round_trips_through_json() -> None:
    status = EngineBuildStatus(
        observed_generation=3,
        phase="Ready",
        conditions=[Condition(type="Ready", status="True", reason="Built", observed_generation=3,
                              last_transition_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))],
        engines=[EngineStatus(target="H100-SXM", gpu_product="NVIDIA-H100-80GB-HBM3",
                              compute_capability="9.0", key="ab" * 32, state="Cached",
                              build_seconds=812.5, size_bytes=16 * 2**30)],
    )
    dumped = status.to_dict()
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert dumped["engines"][0]["buildSeconds"] == 812.5
    assert EngineBuildStatus.model_validate(dumped) == status


def test_engine_build_needs_a_model_source() -> None:
    with pytest.raises(ValidationError, match="model"):
        EngineBuildSpec.model_validate({})
    full = EngineBuild(spec=EngineBuildSpec(model=ModelSpec(source="s3://models/x/")))
    assert full.to_dict()["apiVersion"] == "kiln.dev/v1alpha1"
    assert full.to_dict()["kind"] == "EngineBuild"


@pytest.mark.parametrize("interval", ["10s", "59s", "1 hour", "1d"])
def test_poll_interval_is_a_duration_of_a_minute_or_more(interval: str) -> None:
    with pytest.raises(ValidationError, match=r"pollInterval|poll_interval"):
        EngineBuildSpec.model_validate({"model": {"source": "s3://models/x/"},
                                        "rebuild": {"pollInterval": interval}})
