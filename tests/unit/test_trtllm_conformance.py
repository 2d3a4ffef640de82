"""What kiln emits, checked against the recorded TensorRT-LLM 1.2.x tables (kiln.trtllm):
extraArgs, trtllm-serve command lines, LLM API keys, the Triton repository, the catalogue."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from kiln.api import EXTRA_ARGS, BuildSpec, EngineBuild, EngineDeployment
from kiln.api.engine_build import EXTRA_ARG_VALUE
from kiln.domain import catalogue
from kiln.engine_deployment import render, triton
from kiln.trtllm import flags, llm_api, refusals
from kiln.trtllm import triton as facts
from unit.test_engine_deployment_render import CONFIG, checkpoint_serve, eb, ed, engine_serve

# -- extraArgs ------------------------------------------------------------------------------


def forms(name: str, values: tuple[str, ...] | None) -> list[str]:
    """Every ``extraArgs`` entry kiln accepts for one flag (integers: a sample)."""
    if values is None:
        return [f"--{name}=1", f"--{name}=4096"]
    return [f"--{name}"] if not values else [f"--{name}={v}" for v in values]


ALLOWED = [arg for name, values in EXTRA_ARGS.items() for arg in forms(name, values)]


@pytest.mark.parametrize("arg", ALLOWED)
def test_every_allowed_extra_arg_parses_against_trtllm_build(arg: str) -> None:
    flags.check_command(["trtllm-build", arg], flags.TRTLLM_BUILD)
    assert re.fullmatch(EXTRA_ARG_VALUE, arg)
    assert BuildSpec(extra_args=[arg]).extra_args == [arg]


@pytest.mark.parametrize("name", EXTRA_ARGS)
def test_allow_list_shapes_equal_the_table(name: str) -> None:
    flag = flags.TRTLLM_BUILD.flag(f"--{name}")
    assert flag is not None, f"--{name} is not a 1.2.x trtllm-build flag"
    assert flag.type != "path", "flags naming a path stay out"
    assert not flag.note or ("deprecated" not in flag.note and "assert" not in flag.note)
    values = EXTRA_ARGS[name]
    if values == ():
        assert flag.nargs == "0"
    elif values is None:
        assert (flag.nargs, flag.type) == ("1", "int")
    else:
        assert flag.nargs == "1" and flag.choices is not None
        assert set(values) == set(flag.choices), "exactly the choices argparse takes"


@pytest.mark.parametrize("arg", ["--fast_build=true", "--max_beam_width", "--log_level=",
                                 "--gemm_swiglu_plugin=fp16", "--tokens_per_block=-1",
                                 "--strongly_typed", "--streamingllm=enable"])
def test_forms_argparse_refuses_are_refused(arg: str) -> None:
    assert not re.fullmatch(EXTRA_ARG_VALUE, arg)
    with pytest.raises(ValueError, match="extra_args"):
        BuildSpec(extra_args=[arg])


# -- trtllm-serve and the LLM API options -----------------------------------------------------


@pytest.mark.parametrize("serve", [engine_serve(), checkpoint_serve()],
                         ids=["engine", "checkpoint"])
def test_trtllm_serve_command_parses_against_serve_py(serve: Any) -> None:
    obj = ed(server={"args": ["--max_beam_width=2", "--log_level", "info"]})
    dep = render.render_deployment(obj, eb(), serve, CONFIG)
    server = dep["spec"]["template"]["spec"]["containers"][0]
    flags.check_command(server["args"], flags.TRTLLM_SERVE)
    assert server["args"][server["args"].index("--backend") + 1] == serve.backend


def _keys(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list}


@pytest.mark.parametrize("backend", ["pytorch", "tensorrt"])
def test_llm_api_options_use_only_recorded_keys(backend: str) -> None:
    build = EngineBuild.model_validate({
        "metadata": {"name": "b", "namespace": "ns", "uid": "u"},
        "spec": {"model": {"source": "s3://models/llama/"},
                 "build": {"backend": "pytorch", "maxSeqLen": 4096,
                           "quantization": {"kvCache": "fp8"}}}})
    obj = EngineDeployment.model_validate({
        "metadata": {"name": "d", "namespace": "ns", "uid": "u"},
        "spec": {"engineBuildRef": {"name": "b"},
                 "server": {"runtime": {"freeGpuMemoryFraction": 0.85,
                                        "enableChunkedPrefill": True,
                                        "enableBlockReuse": True}}}})
    written = _keys(render.llm_api_options(obj, build, backend))  # type: ignore[arg-type]
    assert len(written) >= 6 - (backend == "tensorrt")
    for key, value in written.items():
        option = llm_api.option(key)
        assert option is not None, f"{key} is not an LLM API option (extra='forbid')"
        assert backend in option.backends, key
        assert isinstance(value, TYPES[option.type]), key


def test_the_llm_api_model_yaml_carries_only_llm_arguments_and_its_triton_keys() -> None:
    """Triton's LLM-API model passes every key of model.yaml but ``triton_config`` to
    ``LLM(**args)`` (extra='forbid'): each must be an LLM argument; ``triton_config`` must
    have the keys model.py indexes."""
    obj = EngineDeployment.model_validate({
        "metadata": {"name": "d", "namespace": "ns", "uid": "u"},
        "spec": {"engineBuildRef": {"name": "b"}, "server": {
            "kind": "triton", "runtime": {"freeGpuMemoryFraction": 0.85,
                                          "enableBlockReuse": True}}}})
    build = EngineBuild.model_validate({
        "metadata": {"name": "b", "namespace": "ns", "uid": "u"},
        "spec": {"model": {"source": "s3://models/llama/"},
                 "build": {"backend": "pytorch", "maxSeqLen": 4096}}})
    serve = type(engine_serve())(**{**engine_serve().__dict__, "backend": "pytorch"})
    (text,) = render.triton_repository(obj, build, serve).values()
    config = yaml.safe_load(text)
    triton_config = config.pop("triton_config")
    assert set(facts.LLMAPI_TRITON_KEYS) <= set(triton_config)
    upstream_keys = {"model", "backend"}  # model.yaml@0ebb153 sets them
    written = _keys({k: v for k, v in config.items() if k not in upstream_keys})
    assert "tensor_parallel_size" in written and "kv_cache_config.enable_block_reuse" in written
    for key, value in written.items():
        option = llm_api.option(key)
        assert option is not None, f"{key} is not an LLM API option (extra='forbid')"
        assert "pytorch" in option.backends, key
        assert isinstance(value, TYPES[option.type]), key


# -- Triton ---------------------------------------------------------------------------------


def parse(config: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(parameters, inputs, outputs) of a config.pbtxt, tensors as ``name: dtype``."""
    params = dict(re.findall(r'key: "([^"]+)" value: \{ string_value: "([^"]*)" \}', config))

    def section(kind: str) -> dict[str, str]:
        match = re.search(rf"^{kind} \[\n(.*?)\n\]", config, re.S | re.M)
        body = match.group(1) if match else ""
        return dict(re.findall(r'name: "([^"]+)"\s+data_type: TYPE_(\w+)', body))

    return params, section("input"), section("output")


