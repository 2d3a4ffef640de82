"""What ``trtllm-build`` 1.2.x refuses or silently changes, by compute capability (SM).

SM is ``major * 10 + minor`` as ``get_sm_version()`` returns it (8.9 → 89, 10.3 → 103).
Ranges are half-open ``[sm_min, sm_max)``; ``None`` is unbounded. ``refuse`` rules raise with
``effect`` as the upstream message; ``override`` rules change the build config with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BUILDER = "tensorrt_llm/builder.py@index-id:205252225"
"""build() of the pydantic-PluginConfig era (same as plugin.py@c20322f); the index gave it by
file id only."""
PLUGIN = "tensorrt_llm/plugin/plugin.py@c20322ffd3dc0740ca530c9fad989b22e64f6e06"
BUILD = "tensorrt_llm/commands/build.py@65f1d1536e18aea3380e6e270e00895a709333eb"
MODE = "tensorrt_llm/quantization/mode.py@index-id:472971060"

Action = Literal["refuse", "override"]
KilnAlgo = Literal["none", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo",
                   "nvfp4"]
KilnKv = Literal["none", "fp8", "int8"]
ALL_ALGOS: tuple[KilnAlgo, ...] = ("none", "fp8", "int8_sq", "int4_awq", "w4a8_awq",
                                   "int8_wo", "int4_wo", "nvfp4")
FP8_FMHA_ALGOS: tuple[KilnAlgo, ...] = ("fp8", "w4a8_awq", "nvfp4")
"""The algorithms build() lets keep FP8 context FMHA (FP8, W4A8_AWQ, NVFP4)."""


@dataclass(frozen=True)
class Rule:
    """When the build matches every given condition, trtllm-build does ``action``."""

    id: str
    action: Action
    effect: str
    source: str
    sm_min: int | None = None
    sm_max: int | None = None
    algos: tuple[KilnAlgo, ...] | None = None
    """Kiln algorithms the rule applies to; None: any."""
    kv_cache: tuple[KilnKv, ...] | None = None
    plugin: str | None = None
    """Flag settings the rule needs, comma-separated (all of them): ``name=value``, ``a|b=value``
    (any of them), ``name`` (given, other than disable) or ``name>N`` (an integer above N)."""

    def plugin_names(self) -> set[str]:
        """The flags ``plugin`` names."""
        return {n for c in (self.plugin or "").split(",")
                for n in c.partition("=")[0].partition(">")[0].split("|")}

    def applies(self, algo: KilnAlgo, kv: KilnKv, sm: int) -> bool:
        return ((self.sm_min is None or sm >= self.sm_min)
                and (self.sm_max is None or sm < self.sm_max)
                and (self.algos is None or algo in self.algos)
                and (self.kv_cache is None or kv in self.kv_cache))


_NOT_FP8_FMHA = tuple(a for a in ALL_ALGOS if a not in FP8_FMHA_ALGOS)
RULES: tuple[Rule, ...] = (
    Rule("int_quant_sm100", "refuse", "INT8/INT4 quantization is not supported on SM>=100.",
         BUILDER, 100, 120, ("int4_awq", "w4a8_awq", "int8_wo", "int4_wo")),
    Rule("int8_kv_sm100", "refuse", "INT8/INT4 quantization is not supported on SM>=100.",
         BUILDER, 100, 120, kv_cache=("int8",)),
    Rule("smoothquant_sm100", "refuse", "SmoothQuant is not supported on SM>=100.",
         BUILDER, 100, 120, ("int8_sq",)),
    Rule("per_channel_token_sm100", "refuse",
         "Per-channel or per-token scaling is not supported on SM>=100.", BUILDER, 100, 120,
         ("int8_sq",)),
    Rule("plugins_sm100", "refuse",
         "{plugin}={val} is not supported on SM {sm}. (NotImplementedError, SM == 100 only)",
         PLUGIN, 100, 101,
         plugin="gemm_swiglu_plugin|fp8_rowwise_gemm_plugin|low_latency_gemm_plugin|"
                "low_latency_gemm_swiglu_plugin|bert_context_fmha_fp32_acc"),
    Rule("no_context_fmha", "override",
         "Context FMHA is disabled, FP8 Context FMHA and Paged Context FMHA are disabled.",
         BUILDER, plugin="context_fmha=disable"),
    Rule("fp8_fmha_needs_fp8_algo", "override",
         "FP8 Context FMHA is disabled because it must be used together with the fp8 "
         "quantization workflow.", BUILDER, algos=_NOT_FP8_FMHA,
         plugin="use_fp8_context_fmha=enable"),
    Rule("paged_fmha_fp8_kv_other_algo", "override",
         "FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled.",
         BUILDER, algos=_NOT_FP8_FMHA, kv_cache=("fp8",),
         plugin="use_paged_context_fmha=enable"),
    Rule("fp8_fmha_below_sm89", "override",
         "FP8 context FMHA is disabled because it is only supported on Ada and Hopper Arch.",
         BUILDER, None, 89, FP8_FMHA_ALGOS, plugin="use_fp8_context_fmha=enable"),
    Rule("paged_fmha_fp8_kv_below_sm89", "override",
         "FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled.",
         BUILDER, None, 89, FP8_FMHA_ALGOS, ("fp8",), "use_paged_context_fmha=enable"),
    Rule("fp8_fmha_needs_fp8_kv", "override",
         "FP8 Paged Context FMHA is disabled because it must be used together with fp8 KV "
         "Cache.", BUILDER, 89, None, FP8_FMHA_ALGOS, ("none", "int8"),
         "use_paged_context_fmha=enable,use_fp8_context_fmha=enable"),
    Rule("fp8_fmha_forced_on", "override",
         "FP8 Context FMHA is enabled to support FP8 Paged Context FMHA.", BUILDER, 89, None,
         FP8_FMHA_ALGOS, ("fp8",), "use_paged_context_fmha=enable,use_fp8_context_fmha=disable"),
    Rule("paged_fmha_int8_kv", "override",
         "Paged Context FMHA is disabled because it doesn't work with int8 kv cache currently.",
         BUILDER, kv_cache=("int8",), plugin="use_paged_context_fmha=enable"),
    Rule("paged_fmha_streamingllm", "override",
         "Paged Context FMHA is disabled because StreamingLLM is not supported when enabling "
         "paged KV context FMHA.", BUILDER, plugin="streamingllm=enable"),
    Rule("nvfp4_gemm_plugin", "override",
         "NVFP4 quantization detected, by default enabling NVFP4 GEMM plugin (gemm_plugin "
         "becomes nvfp4 unless given as disable)", BUILDER, algos=("nvfp4",)),
    Rule("strongly_typed_fp8", "override", "strongly_typed forced on for FP8 or FP8 KV cache",
         BUILDER, algos=("fp8",)),
    Rule("strongly_typed_fp8_kv", "override", "strongly_typed forced on for FP8 or FP8 KV "
         "cache", BUILDER, kv_cache=("fp8",)),
    Rule("reduce_fusion", "override", "Overriding reduce_fusion to False (tp_size 1, or not "
         "Llama/Gemma2/Medusa)", BUILDER, plugin="reduce_fusion=enable"),
    Rule("user_buffer", "override", "Overriding user_buffer to False (without reduce_fusion)",
         BUILDER, plugin="user_buffer=enable"),
    Rule("norm_quant_fusion", "override", "Overriding norm_quant_fusion to False (needs "
         "Llama, NVFP4, no reduce_fusion)", BUILDER,
         plugin="norm_quant_fusion=enable"),
    Rule("streamingllm", "refuse", "StreamingLLM is no longer supported because attention "
         "sink cannot work with the non-cyclic kv cache kernel & runtime changes.", BUILD,
         plugin="streamingllm=enable"),
    Rule("context_logits_draft", "refuse", "Gather context logits is not support with draft "
         "len > 0. If want to get the accepted tokens' logits from target model, please just "
         "enable gather_generation_logits", BUILD, plugin="gather_context_logits,max_draft_len>0"),
    Rule("gemm_swiglu_needs_fused_mlp", "refuse", "GemmSwiGLU plugin requires --use_fused_mlp "
         "flag (optimize_model_with_config, after conversion)", BUILDER,
         plugin="gemm_swiglu_plugin|low_latency_gemm_swiglu_plugin=fp8,use_fused_mlp=disable"),
    Rule("eagle_checkpoint", "refuse", "EAGLE needs an EAGLE checkpoint (build() asserts "
         "hasattr(model.config, 'num_eagle_layers') after conversion; kiln converts Llama, "
         "Mistral, Mixtral and Qwen2 checkpoints, which have none)", BUILDER,
         plugin="speculative_decoding_mode=eagle"),
    Rule("profiles_opt_tokens", "refuse", "multiple_profiles is enabled, while opt_num_tokens "
         "is set. They are not supposed to be working in the same time for now.", BUILD,
         plugin="multiple_profiles=enable,opt_num_tokens"),
)
"""Every rule read; none refuses FP8 below SM89 or NVFP4 below SM100 (see NOT_ENFORCED)."""

NOT_ENFORCED: dict[str, str] = {
    "fp8 below SM89": "builder.py only turns FP8 context FMHA off; support-matrix.md (and "
                      "llm-api llm_quantization.py's enable_fp8 check) say FP8 needs SM>=89",
    "nvfp4 below SM100": "no check in builder.py/plugin.py; the example gates NVFP4 on "
                         "major >= 10 and the docs say Blackwell only",
    "w4a8_awq below SM89": "no check in builder.py; support-matrix.md: INT4 AWQ/GPTQ with FP8 "
                           "activations require SM >= 89",
}
ADMITTED: dict[str, str] = {
    "fp8 KV cache below SM89": "no check in builder.py (index-id 205252225) or build.py@65f1d15; "
                               "docs/source/features/quantization.md@09d4c79ba941a5c2c62c878c35"
                               "72c0dcc8b85efa (hardware support matrix) gives Ampere 'FP8 KV "
                               "Cache: Y'; the only Ampere-without-FP8 table read "
                               "(reference/support-matrix.md@03dad62, container 25.03, TensorRT "
                               "10.9) predates 1.2.x and is about FP8 math, not the KV cache. "
                               "Kiln admits it on both backends.",
}
"""Limits an older kiln enforced without a 1.2.x source: dropped."""
DEFAULTS: dict[str, str] = {"use_fp8_context_fmha": "enable", "use_paged_context_fmha": "enable",
                            "context_fmha": "enable", "gemm_plugin": "None (off)",
                            "multiple_profiles": "disable", "tokens_per_block": "32"}
"""PluginConfig defaults (plugin.py@c20322f)."""

CHECKPOINT_ALGO: dict[KilnAlgo, tuple[str, str]] = {
    "none": ("", "no quantization"),
    "fp8": ("FP8", "FP8_QDQ only: no INT weights, not caught by the SM>=100 check"),
    "int8_sq": ("W8A8_SQ_PER_CHANNEL", "INT8 weights + activations: SmoothQuant check"),
    "int4_awq": ("W4A16_AWQ", "use_weight_only(int4, per_group): INT4 weight-only"),
    "w4a8_awq": ("W4A8_AWQ", "use_weight_only(int4, per_group): INT4 weight-only too"),
    "int8_wo": ("W8A16", "INT8 weight-only (convert_checkpoint --weight_only_precision int8)"),
    "int4_wo": ("W4A16", "INT4 weight-only (convert_checkpoint --weight_only_precision int4)"),
    "nvfp4": ("NVFP4", "NVFP4 flag only: not caught by the SM>=100 check"),
}
"""Kiln algorithm → checkpoint QuantAlgo and its QuantMode class (mode.py from_quant_algo);
int8_sq's qformat→algo mapping lives in quantize_by_modelopt.py (not read)."""


