"""The Triton model repository for one engine.

A ``pytorch`` engine (or a checkpoint served as the fallback) is one Python model,
``tensorrt_llm``, TensorRT-LLM's LLM-API model (``triton_backend/all_models/llmapi``): kiln
writes its ``model.yaml`` and the server container copies the rest from the Triton image
(:func:`llmapi_repository`, :func:`llmapi_assembly`).

A ``tensorrt`` engine uses the inflight-batcher layout (1.2.x and older): four models
(``triton_backend/all_models/inflight_batcher_llm``): ``preprocessing`` (tokenizer, Python),
``tensorrt_llm`` (the C++ ``tensorrtllm`` backend over the engine), ``postprocessing``
(detokenizer, Python) and ``ensemble`` chaining them (``text_input`` → ``text_output``).
Pure: returns ``{relative path: content}``; the init container writes the files and the
server container adds the Python models' ``model.py`` from the Triton image.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from kiln.trtllm import triton as facts

EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
PYTHON_MODELS = ("preprocessing", "postprocessing")


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    scalar: bool = False
    """Reshape ``[1]`` to a scalar (``reshape: { shape: [ ] }``)."""
    ragged: bool = False

    def text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        parts = [f'name: "{self.name}"', f"data_type: TYPE_{self.dtype}", f"dims: [ {dims} ]"]
        if self.scalar:
            parts.append("reshape: { shape: [ ] }")
        if self.optional:
            parts.append("optional: true")
        if self.ragged:
            parts.append("allow_ragged_batch: true")
        return "  {\n    " + "\n    ".join(parts) + "\n  }"


def _tensors(kind: str, tensors: list[Tensor]) -> str:
    return f"{kind} [\n" + ",\n".join(t.text() for t in tensors) + "\n]"


def _params(values: dict[str, str]) -> str:
    return "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                     for k, v in values.items())


def _model(name: str, head: str, max_batch: int, inputs: list[Tensor], outputs: list[Tensor],
           tail: str) -> str:
    return "\n".join([f'name: "{name}"', head, f"max_batch_size: {max_batch}",
                      _tensors("input", inputs), _tensors("output", outputs), tail]) + "\n"


def _one(name: str, dtype: str = "INT32", optional: bool = True) -> Tensor:
    return Tensor(name, dtype, (1,), optional=optional, scalar=True)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    lines = [f'    model_name: "{model}"', "    model_version: -1"]
    lines += [f'    input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'    output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return "  {\n" + "\n".join(lines) + "\n  }"


_DIMS: dict[str, tuple[int, ...]] = {
    "BAD_WORDS_IDS": (2, -1), "STOP_WORDS_IDS": (2, -1), "TOKENS_BATCH": (-1, -1),
    "PIXEL_VALUES": (-1, -1, -1, -1), "IMAGE_SIZES": (-1, 2), "IMAGE_GRID_THW": (-1, 3),
    "ASPECT_RATIO_IDS": (-1,), "ASPECT_RATIO_MASK": (-1, -1),
    "CROSS_ATTENTION_MASK": (-1, -1, -1), "ATTENTION_MASK": (-1,),
    "output_ids": (-1, -1), "stop_words_list": (2, -1), "bad_words_list": (2, -1),
}
_SCALARS = {"QUERY", "DECODER_QUERY", "REQUEST_OUTPUT_LEN", "END_ID", "PAD_ID",
            "PROMPT_TABLE_EXTRA_ID", "REQUEST_INPUT_LEN", "REQUEST_DECODER_INPUT_LEN",
            "OUT_END_ID", "OUT_PAD_ID", "IS_VIDEO_INPUT"}


def _declare(table: facts.Model, kind: str, names: tuple[str, ...] | None = None,
             optional: bool | None = None) -> list[Tensor]:
    """Tensors of ``table`` (all, or ``names``) with the recorded dtypes."""
    source = table.inputs if kind == "input" else table.outputs
    chosen = [t for t in source if names is None or t.name in names]
    return [Tensor(t.name, t.dtype, _DIMS.get(t.name, (1,) if t.name in _SCALARS else (-1,)),
                   optional=(t.optional if optional is None else optional)
                   and kind == "input") for t in chosen]


def _tensor(table: facts.Model, name: str, *, scalar: bool = True,
            ragged: bool = False, dims: tuple[int, ...] = (1,)) -> Tensor:
    t = next(t for t in table.inputs if t.name == name)
    return Tensor(name, t.dtype, _DIMS.get(name, dims), optional=t.optional, scalar=scalar,
                  ragged=ragged)


TRT_INPUTS = ("end_id", "pad_id", "streaming", "temperature", "runtime_top_k",
              "runtime_top_p", "seed", "beam_width", "repetition_penalty", "min_tokens",
              "presence_penalty", "frequency_penalty", "len_penalty",
              "exclude_input_in_output", "return_log_probs")
"""Optional inputs of the ``tensorrt_llm`` model kiln declares (names from the recorded
table, its dtypes)."""
ENSEMBLE_TO_TRT = {"end_id": "_END_ID", "pad_id": "_PAD_ID", "streaming": "stream",
                   "temperature": "temperature", "runtime_top_k": "top_k",
                   "runtime_top_p": "top_p", "seed": "seed", "beam_width": "beam_width",
                   "repetition_penalty": "repetition_penalty", "min_tokens": "min_tokens",
                   "presence_penalty": "presence_penalty",
                   "frequency_penalty": "frequency_penalty", "len_penalty": "length_penalty",
                   "exclude_input_in_output": "exclude_input_in_output",
                   "return_log_probs": "return_log_probs"}
"""How the ensemble feeds them (upstream's ensemble: top_k → runtime_top_k, ...)."""


def model_repository(*, engine_dir: str, tokenizer_dir: str, max_batch_size: int,
                     instances: int = 1, kv_cache_fraction: str = "0.9",
                     decoupled: bool = True) -> dict[str, str]:
    """``{path: content}`` of the repository: each model's config.pbtxt and version dir.

    Every parameter and tensor the 1.2.x ``model.py`` files read is declared (the tables of
    :mod:`kiln.trtllm.triton`), with upstream's defaults.
    """
    cpu = f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"
    trt = facts.TENSORRT_LLM
    trtllm = _model(
        "tensorrt_llm", 'backend: "tensorrtllm"', max_batch_size,
        [Tensor("input_ids", "INT32", (-1,), ragged=True),
         _tensor(trt, "input_lengths"), _tensor(trt, "request_output_len"),
         *(_tensor(trt, n) for n in TRT_INPUTS),
         _tensor(trt, "stop_words_list", scalar=False, ragged=True),
         _tensor(trt, "bad_words_list", scalar=False, ragged=True)],
        [Tensor("output_ids", "INT32", (-1, -1)), Tensor("sequence_length", "INT32", (-1,)),
         Tensor("cum_log_probs", "FP32", (-1,)), Tensor("output_log_probs", "FP32", (-1, -1))],
        "\n".join([
            f"model_transaction_policy {{ decoupled: {'true' if decoupled else 'false'} }}",
            f"dynamic_batching {{ preferred_batch_size: [ {max_batch_size} ] "
            "max_queue_delay_microseconds: 0 }", cpu,
            _params({"max_beam_width": "1", "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
                     "gpt_model_type": "inflight_fused_batching", "gpt_model_path": engine_dir,
                     "tokenizer_dir": tokenizer_dir,
                     "batch_scheduler_policy": "guaranteed_no_evict",
                     "kv_cache_free_gpu_mem_fraction": kv_cache_fraction,
                     "exclude_input_in_output": "true",
                     "executor_worker_path": EXECUTOR_WORKER})]))
    pre_table = facts.PREPROCESSING
    pre = _model(
        "preprocessing", 'backend: "python"', max_batch_size,
        _declare(pre_table, "input"), _declare(pre_table, "output"),
        cpu + "\n" + _params({"tokenizer_dir": tokenizer_dir, "add_special_tokens": "True",
                              "multimodal_model_path": "", "gpt_model_path": engine_dir}))
    post = _model(
        "postprocessing", 'backend: "python"', max_batch_size,
        _declare(facts.POSTPROCESSING, "input"), _declare(facts.POSTPROCESSING, "output"),
        cpu + "\n" + _params({"tokenizer_dir": tokenizer_dir, "skip_special_tokens": "True"}))
    steps = ",\n".join([
        _step("preprocessing", {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens",
                                "BAD_WORDS_DICT": "bad_words", "STOP_WORDS_DICT": "stop_words",
                                "END_ID": "end_id", "PAD_ID": "pad_id"},
              {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
               "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
               "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
               "OUT_END_ID": "_END_ID", "OUT_PAD_ID": "_PAD_ID"}),
        _step("tensorrt_llm", {"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
                               "request_output_len": "_REQUEST_OUTPUT_LEN",
                               "bad_words_list": "_BAD_WORDS_IDS",
                               "stop_words_list": "_STOP_WORDS_IDS", **ENSEMBLE_TO_TRT},
              {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"}),
        _step("postprocessing", {"TOKENS_BATCH": "_TOKENS_BATCH",
                                 "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
              {"OUTPUT": "text_output"}),
    ])
    ens_inputs = ("text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id",
                  *(v for v in ENSEMBLE_TO_TRT.values() if not v.startswith("_")))
    ensemble = _model(
        "ensemble", 'platform: "ensemble"', max_batch_size,
        [t if t.name in ("bad_words", "stop_words") else
         Tensor(t.name, t.dtype, (1,), optional=t.optional)
         for t in _declare(facts.ENSEMBLE, "input", ens_inputs)],
        [Tensor("text_output", "STRING", (-1,))],
        "ensemble_scheduling {\n  step [\n" + steps + "\n  ]\n}")
    files = {f"{name}/config.pbtxt": text for name, text in (
        ("ensemble", ensemble), ("preprocessing", pre), ("tensorrt_llm", trtllm),
        ("postprocessing", post))}
    files |= {f"{name}/1/.keep": "" for name in ("ensemble", "tensorrt_llm", *PYTHON_MODELS)}
    return files


def launch_command(*, repo: str, world_size: int, http_port: int, grpc_port: int,
                   metrics_port: int) -> list[str]:
    """tritonserver, or one tritonserver per rank under mpirun (the leader mode of
    ``launch_triton_server.py``): rank 0 serves, the others only run ``tensorrt_llm``."""
    def server(rank: int) -> list[str]:
        args = ["tritonserver", f"--model-repository={repo}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
        if rank == 0:
            return [*args, f"--http-port={http_port}", f"--grpc-port={grpc_port}",
                    f"--metrics-port={metrics_port}"]
        return [*args, "--model-control-mode=explicit", "--load-model=tensorrt_llm",
                "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"]

    if world_size == 1:
        return server(0)
    command = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        if rank:
            command.append(":")
        command += ["-n", "1", *server(rank)]
    return command


LLMAPI_CONFIG = "kiln-model.yaml"
"""kiln's model.yaml, in the model's version directory beside the image's own (which it
replaces through ``LLM_CONFIG_PATH``)."""


def llmapi_repository(*, model_dir: str, tensor: int, pipeline: int, options: dict[str, Any],
                      decoupled: bool) -> dict[str, str]:
    """``{path: content}``: the LLM-API model's arguments, with the LLM options trtllm-serve's
    YAML would carry (``options``) and the ``triton_config`` its model.py indexes."""
    config: dict[str, Any] = {
        **options, "model": model_dir, "backend": "pytorch",
        "tensor_parallel_size": tensor, "pipeline_parallel_size": pipeline,
        "triton_config": {"max_batch_size": facts.LLMAPI_MAX_BATCH_SIZE,
                          "decoupled": decoupled}}
    return {f"{facts.LLMAPI_MODEL}/1/{LLMAPI_CONFIG}": yaml.safe_dump(config, sort_keys=True)}


def llmapi_config_path(repo: str) -> str:
    """The absolute path ``LLM_CONFIG_PATH`` names."""
    return f"{repo}/{facts.LLMAPI_MODEL}/1/{LLMAPI_CONFIG}"


def llmapi_assembly(*, repo: str, source: str, decoupled: bool) -> str:
    """Shell steps that complete the repository from the image's copy of the model
    (``source``: its ``tensorrt_llm`` directory, copied whole), and give it the transaction
    policy auto-complete would have read from model.yaml (off under
    ``--disable-auto-complete-config``) unless the image's config already sets one."""
    model = shlex.quote(f"{repo}/{facts.LLMAPI_MODEL}")
    policy = f"model_transaction_policy {{ decoupled: {'true' if decoupled else 'false'} }}"
    return " && ".join([
        f'cp -rL "{source}/." {model}/',
        f"{{ grep -q '^[[:space:]]*model_transaction_policy' {model}/config.pbtxt "
        f"|| echo {shlex.quote(policy)} >> {model}/config.pbtxt; }}"])
