"""The engine key: equal intent, equal key; any change of an input, another key.

The build strategies are derived from ``BuildSpec``'s own fields, so a field added to the API
is covered here at once (and a field of a kind this file does not know fails loudly).
"""

from __future__ import annotations

import contextlib
import random
import types
import typing
from typing import Any, Literal

import annotated_types
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kiln.api import BuildSpec, Calibration, TorchCompile, WarmupShape
from kiln.contract.key import (
    COMPILED_KEY_SCHEMA_VERSION,
    KEY_SCHEMA_VERSION,
    canonical_json,
    engine_key,
    key_inputs,
    key_of,
    short_key,
)
from kiln.errors import InvalidInput

BASE: dict[str, Any] = {"weights_identity": "w" * 64,
                        "origin": {"scheme": "s3", "bucket": "models", "prefix": "llama/"},
                        "builder_image": "kiln-builder:1.2.1",
                        "gpu_product": "NVIDIA-H100-80GB-HBM3", "compute_capability": "9.0"}
EXTRA_ARGS = ["--use_fused_mlp=enable", "--max_beam_width=2", "--fast_build",
              "--log_level=info", "--tokens_per_block=64"]
Path = tuple[str, ...]


def key(build: dict[str, Any] | BuildSpec | None = None, **changes: str) -> str:
    spec = build if isinstance(build, BuildSpec) else BuildSpec.model_validate(build or {})
    return engine_key(build=spec, calibration=calibration_of(spec), **(BASE | changes))


def calibration_of(spec: BuildSpec) -> dict[str, Any] | None:
    """What the operator resolves a spec's calibration data to (here: a stand-in identity and
    origin named after the dataset's URI)."""
    data = spec.quantization.calibration
    return None if data is None else {"identity": data.dataset,
                                      "origin": {"dataset": data.dataset}}


# -- golden values: a change here orphans every stored engine -----------------------------------

GOLDEN_DEFAULT = "a2a8ce062306cd64c05555f8679f78bf403d01545511c03b12427dba342d8e0c"
GOLDEN_PYTORCH = "8ca1d7fd2d8b330cb7dbb97894cec921876d9f494cf6fca917fdd642134d51e8"
GOLDEN_PYTORCH_TRTLLM_SERVE = "9f49e158e2de123f04047c9e2222dae36dd042101ef2eb01c21ddcf92d2e45ec"
"""With the production warm-up (kiln.domain.aot.TRTLLM_SERVE): an edit of kiln.trtllm.aot
re-keys every pytorch engine, on purpose only."""
GOLDEN_FP8_TP2 = "2b3badc2a5791670abff4e686415655490fc2546d11719b59eabbfdabb033fdb"
GOLDEN_DEFAULT_JSON = (
    '{"build":{"backend":"tensorrt","dtype":"auto","extraArgs":[],"maxBatchSize":2048,'
    '"maxInputLen":1024,"maxNumTokens":8192,"maxSeqLen":null,"parallelism":{"pipeline":1,'
    '"tensor":1},"plugins":{"contextFmha":true,"fp8ContextFmha":null,"gemm":null,'
    '"gptAttention":"auto","multipleProfiles":false,"pagedContextFmha":true,'
    '"pagedKvCache":true,"reduceFusion":false,"removeInputPadding":true},"quantization":'
    '{"algo":"none","calibration":null,"kvCache":"none"}},"builderImage":"kiln-builder:1.2.1",'
    '"computeCapability":"9.0","gpuProduct":"NVIDIA-H100-80GB-HBM3","origin":{"bucket":'
    '"models","prefix":"llama/","scheme":"s3"},"schema":5,"weights":'
    '"' + "w" * 64 + '"}')


