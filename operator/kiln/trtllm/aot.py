"""What TensorRT-LLM's PyTorch backend does per GPU at every start, and where it keeps it:
the facts kiln's ahead-of-time artifacts are made from, with their upstream sources.

At start the runtime tunes kernels (its AutoTuner), compiles (torch.compile/Inductor, Triton,
FlashInfer, DeepGEMM and CuTe DSL JIT), and captures CUDA graphs. Each of those libraries
keeps what it made under a directory an environment variable names; a fresh pod has none, so
every replica does it all again. kiln runs the server once in the build Job with those
variables pointing into a fresh directory, and keeps what was written there.
"""

from __future__ import annotations

from dataclasses import dataclass

BOOTSTRAP = "tensorrt_llm/_bootstrap.py@fc4436a44e5af0e268b6d490467f8bdc34ee5930"
"""``_UNIFIED_CACHE_ROOT_ENV`` and ``_unified_cache_defaults``: one root fanning out to each
library's variable (``os.environ.setdefault``, so a variable set explicitly wins)."""
MODEL_ENGINE = "tensorrt_llm/_torch/pyexecutor/model_engine.py@index-id:707893322"
"""``cache_path = os.environ.get("TLLM_AUTOTUNER_CACHE_PATH", None)`` then
``autotune(cache_path=cache_path, rank=self.mapping.rank)`` around the warm-up requests."""
LLM_ARGS = "tensorrt_llm/llmapi/llm_args.py@index-id:1090804222"
"""``TorchLlmArgs``: ``cuda_graph_config``, ``torch_compile_config``, ``attn_backend``,
``enable_autotuner`` (``extra="forbid"``)."""
LLM_ARGS_COMPILE = "tensorrt_llm/llmapi/llm_args.py@index-id:1520735490"
"""``CudaGraphConfig.batch_sizes``/``enable_padding``, ``TorchCompileConfig.enable_inductor``
/``enable_piecewise_cuda_graph``."""

CACHE_ROOT_ENV = "TRTLLM_CACHE_DIR"
"""The one root (``_UNIFIED_CACHE_ROOT_ENV``, PR #18897): only in releases after 1.2.x; kiln
also sets every variable below itself, so older images behave the same."""


@dataclass(frozen=True)
class CacheVar:
    """One library's cache variable and its place under the root (``_unified_cache_defaults``)."""

    name: str
    path: str
    """Relative to the root."""
    file: bool = False
    """The variable names a file (the runtime writes ``<path>`` itself, per rank)."""
    owner: str = ""


CACHE_VARS: tuple[CacheVar, ...] = (
    CacheVar("TLLM_AUTOTUNER_CACHE_PATH", "autotuner/cache.json", file=True,
             owner="TensorRT-LLM's kernel AutoTuner (PR #7738)"),
    CacheVar("TORCHINDUCTOR_CACHE_DIR", "inductor", owner="torch.compile/Inductor"),
    CacheVar("TRITON_CACHE_DIR", "triton", owner="Triton JIT"),
    CacheVar("TORCH_EXTENSIONS_DIR", "torch_extensions", owner="torch C++/CUDA extensions"),
    CacheVar("FLASHINFER_WORKSPACE_BASE", "flashinfer", owner="FlashInfer JIT"),
    CacheVar("CUTE_DSL_CACHE_DIR", "cute_dsl", owner="CUTLASS CuTe DSL"),
    CacheVar("DG_JIT_CACHE_DIR", "deep_gemm", owner="DeepGEMM JIT"),
    CacheVar("TRTLLM_DG_CACHE_DIR", "trtllm_deep_gemm", owner="TensorRT-LLM's DeepGEMM"),
    CacheVar("CUDA_CACHE_PATH", "cuda", owner="the CUDA driver's PTX JIT cache"),
)
"""Every variable of ``_UNIFIED_CACHE_ENV_VARS`` with its default path (``BOOTSTRAP``)."""

VERSIONED = {
    "tensorrt_llm": ("tensorrt_llm", "tensorrt-llm"),
    "torch": ("torch",),
    "triton": ("triton",),
    "flashinfer": ("flashinfer", "flashinfer-python"),
}
"""What a set is made with and must be loaded with (module → distributions): a kernel chosen
or compiled by one version is not the next one's. The CUDA runtime (``torch.version.cuda``),
the GPU, its compute capability and the driver are checked besides."""

SHAPING_OPTIONS = ("max_batch_size", "max_num_tokens", "max_seq_len", "tensor_parallel_size",
                   "pipeline_parallel_size", "kv_cache_config.dtype",
                   "cuda_graph_config.batch_sizes", "cuda_graph_config.enable_padding",
                   "torch_compile_config.enable_inductor",
                   "torch_compile_config.enable_piecewise_cuda_graph", "attn_backend",
                   "enable_autotuner")
"""LLM API options (``LLM_ARGS``) that decide which kernels are tuned, compiled or captured:
the tuning buckets follow max_num_tokens and max_batch_size, the graphs the batch sizes, the
kernels the attention backend, the KV cache dtype and the parallelism."""

SHAPING_FLAGS = ("max_beam_width", "max_batch_size", "max_num_tokens", "max_seq_len",
                 "tensor_parallel_size", "tp_size", "pipeline_parallel_size", "pp_size",
                 "context_parallel_size", "cp_size", "moe_expert_parallel_size", "ep_size",
                 "moe_cluster_parallel_size", "cluster_size", "config", "extra_llm_api_options",
                 "backend")
"""trtllm-serve flags (kiln.trtllm.flags.TRTLLM_SERVE) that shape kernels or replace the options
the set was made with: given in ``server.args``, the set is not placed."""
SERVE_COMMAND = ("trtllm-serve", "{model}", "--backend", "pytorch", "--host", "127.0.0.1",
                 "--port", "{port}", "--tp_size", "{tp}", "--pp_size", "{pp}",
                 "--extra_llm_api_options", "{options}")
"""The warm-up runs the server exactly as a trtllm-serve pod does (kiln.trtllm.flags.SERVE_PY);
Triton's LLM-API model gets the same LLM options, not trtllm-serve's own scheduler ones."""
HEALTH_PATH = "/health"
COMPLETIONS_PATH = "/v1/completions"
"""trtllm-serve's OpenAI-compatible routes (``tensorrt_llm/serve/openai_server.py``)."""