def missing(files: dict[str, str]) -> list[str]:
    """What the recorded tables say each model reads that the repository lacks (or types
    differently)."""
    out = []
    for model in (facts.PREPROCESSING, facts.POSTPROCESSING, facts.TENSORRT_LLM):
        params, inputs, outputs = parse(files[f"{model.name}/config.pbtxt"])
        out += [f"{model.name}: parameter {p.name}" for p in model.params
                if p.required and p.name not in params]
        declared = inputs | outputs
        out += [f"{model.name}: tensor {t}" for t in model.initialize_reads
                if t not in declared]
        out += [f"{model.name}: input {t.name}" for t in model.inputs
                if not t.optional and t.name not in inputs]
        table = {t.name: t.dtype for t in (*model.inputs, *model.outputs)}
        out += [f"{model.name}: {name} is not a tensor of model.py" for name in declared
                if name not in table]
        out += [f"{model.name}: {name} is {dtype}, model.py has {table[name]}"
                for name, dtype in declared.items()
                if name in table and not table[name].startswith("$") and table[name] != dtype]
    return out


REPO = triton.model_repository(engine_dir="/engine", tokenizer_dir="/engine/tokenizer",
                               max_batch_size=64)


def test_triton_repository_has_everything_the_models_read() -> None:
    assert missing(REPO) == []
    pre, _, _ = parse(REPO["preprocessing/config.pbtxt"])
    assert pre["add_special_tokens"] == "True", "upstream's default: keeps BOS"
    assert pre["multimodal_model_path"] == "", "indexed directly: must be present"
    _, trt_inputs, _ = parse(REPO["tensorrt_llm/config.pbtxt"])
    assert trt_inputs["seed"] == "UINT64" and "random_seed" not in trt_inputs