def test_golden_keys_are_pinned() -> None:
    """Bump KEY_SCHEMA_VERSION on purpose, never by accident: then update these values."""
    assert (KEY_SCHEMA_VERSION, COMPILED_KEY_SCHEMA_VERSION) == (6, 5)
    assert canonical_json(key_inputs(build=BuildSpec(), **BASE)).decode() == GOLDEN_DEFAULT_JSON
    assert key() == GOLDEN_DEFAULT
    assert key({"backend": "pytorch"}) == GOLDEN_PYTORCH
    from kiln.domain.aot import TRTLLM_SERVE, warmup_for
    pytorch = BuildSpec(backend="pytorch")
    assert engine_key(build=pytorch, warmup=warmup_for(pytorch, TRTLLM_SERVE),
                      **BASE) == GOLDEN_PYTORCH_TRTLLM_SERVE
    assert key({"quantization": {"algo": "fp8", "kvCache": "fp8"},
                "parallelism": {"tensor": 2}}) == GOLDEN_FP8_TP2


def test_key_form() -> None:
    k = key()
    assert len(k) == 64
    assert set(k) <= set("0123456789abcdef")
    assert short_key(k) == k[:12]


# -- strategies derived from BuildSpec ------------------------------------------------------------

def _bounds(field: FieldInfo) -> tuple[int, int]:
    low, high = 0, 2**31
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = int(item.ge)  # type: ignore[call-overload]
        if isinstance(item, annotated_types.Le):
            high = int(item.le)  # type: ignore[call-overload]
    return low, high


def _strategy(field: FieldInfo) -> st.SearchStrategy[Any]:
    annotation = field.annotation
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        assert len(members) == 1, f"extend this test for {annotation}"
        annotation = members[0]
    strategy: st.SearchStrategy[Any]
    if typing.get_origin(annotation) is Literal:
        strategy = st.sampled_from(typing.get_args(annotation))
    elif annotation is bool:
        strategy = st.booleans()
    elif annotation is int:
        strategy = st.integers(*_bounds(field))
    elif typing.get_origin(annotation) is list and field.alias == "warmup":
        assert typing.get_args(annotation) == (WarmupShape,)
        strategy = st.lists(st.fixed_dictionaries({
            "promptTokens": st.integers(1, 4096), "outputTokens": st.integers(1, 64),
            "concurrency": st.integers(1, 8)}), min_size=1, max_size=3)
    elif typing.get_origin(annotation) is list and field.alias == "cudaGraphBatchSizes":
        strategy = st.lists(st.integers(1, 512), min_size=1, max_size=6, unique=True).map(sorted)
    elif typing.get_origin(annotation) is list:
        strategy = st.lists(st.sampled_from(EXTRA_ARGS), max_size=4)
    elif annotation is TorchCompile:
        strategy = st.fixed_dictionaries({"inductor": st.booleans(),
                                          "piecewiseCudaGraph": st.booleans()})
    elif annotation is Calibration:
        strategy = st.fixed_dictionaries({
            "dataset": st.sampled_from(["s3://calib/cnn/", "pvc://data/calib",
                                        "hf://org/calib@v1"]),
            "samples": st.none() | st.integers(1, 65536)})
    else:
        raise AssertionError(f"extend this test for a field of type {annotation}")
    return st.none() | strategy if optional else strategy


