"""Ahead-of-time artifacts, rendered: the kernel-shaping server options of a build, the warm-up
that makes its artifact set, and whether an EngineDeployment's options let it use the set."""

from __future__ import annotations

from typing import Any

from kiln.api import BuildSpec, Server
from kiln.contract.warmup import CachePath, Warmup, WarmupRuntime, WarmupShape
from kiln.trtllm import aot as facts

TRTLLM_SERVE = WarmupRuntime(
    runtime="trtllm-serve", command=list(facts.SERVE_COMMAND), health_path=facts.HEALTH_PATH,
    completions_path=facts.COMPLETIONS_PATH, cache_root_env=facts.CACHE_ROOT_ENV,
    cache=[CachePath(name=v.name, path=v.path, file=v.file) for v in facts.CACHE_VARS],
    versioned={k: list(v) for k, v in facts.VERSIONED.items()})
"""TensorRT-LLM's server, as the serving pods run it (kiln.trtllm.aot)."""


def shaping_options(build: BuildSpec) -> dict[str, Any]:
    """The LLM API options that decide which kernels are tuned, compiled and captured
    (``kiln.trtllm.aot.SHAPING_OPTIONS``), from the build: what the warm-up and the serving
    pods both run with. Parallelism is on the command line."""
    aot = build.aot
    options: dict[str, Any] = {"max_batch_size": build.max_batch_size,
                               "max_num_tokens": build.max_num_tokens,
                               "attn_backend": aot.attention_backend,
                               "enable_autotuner": aot.autotuner}
    if build.max_seq_len is not None:
        options["max_seq_len"] = build.max_seq_len
    if build.quantization.kv_cache == "fp8":
        options["kv_cache_config"] = {"dtype": "fp8"}
    if aot.cuda_graph_batch_sizes is not None or aot.cuda_graph_padding:
        graphs: dict[str, Any] = {"enable_padding": aot.cuda_graph_padding}
        if aot.cuda_graph_batch_sizes is not None:
            graphs["batch_sizes"] = sorted(set(aot.cuda_graph_batch_sizes))
        options["cuda_graph_config"] = graphs
    if aot.torch_compile is not None:
        options["torch_compile_config"] = {
            "enable_inductor": aot.torch_compile.inductor,
            "enable_piecewise_cuda_graph": aot.torch_compile.piecewise_cuda_graph}
    return options


def warmup_for(build: BuildSpec, runtime: WarmupRuntime | None) -> Warmup | None:
    """The warm-up of a build (None: no artifact set: another backend, ``aot.enabled``
    false, or no runtime configured)."""
    if build.backend != "pytorch" or not build.aot.enabled or runtime is None:
        return None
    p = build.parallelism
    command = [a.replace("{tp}", str(p.tensor)).replace("{pp}", str(p.pipeline))
               for a in runtime.command]
    return Warmup(**runtime.model_dump(exclude={"command"}), command=command,
                  options=shaping_options(build),
                  shapes=[WarmupShape(prompt_tokens=s.prompt_tokens,
                                      output_tokens=s.output_tokens,
                                      concurrency=s.concurrency) for s in build.aot.warmup])


def mismatched(server: Server, build: BuildSpec) -> list[str]:
    """The EngineDeployment's server options that differ from the kernel-shaping options the
    artifact set was made with, or replace them (``server.args``); its pods then start
    without the set."""
    runtime = server.runtime
    given = sorted({a[2:].partition("=")[0] for a in server.args if a.startswith("--")}
                   & set(facts.SHAPING_FLAGS))
    wanted = {"maxBatchSize": (runtime.max_batch_size, build.max_batch_size),
              "maxNumTokens": (runtime.max_num_tokens, build.max_num_tokens),
              "maxSeqLen": (runtime.max_seq_len, build.max_seq_len),
              "kvCacheDtype": (runtime.kv_cache_dtype,
                               "fp8" if build.quantization.kv_cache == "fp8" else "auto")}
    return [f"server.runtime.{name} {mine} (the build's is {theirs})"
            for name, (mine, theirs) in wanted.items()
            if mine is not None and mine != theirs] + [
        f"server.args --{flag}" for flag in given]
