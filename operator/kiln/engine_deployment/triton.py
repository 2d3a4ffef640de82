"""The Triton model repository for one engine (TensorRT-LLM's inflight-batcher layout).

Four models (reference/trtllm.md §4.2): ``preprocessing`` (tokenizer, Python),
``tensorrt_llm`` (the C++ ``tensorrtllm`` backend over the engine), ``postprocessing``
(detokenizer, Python) and ``ensemble`` chaining them (``text_input`` → ``text_output``).
Pure: returns ``{relative path: content}``; the init container writes the files and the
server container adds the Python models' ``model.py`` from the Triton image.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def model_repository(*, engine_dir: str, tokenizer_dir: str, max_batch_size: int,
                     instances: int = 1, kv_cache_fraction: str = "0.9") -> dict[str, str]:
    """``{path: content}`` of the repository: each model's config.pbtxt and version dir."""
    cpu = f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"
    trtllm = _model(
        "tensorrt_llm", 'backend: "tensorrtllm"', max_batch_size,
        [Tensor("input_ids", "INT32", (-1,), ragged=True),
         Tensor("input_lengths", "INT32", (1,), scalar=True),
         Tensor("request_output_len", "INT32", (1,), scalar=True),
         _one("end_id"), _one("pad_id"), _one("streaming", "BOOL"),
         _one("temperature", "FP32"), _one("runtime_top_k"), _one("runtime_top_p", "FP32"),
         _one("random_seed", "UINT64"),
         Tensor("stop_words_list", "INT32", (2, -1), optional=True, ragged=True),
         Tensor("bad_words_list", "INT32", (2, -1), optional=True, ragged=True)],
        [Tensor("output_ids", "INT32", (-1, -1)), Tensor("sequence_length", "INT32", (-1,))],
        "\n".join([
            "model_transaction_policy { decoupled: true }",
            f"dynamic_batching {{ preferred_batch_size: [ {max_batch_size} ] "
            "max_queue_delay_microseconds: 0 }", cpu,
            _params({"max_beam_width": "1", "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
                     "gpt_model_type": "inflight_fused_batching", "gpt_model_path": engine_dir,
                     "batch_scheduler_policy": "guaranteed_no_evict",
                     "kv_cache_free_gpu_mem_fraction": kv_cache_fraction,
                     "exclude_input_in_output": "true",
                     "executor_worker_path": EXECUTOR_WORKER})]))
    pre = _model(
        "preprocessing", 'backend: "python"', max_batch_size,
        [Tensor("QUERY", "STRING", (1,)), Tensor("REQUEST_OUTPUT_LEN", "INT32", (1,)),
         Tensor("BAD_WORDS_DICT", "STRING", (-1,), optional=True),
         Tensor("STOP_WORDS_DICT", "STRING", (-1,), optional=True),
         Tensor("END_ID", "INT32", (1,), optional=True),
         Tensor("PAD_ID", "INT32", (1,), optional=True)],
        [Tensor("INPUT_ID", "INT32", (-1,)), Tensor("REQUEST_INPUT_LEN", "INT32", (1,)),
         Tensor("BAD_WORDS_IDS", "INT32", (2, -1)), Tensor("STOP_WORDS_IDS", "INT32", (2, -1)),
         Tensor("OUT_END_ID", "INT32", (1,)), Tensor("OUT_PAD_ID", "INT32", (1,))],
        cpu + "\n" + _params({"tokenizer_dir": tokenizer_dir, "add_special_tokens": "False"}))
    post = _model(
        "postprocessing", 'backend: "python"', max_batch_size,
        [Tensor("TOKENS_BATCH", "INT32", (-1, -1)), Tensor("SEQUENCE_LENGTH", "INT32", (-1,))],
        [Tensor("OUTPUT", "STRING", (-1,))],
        cpu + "\n" + _params({"tokenizer_dir": tokenizer_dir, "skip_special_tokens": "True"}))
    steps = ",\n".join([
        _step("preprocessing", {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens",
                                "BAD_WORDS_DICT": "bad_words", "STOP_WORDS_DICT": "stop_words",
                                "END_ID": "end_id", "PAD_ID": "pad_id"},
              {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
               "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
               "OUT_END_ID": "_END_ID", "OUT_PAD_ID": "_PAD_ID"}),
        _step("tensorrt_llm", {"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
                               "request_output_len": "max_tokens",
                               "end_id": "_END_ID", "pad_id": "_PAD_ID",
                               "bad_words_list": "_BAD_WORDS_IDS",
                               "stop_words_list": "_STOP_WORDS_IDS", "streaming": "stream",
                               "temperature": "temperature"},
              {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"}),
        _step("postprocessing", {"TOKENS_BATCH": "_TOKENS_BATCH",
                                 "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
              {"OUTPUT": "text_output"}),
    ])
    ensemble = _model(
        "ensemble", 'platform: "ensemble"', max_batch_size,
        [Tensor("text_input", "STRING", (1,)), Tensor("max_tokens", "INT32", (1,)),
         Tensor("bad_words", "STRING", (-1,), optional=True),
         Tensor("stop_words", "STRING", (-1,), optional=True),
         Tensor("end_id", "INT32", (1,), optional=True),
         Tensor("pad_id", "INT32", (1,), optional=True),
         Tensor("stream", "BOOL", (1,), optional=True),
         Tensor("temperature", "FP32", (1,), optional=True)],
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
