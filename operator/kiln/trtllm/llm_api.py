"""LLM API options kiln may write into a ``trtllm-serve --extra_llm_api_options`` YAML.

trtllm-serve merges the YAML into the arguments it built from its flags
(``update_llm_args_with_extra_dict``) and constructs ``LLM(**args)``; ``BaseLlmArgs`` has
``extra="forbid"``, so an unknown key fails at start-up. Dotted names are nested mappings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LLM_ARGS = "tensorrt_llm/llmapi/llm_args.py@index-id:1090804222"
"""Read by index file id (no commit): a version with DeepSeek sparse attention, late 2025."""
FORBIDS_UNKNOWN_KEYS = True
"""``BaseLlmArgs.model_config = {"extra": "forbid"}`` (same file)."""

Backend = Literal["pytorch", "tensorrt"]
OptionType = Literal["int", "float", "bool", "str", "list"]
BOTH: tuple[Backend, ...] = ("pytorch", "tensorrt")


@dataclass(frozen=True)
class Option:
    """One key of the YAML: dotted path, value type, upstream default, where it applies."""

    name: str
    type: OptionType
    default: str | None
    backends: tuple[Backend, ...] = BOTH
    source: str = LLM_ARGS
    note: str = ""


_ENGINE_CAP = ("tensorrt: a larger value is lowered to the engine's build_config value "
               "(validate_build_config_with_runtime_params)")
OPTIONS: tuple[Option, ...] = (
    Option("max_batch_size", "int", None, note=_ENGINE_CAP),
    Option("max_num_tokens", "int", "8192", note=_ENGINE_CAP),
    Option("max_seq_len", "int", None,
           note="tensorrt: the engine's value wins, a different one only logs a warning"),
    Option("max_input_len", "int", "1024", note="set_default_max_input_len"),
    Option("max_beam_width", "int", None),
    Option("tensor_parallel_size", "int", "1"),
    Option("pipeline_parallel_size", "int", "1"),
    Option("trust_remote_code", "bool", "false"),
    Option("enable_chunked_prefill", "bool", "false"),
    Option("kv_cache_config.dtype", "str", "auto", ("pytorch",),
           note="'a pure python field ... only for the Pytorch backend'"),
    Option("kv_cache_config.free_gpu_memory_fraction", "float", "0.9",
           note="validated to 0..1; trtllm-serve sets it from --free_gpu_memory_fraction"),
    Option("kv_cache_config.enable_block_reuse", "bool", "true"),
    Option("kv_cache_config.max_tokens", "int", None),
    Option("kv_cache_config.tokens_per_block", "int", "32"),
    Option("attn_backend", "str", "TRTLLM", ("pytorch",), note="kiln.trtllm.aot"),
    Option("enable_autotuner", "bool", "true", ("pytorch",), note="kiln.trtllm.aot"),
    Option("cuda_graph_config.batch_sizes", "list", None, ("pytorch",),
           source="tensorrt_llm/llmapi/llm_args.py@index-id:1520735490"),
    Option("cuda_graph_config.enable_padding", "bool", "false", ("pytorch",),
           source="tensorrt_llm/llmapi/llm_args.py@index-id:1520735490"),
    Option("torch_compile_config.enable_inductor", "bool", "false", ("pytorch",),
           source="tensorrt_llm/llmapi/llm_args.py@index-id:1520735490"),
    Option("torch_compile_config.enable_piecewise_cuda_graph", "bool", "false", ("pytorch",),
           source="tensorrt_llm/llmapi/llm_args.py@index-id:1520735490"),
)


def option(name: str) -> Option | None:
    return next((o for o in OPTIONS if o.name == name), None)
