"""The engine key: equal intent, equal key; any change of an input, another key."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.api import BuildSpec
from kiln.key import KEY_SCHEMA_VERSION, engine_key, key_inputs

BASE: dict[str, Any] = {"weights_identity": "w" * 64, "builder_image": "kiln-builder:1.2.1",
                        "gpu_product": "NVIDIA-H100-80GB-HBM3", "compute_capability": "9.0"}


def key(build: dict[str, Any] | None = None, **changes: str) -> str:
    return engine_key(build=BuildSpec.model_validate(build or {}), **(BASE | changes))


def test_golden_keys_are_pinned() -> None:
    """A change here means every stored engine is orphaned: bump KEY_SCHEMA_VERSION on
    purpose, never by accident."""
    assert KEY_SCHEMA_VERSION == 1
    assert key() == GOLDEN_DEFAULT
    assert key({"backend": "pytorch"}) == GOLDEN_PYTORCH
    assert key({"quantization": {"algo": "fp8", "kvCache": "fp8"},
                "parallelism": {"tensor": 2}}) == GOLDEN_FP8_TP2


GOLDEN_DEFAULT = "bb514aabb23d49f068ed54e3bcecb625d6ef5d09eb6196202100ee7c4c3b6a16"
GOLDEN_PYTORCH = "39e784b0f0461bdbf1bd9edb7d4d9bf5258e5fb13182a5437bf07f22cb491bf7"
GOLDEN_FP8_TP2 = "1cb11ac3564e231aa010e8f6206d9403328896862bf021d0c622a07f325d8805"


def test_defaults_filled_or_written_out_give_the_same_key() -> None:
    explicit = BuildSpec().model_dump(by_alias=True)
    assert key(explicit) == key({})
    assert key({"maxBatchSize": 2048}) == key({})


@settings(max_examples=60, deadline=None)
@given(st.permutations(["backend", "dtype", "maxBatchSize", "maxInputLen", "maxNumTokens"]))
def test_field_order_does_not_matter(order: list[str]) -> None:
    values = {"backend": "tensorrt", "dtype": "bfloat16", "maxBatchSize": 64,
              "maxInputLen": 512, "maxNumTokens": 4096}
    assert key({k: values[k] for k in order}) == key(values)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([
    ("dtype", "float16"), ("maxBatchSize", 7), ("maxInputLen", 99), ("maxSeqLen", 4096),
    ("maxNumTokens", 123), ("backend", "pytorch"),
    ("quantization", {"algo": "int4_awq"}), ("quantization", {"kvCache": "int8"}),
    ("parallelism", {"tensor": 4}), ("parallelism", {"pipeline": 2}),
    ("plugins", {"contextFmha": True, "pagedContextFmha": False}),
    ("extraArgs", ["--use_fused_mlp=enable"]),
]))
def test_every_build_field_changes_the_key(change: tuple[str, Any]) -> None:
    field, value = change
    assert key({field: value}) != key({})


def test_every_other_input_changes_the_key() -> None:
    keys = {key()} | {key(**{name: value + "x"}) for name, value in BASE.items()}
    assert len(keys) == 1 + len(BASE)


def test_extra_args_order_is_meaningful() -> None:
    a, b = "--use_fused_mlp=enable", "--max_beam_width=2"
    assert key({"extraArgs": [a, b]}) != key({"extraArgs": [b, a]})


def test_inputs_are_recorded_in_camel_case() -> None:
    inputs = key_inputs(build=BuildSpec(), **BASE)
    assert set(inputs) == {"schema", "weights", "build", "builderImage", "gpuProduct",
                           "computeCapability"}
    assert inputs["build"]["maxBatchSize"] == 2048