def _given(condition: str, args: dict[str, str]) -> bool:
    """One condition of ``Rule.plugin`` against trtllm-build flags given as ``{name: value}``
    (a switch: empty value)."""
    if ">" in condition:
        name, _, low = condition.partition(">")
        return args.get(name, "0").isdigit() and int(args.get(name) or 0) > int(low)
    names, _, value = condition.partition("=")
    return any(args.get(n) == value if value else n in args and args[n] != "disable"
               for n in names.split("|"))


def flag_refusals(extra_args: list[str], sm: int | None) -> list[Rule]:
    """The ``refuse`` rules whose flag conditions ``extra_args`` (``--name[=value]``) meet, on
    ``sm`` (None: only those of every compute capability)."""
    args = {a[2:].partition("=")[0]: a.partition("=")[2] for a in extra_args}
    return [r for r in RULES if r.action == "refuse" and r.plugin is not None
            and (sm is not None or (r.sm_min is None and r.sm_max is None))
            and (sm is None or ((r.sm_min is None or sm >= r.sm_min)
                                and (r.sm_max is None or sm < r.sm_max)))
            and all(_given(c, args) for c in r.plugin.split(","))]


def refusals(algo: KilnAlgo, kv: KilnKv, sm: int) -> list[Rule]:
    """The quantization ``refuse`` rules (no plugin condition) that stop this build."""
    return [r for r in RULES
            if r.action == "refuse" and r.plugin is None and r.applies(algo, kv, sm)]