def leaves(model: type[BaseModel] = BuildSpec, path: Path = ()) -> dict[Path, Any]:
    """Every leaf field of the build spec (camelCase path) and a strategy for its values."""
    found: dict[Path, Any] = {}
    for name, field in model.model_fields.items():
        here = (*path, field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found |= leaves(field.annotation, here)
        else:
            found[here] = _strategy(field)
    return found


LEAVES = leaves()


def put(tree: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = put(out.get(path[0], {}), path[1:], value)
    return out


def get(tree: dict[str, Any], path: Path) -> Any:
    for part in path:
        tree = tree[part]
    return tree


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A partial build spec: some leaves set, the rest left to defaults."""
    chosen = draw(st.lists(st.sampled_from(sorted(LEAVES)), unique=True, max_size=len(LEAVES)))
    spec: dict[str, Any] = {}
    for path in chosen:
        spec = put(spec, path, draw(LEAVES[path]))
    return spec


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same mapping with keys in another order, at every level (lists keep theirs)."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    return value


def test_leaves_cover_the_whole_build_spec() -> None:
    def flat(tree: dict[str, Any], path: Path = ()) -> set[Path]:
        out: set[Path] = set()
        for name, value in tree.items():
            out |= flat(value, (*path, name)) if isinstance(value, dict) else {(*path, name)}
        return out

    assert set(LEAVES) == flat(BuildSpec().model_dump(by_alias=True))
    assert len(LEAVES) >= 19


# -- properties --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(specs(), st.randoms(use_true_random=False))
def test_key_order_does_not_matter(spec: dict[str, Any], rnd: random.Random) -> None:
    """Mapping order (fields, quantization, parallelism, plugins) carries no meaning."""
    assert key(shuffled(spec, rnd)) == key(spec)


PLUGINS = sorted(p for p in LEAVES if p[0] == "plugins")


@settings(max_examples=60, deadline=None)
@given(st.permutations(PLUGINS), st.data())
def test_plugin_order_does_not_matter(order: list[Path], data: st.DataObject) -> None:
    values = {p[1]: data.draw(LEAVES[p], label=p[1]) for p in PLUGINS}
    reordered = {p[1]: values[p[1]] for p in order}
    assert key({"plugins": reordered}) == key({"plugins": values})


@settings(max_examples=200, deadline=None)
@given(specs(), st.randoms(use_true_random=False))
def test_defaults_written_out_or_left_out_give_the_same_key(
        spec: dict[str, Any], rnd: random.Random) -> None:
    full = BuildSpec().model_dump(by_alias=True)
    for path in LEAVES:
        with contextlib.suppress(KeyError):  # not in the spec: the default stays
            full = put(full, path, get(spec, path))
    assert key(full) == key(spec)
    assert key(BuildSpec.model_validate(spec)) == key(spec)  # a model or its dict: the same
    assert key(shuffled(full, rnd)) == key(spec)


@settings(max_examples=300, deadline=None)
@given(specs(), st.sampled_from(sorted(LEAVES)), st.data())
def test_every_build_field_change_alters_the_key(
        spec: dict[str, Any], path: Path, data: st.DataObject) -> None:
    if path[0] == "aot":  # ahead-of-time artifacts are made for backend pytorch only
        spec = put(spec, ("backend",), "pytorch")
        if path != ("aot", "enabled"):
            spec = put(spec, ("aot", "enabled"), True)
    current = get(BuildSpec.model_validate(spec).model_dump(by_alias=True), path)
    value = data.draw(LEAVES[path], label=".".join(path))
    assume(value != current)
    assert key(put(spec, path, value)) != key(spec)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(set(BASE) - {"origin"})), st.text(min_size=1, max_size=80))
def test_every_other_input_change_alters_the_key(name: str, value: str) -> None:
    assume(value != BASE[name])
    assert key(None, **{name: value}) != key()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([*sorted(BASE["origin"]), "endpoint", "namespace"]),
       st.text(min_size=1, max_size=80))
def test_every_origin_change_alters_the_key(name: str, value: str) -> None:
    """Where the weights come from: a field changed or added is another key."""
    assume(value != BASE["origin"].get(name))
    origin = BASE["origin"] | {name: value}
    assert engine_key(build=BuildSpec(), **(BASE | {"origin": origin})) != key()


def test_extra_args_order_is_meaningful() -> None:
    """Later trtllm-build flags override earlier ones, so extraArgs keep their order."""
    a, b = "--max_beam_width=1", "--max_beam_width=2"
    assert key({"extraArgs": [a, b]}) != key({"extraArgs": [b, a]})


def test_inputs_are_recorded_in_camel_case() -> None:
    inputs = key_inputs(build=BuildSpec(), **BASE)
    assert set(inputs) == {"schema", "weights", "origin", "build", "builderImage",
                           "gpuProduct", "computeCapability"}
    assert inputs["origin"] == BASE["origin"]
    assert inputs["build"]["maxBatchSize"] == 2048
    assert inputs["schema"] == COMPILED_KEY_SCHEMA_VERSION  # backend tensorrt: as before
    assert set(key_inputs(build=BuildSpec(backend="pytorch"), **BASE)) == {*inputs, "warmup"}


@settings(max_examples=100, deadline=None)
@given(specs())
def test_inputs_read_back_from_json_give_the_key(spec: dict[str, Any]) -> None:
    """A manifest records the inputs as JSON; they hash back to the engine's key."""
    import json

    build = BuildSpec.model_validate(spec)
    inputs = key_inputs(build=build, calibration=calibration_of(build), **BASE)
    assert key_of(json.loads(json.dumps(inputs, indent=2))) == key(spec)


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="empty: builder_image, weights_identity"):
        key(weights_identity="", builder_image="")
    with pytest.raises(InvalidInput, match="empty: origin"):
        engine_key(build=BuildSpec(), **(BASE | {"origin": {}}))
    with pytest.raises(InvalidInput, match="non-empty strings"):
        engine_key(build=BuildSpec(), **(BASE | {"origin": {"scheme": ""}}))



def test_calibration_data_is_bound_by_identity_and_origin() -> None:
    """Issue 24: not only the dataset's URI: its identity (a changed dataset is another key)
    and its origin (another namespace's claim of that name is another key)."""
    spec = BuildSpec.model_validate({"quantization": {
        "algo": "fp8", "kvCache": "fp8", "calibration": {"dataset": "pvc://calib/data"}}})
    data: dict[str, Any] = {"identity": "c" * 64, "origin": {
        "scheme": "pvc", "namespace": "a", "claim": "calib", "path": "data"}}

    def calibrated(build: BuildSpec, calibration: dict[str, Any] | None) -> str:
        return engine_key(build=build, calibration=calibration, **BASE)

    base = calibrated(spec, data)
    assert base != calibrated(spec, {**data, "identity": "d" * 64})
    assert base != calibrated(spec, {**data, "origin": {**data["origin"], "namespace": "b"}})
    with pytest.raises(InvalidInput, match="calibration"):
        calibrated(spec, None)
    with pytest.raises(InvalidInput, match="names none"):
        calibrated(BuildSpec(), data)


def test_aot_is_no_input_of_a_compiled_engine() -> None:
    """backend tensorrt compiles; nothing is warmed up, so aot does not split its keys."""
    aot = {"cudaGraphBatchSizes": [1, 8], "attentionBackend": "FLASHINFER"}
    assert key({"aot": aot}) == key()
    assert key({"backend": "pytorch", "aot": aot}) != key({"backend": "pytorch"})


def test_kernel_shaping_serving_options_are_key_inputs_through_the_warmup() -> None:
    """The warm-up's server options are the serving pods' kernel-shaping ones: another one is
    another artifact set, so another key; the runtime's command and caches count too."""
    from kiln.domain.aot import TRTLLM_SERVE, warmup_for

    def with_warmup(spec: dict[str, Any]) -> str:
        build = BuildSpec.model_validate({"backend": "pytorch", **spec})
        return engine_key(build=build, warmup=warmup_for(build, TRTLLM_SERVE), **BASE)

    base = with_warmup({})
    assert base != key({"backend": "pytorch"})  # a set made, or none: not the same engine
    assert with_warmup({"maxNumTokens": 4096}) != base
    assert with_warmup({"aot": {"torchCompile": {"inductor": True}}}) != base
    assert with_warmup({"quantization": {"kvCache": "fp8"}}) != base
    other = TRTLLM_SERVE.model_copy(update={"runtime": "trtllm-serve-1.3"})
    build = BuildSpec(backend="pytorch")
    assert engine_key(build=build, warmup=warmup_for(build, other), **BASE) != base


def test_cuda_graph_sizes_are_a_set_and_a_disabled_aot_is_one_input() -> None:
    pytorch: dict[str, Any] = {"backend": "pytorch"}
    assert key(pytorch | {"aot": {"cudaGraphBatchSizes": [8, 1, 8]}}) == key(
        pytorch | {"aot": {"cudaGraphBatchSizes": [1, 8]}})
    assert key(pytorch | {"aot": {"enabled": False, "attentionBackend": "FLASHINFER"}}) == key(
        pytorch | {"aot": {"enabled": False}})