@pytest.mark.parametrize(("model", "text"), [
    ("preprocessing", '  {\n    name: "EMBEDDING_BIAS_WORDS"'),
    ("preprocessing", 'parameters: { key: "multimodal_model_path"'),
    ("postprocessing", '  {\n    name: "OUTPUT"'),
    ("tensorrt_llm", 'parameters: { key: "gpt_model_path"'),
])
def test_a_missing_parameter_or_tensor_fails(model: str, text: str) -> None:
    config = REPO[f"{model}/config.pbtxt"]
    assert text in config
    start = config.index(text)
    end = config.index("}", start + len(text)) + 1
    if text.startswith("parameters"):
        end = config.index("\n", start)
    broken = {**REPO, f"{model}/config.pbtxt": config[:start] + config[end:]}
    assert missing(broken), f"removing {text!r} went unnoticed"


def test_a_tensor_model_py_does_not_read_fails() -> None:
    config = REPO["tensorrt_llm/config.pbtxt"].replace('name: "seed"', 'name: "random_seed"')
    assert "tensorrt_llm: random_seed is not a tensor of model.py" in missing(
        {**REPO, "tensorrt_llm/config.pbtxt": config})


# -- the catalogue against the refusal table --------------------------------------------------

DOCUMENTED = {("fp8", 89), ("w4a8_awq", 89), ("nvfp4", 100)}
"""Support-matrix limits kiln adds (refusals.NOT_ENFORCED): algorithm, lowest SM."""


def sm(gpu: catalogue.GPU) -> int:
    return gpu.capability[0] * 10 + gpu.capability[1]


@pytest.mark.parametrize("gpu", catalogue.GPUS, ids=lambda g: g.name)
def test_catalogue_refuses_what_trtllm_build_refuses(gpu: catalogue.GPU) -> None:
    for algo in catalogue.QUANT_ALGOS:
        for kv in catalogue.KV_CACHE_QUANTS:
            rules = refusals.refusals(algo, kv, sm(gpu))
            documented = any(algo == a and sm(gpu) < low for a, low in DOCUMENTED)
            answer = catalogue.supports(gpu, "tensorrt", algo, kv)
            assert answer.ok is not (bool(rules) or documented), (gpu.name, algo, kv)
            if rules and not documented:
                assert any(r.effect in answer.reason for r in rules), answer.reason
                assert gpu.name in answer.reason


def test_new_catalogue_entries() -> None:
    assert catalogue.by_product("NVIDIA-GH200-144G-HBM3e").memory_gib == 142  # type: ignore[union-attr]
    for name, cc in (("RTX-6000-Ada", "8.9"), ("L20", "8.9"), ("RTX-A6000", "8.6"),
                     ("B300", "10.3"), ("GB300", "10.3")):
        assert catalogue.by_name(name).compute_capability == cc
    assert catalogue.by_product("NVIDIA-B300-SXM6-AC").name == "B300"  # type: ignore[union-attr]
    assert not catalogue.supports("B300", "tensorrt", "int4_awq").ok
    assert catalogue.supports("RTX-PRO-6000", "tensorrt", "int4_awq").ok, "SM 12.0 is not refused"
