# ruff: noqa: E501  (upstream text is pinned verbatim, its long lines included)
"""The refusal table against upstream's own text: each ``raise``/``assert``/``warning`` of
TensorRT-LLM's build path that kiln's rules stand for, pinned here as test data with the path
and commit it was read at. A rule whose message or condition is not upstream's, or an upstream
refusal with no rule, fails (the catalogue is generated from the rules, so comparing the two
proves nothing)."""

from __future__ import annotations

import re

import pytest

from kiln.trtllm import flags, refusals

BUILDER_PY = "tensorrt_llm/builder.py (index file id 205252225, build())"
BUILD_PY = "tensorrt_llm/commands/build.py@65f1d1536e18aea3380e6e270e00895a709333eb (main())"

EXCERPTS: dict[str, tuple[str, str]] = {
    "sm100": (BUILDER_PY, '''
    if get_sm_version() >= 100 and get_sm_version() < 120:
        if model.config.quant_mode.is_int8_weight_only(
        ) or model.config.quant_mode.is_int4_weight_only(
        ) or model.config.quant_mode.has_int8_kv_cache():
            raise RuntimeError(
                "INT8/INT4 quantization is not supported on SM>=100.")
        if model.config.quant_mode.has_act_and_weight_quant():
            raise RuntimeError("SmoothQuant is not supported on SM>=100.")
        if model.config.quant_mode.has_per_channel_scaling(
        ) or model.config.quant_mode.has_per_token_dynamic_scaling():
            raise RuntimeError(
                "Per-channel or per-token scaling is not supported on SM>=100.")
'''),
    "fmha": (BUILDER_PY, '''
    elif build_config.plugin_config.use_paged_context_fmha:
        if not model.config.quant_mode.has_fp8_kv_cache(
        ) and build_config.plugin_config.use_fp8_context_fmha:
            build_config.plugin_config.use_fp8_context_fmha = False
            logger.warning(
                "FP8 Paged Context FMHA is disabled because it must be used together with fp8 KV Cache."
            )
        elif model.config.quant_mode.has_fp8_kv_cache(
        ) and not build_config.plugin_config.use_fp8_context_fmha:
            build_config.plugin_config.use_fp8_context_fmha = True
            logger.warning(
                "FP8 Context FMHA is enabled to support FP8 Paged Context FMHA.")

    if build_config.plugin_config.use_paged_context_fmha and model.config.quant_mode.has_int8_kv_cache(
    ):
        build_config.plugin_config.use_paged_context_fmha = False
        logger.warning(
            "Paged Context FMHA is disabled because it doesn't work with int8 kv cache currently."
        )
'''),
    "swiglu": (BUILDER_PY, '''
def optimize_model_with_config(model: PretrainedModel,
                               build_config: BuildConfig):
    gemm_swiglu_plugin = build_config.plugin_config.gemm_swiglu_plugin
    low_latency_gemm_swiglu_plugin = build_config.plugin_config.low_latency_gemm_swiglu_plugin
    if gemm_swiglu_plugin or low_latency_gemm_swiglu_plugin:
        if not build_config.plugin_config.use_fused_mlp:
            raise RuntimeError(
                "GemmSwiGLU plugin requires --use_fused_mlp flag")
'''),
    "eagle": (BUILDER_PY, '''
    if build_config.speculative_decoding_mode == SpeculativeDecodingMode.EAGLE:
        assert hasattr(model.config, 'num_eagle_layers')
        num_eagle_layers = model.config.num_eagle_layers
'''),
    "nccl": (BUILDER_PY, '''
    nccl_plugin = model.config.dtype if model.config.mapping.world_size > 1 else None
    network.plugin_config.set_nccl_plugin(nccl_plugin)
'''),
    "main": (BUILD_PY, '''
    if args.gather_all_token_logits:
        args.gather_context_logits = True
        args.gather_generation_logits = True
    if args.gather_context_logits and args.max_draft_len > 0:
        raise RuntimeError(
            "Gather context logits is not support with draft len > 0. "
            "If want to get the accepted tokens' logits from target model, please just enable gather_generation_logits"
        )
'''),
    "profiles": (BUILD_PY, '''
        if args.multiple_profiles == "enable" and args.opt_num_tokens is not None:
            raise RuntimeError(
                "multiple_profiles is enabled, while opt_num_tokens is set. "
                "They are not supposed to be working in the same time for now.")
'''),
}
"""Upstream text, verbatim (indentation aside)."""

CONDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "int_quant_sm100": ("sm100", ("get_sm_version() >= 100 and get_sm_version() < 120",
                                  "is_int8_weight_only", "is_int4_weight_only")),
    "int8_kv_sm100": ("sm100", ("get_sm_version() >= 100 and get_sm_version() < 120",
                                "has_int8_kv_cache")),
    "smoothquant_sm100": ("sm100", ("get_sm_version() < 120", "has_act_and_weight_quant")),
    "per_channel_token_sm100": ("sm100", ("get_sm_version() < 120", "has_per_channel_scaling",
                                          "has_per_token_dynamic_scaling")),
    "fp8_fmha_needs_fp8_kv": ("fmha", ("use_paged_context_fmha:", "not model.config.quant_mode"
                                       ".has_fp8_kv_cache(", "use_fp8_context_fmha = False")),
    "fp8_fmha_forced_on": ("fmha", ("has_fp8_kv_cache(\n) and not build_config.plugin_config"
                                    ".use_fp8_context_fmha", "use_fp8_context_fmha = True")),
    "paged_fmha_int8_kv": ("fmha", ("use_paged_context_fmha and model.config.quant_mode"
                                    ".has_int8_kv_cache(", "use_paged_context_fmha = False")),
    "context_logits_draft": ("main", ("args.gather_context_logits and args.max_draft_len > 0",
                                      "args.gather_context_logits = True")),
    "gemm_swiglu_needs_fused_mlp": ("swiglu", ("if gemm_swiglu_plugin or low_latency_gemm_swiglu_plugin:",
                                               "if not build_config.plugin_config.use_fused_mlp:")),
    "profiles_opt_tokens": ("profiles", ('args.multiple_profiles == "enable" and '
                                         "args.opt_num_tokens is not None",)),
}
"""Rule id → (excerpt, the upstream condition text the rule encodes)."""


def _text(excerpt: str) -> str:
    """The excerpt with indentation dropped and adjacent string literals joined."""
    lines = "\n".join(line.strip() for line in excerpt.strip().splitlines())
    return re.sub(r'"\s*\n?\s*"', "", lines)


def _messages(excerpt: str) -> list[str]:
    """Every message upstream raises or warns with in an excerpt."""
    text = _text(excerpt)
    return re.findall(r'(?:RuntimeError|warning)\(\s*"([^"]+)"', text)


RULES = {r.id: r for r in refusals.RULES}


@pytest.mark.parametrize("rule_id", CONDITIONS)
def test_each_rule_says_what_upstream_says_under_upstreams_condition(rule_id: str) -> None:
    rule = RULES[rule_id]
    name, conditions = CONDITIONS[rule_id]
    source, excerpt = EXCERPTS[name]
    text = _text(excerpt)
    assert rule.effect.split(" (")[0] in _messages(excerpt), (rule.effect, _messages(excerpt))
    for condition in conditions:
        assert condition in text, (rule_id, condition)
    assert rule.source.split("@")[0] in source, (rule.source, source)


def test_every_upstream_refusal_has_a_rule() -> None:
    """Each ``raise RuntimeError`` message of the excerpts is a ``refuse`` rule's effect."""
    refused = {r.effect.split(" (")[0] for r in refusals.RULES if r.action == "refuse"}
    for name, (_, excerpt) in EXCERPTS.items():
        for message in re.findall(r'RuntimeError\(\s*"([^"]+)"', _text(excerpt)):
            assert message in refused, (name, message)


def test_sm_ranges_are_upstreams() -> None:
    """``get_sm_version() >= 100 and get_sm_version() < 120`` is [100, 120) in the table."""
    for rule_id, (name, _) in CONDITIONS.items():
        if name == "sm100":
            assert (RULES[rule_id].sm_min, RULES[rule_id].sm_max) == (100, 120), rule_id


def test_flags_build_rewrites_are_not_allow_listed() -> None:
    """build() sets nccl_plugin from dtype and world size whatever was asked (EXCERPTS
    ["nccl"]); user_buffer / norm_quant_fusion are overridden from the architecture: none of
    them may be an extraArg."""
    from kiln.api.engine_build import EXTRA_ARGS
    assert "set_nccl_plugin(nccl_plugin)" in _text(EXCERPTS["nccl"][1])
    for name in ("nccl_plugin", "user_buffer", "norm_quant_fusion"):
        assert name not in EXTRA_ARGS
        assert flags.TRTLLM_BUILD.flag(f"--{name}") is not None


def test_eagle_needs_what_kilns_conversion_never_writes() -> None:
    """build() asserts an EAGLE checkpoint (``num_eagle_layers``) after conversion; kiln
    converts only the TENSORRT_FAMILIES architectures, with their own convert_checkpoint.py."""
    from kiln.builder.checkpoint import TENSORRT_FAMILIES
    text = _text(EXCERPTS["eagle"][1])
    assert "SpeculativeDecodingMode.EAGLE:\nassert hasattr(model.config, 'num_eagle_layers')" \
        in text
    rule = RULES["eagle_checkpoint"]
    assert rule.plugin == "speculative_decoding_mode=eagle" and rule.action == "refuse"
    assert "num_eagle_layers" in rule.effect
    assert not any("Eagle" in a for a in TENSORRT_FAMILIES)
    assert set(TENSORRT_FAMILIES.values()) <= {"llama", "qwen"}
