# ruff: noqa: E501  (upstream text is pinned verbatim, its long lines included)
"""The runtime rules (kiln.trtllm.runtime) against upstream's own text: each check of the
C++ executor and in-flight batcher that a kiln spec can reach, pinned here with the path and
commit it was read at; and each ``refuse`` rule enforced at admission is a CEL rule of the
generated CRD that quotes upstream's message."""

from __future__ import annotations

import re

import pytest

from kiln.gen.crds import engine_build_crd
from kiln.trtllm import runtime

EXCERPTS: dict[str, tuple[str, str]] = {
    "supports": (runtime.MODEL_CONFIG, '''
    [[nodiscard]] bool constexpr supportsInflightBatching() const noexcept
    {
        return (isTransformerBased() && mUseGptAttentionPlugin && mInputPacked
                   && (mKVCacheType == KVCacheType::kDISABLED || mKVCacheType == KVCacheType::kPAGED))
            || (isRnnBased() && mUseMambaConv1dPlugin && mInputPacked && mPagedState);
    }
'''),
    "constructor": (runtime.INFLIGHT, '''
    if (!(mModelConfig.supportsInflightBatching()))
    {
        throw std::runtime_error(
            "TrtGptModelInflightBatching requires GPT attention/Mamba Conv 1d plugin with "
            "packed input and paged KV cache.");
    }
    if (mModelConfig.getSpeculativeDecodingMode().isDraftTokensExternal())
    {
        TLLM_CHECK_WITH_INFO(kvCacheConfig.getEnableBlockReuse(),
            "KV cache block reuse must be enabled for speculative decoding target model");
    }
'''),
    "fix_reuse": (runtime.INFLIGHT, '''
    if (executorConfig.getKvCacheConfig().getEnableBlockReuse())
    {
        auto kvCacheConfig = executorConfig.getKvCacheConfig();

        if (!modelConfig.getPagedContextFMHA())
        {
            TLLM_LOG_WARNING(
                "Fixing executorConfig: KV cache reuse disabled because model was not built with paged context FMHA "
                "support");
            kvCacheConfig.setEnableBlockReuse(false);
        }
        if (modelConfig.computeContextLogits())
        {
            TLLM_LOG_WARNING(
                "Fixing executorConfig: KV cache reuse disabled because model was built to return context logits");
            kvCacheConfig.setEnableBlockReuse(false);
        }
'''),
    "fix_chunked": (runtime.EXECUTOR, '''
    if (executorConfig.getEnableChunkedContext())
    {
        if (modelConfig.isRnnBased() || !modelConfig.isKVCacheEnabled() || !modelConfig.getPagedContextFMHA())
        {
            fixedExecutorConfig.setEnableChunkedContext(false);
            TLLM_LOG_WARNING(
                "Chunked context is not supported for this configuration and will be disabled. "
                "Related configs: RNNBased: %d, KVCacheEnabled: %d, PagedContextFMHA: %d",
                modelConfig.isRnnBased(), modelConfig.isKVCacheEnabled(), modelConfig.getPagedContextFMHA());
        }
    }
'''),
    "create_model": (runtime.EXECUTOR, '''
        case BatchingType::kSTATIC:
            TLLM_THROW(
                "Static batching type is deprecated. Please use in-flight batching with "
                "CapacitySchedulerPolicy::kSTATIC_BATCH instead.");
        case BatchingType::kINFLIGHT:
            return modelConfig.isRnnBased() ? batch_manager::TrtGptModelType::InflightBatching
                                            : batch_manager::TrtGptModelType::InflightFusedBatching;
'''),
}
"""Upstream text, verbatim (indentation aside)."""

CONDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "inflight_batching": ("constructor", ("if (!(mModelConfig.supportsInflightBatching()))",
                                          "throw std::runtime_error(")),
    "draft_external_needs_reuse": ("constructor", ("isDraftTokensExternal()",
                                                   "TLLM_CHECK_WITH_INFO(kvCacheConfig.getEnableBlockReuse()")),
    "reuse_needs_paged_context_fmha": ("fix_reuse", ("if (!modelConfig.getPagedContextFMHA())",
                                                     "setEnableBlockReuse(false)")),
    "reuse_with_context_logits": ("fix_reuse", ("if (modelConfig.computeContextLogits())",
                                                "setEnableBlockReuse(false)")),
    "chunked_context_needs_paged_context_fmha": ("fix_chunked", (
        "!modelConfig.getPagedContextFMHA()", "setEnableChunkedContext(false)")),
}
"""Rule id → (excerpt, the upstream condition text the rule encodes)."""


def _text(excerpt: str) -> str:
    lines = "\n".join(line.strip() for line in excerpt.strip().splitlines())
    return re.sub(r'"\s*\n?\s*"', "", lines)


def _messages(excerpt: str) -> list[str]:
    return re.findall(r'(?:runtime_error|TLLM_LOG_WARNING|TLLM_CHECK_WITH_INFO\([^,]+,|'
                      r'TLLM_THROW)\(?\s*"([^"]+)"', _text(excerpt))


def test_every_rule_has_an_excerpt_and_every_excerpt_message_a_rule() -> None:
    assert set(CONDITIONS) == {r.id for r in runtime.RULES}
    said = {r.effect for r in runtime.RULES}
    for name in ("constructor", "fix_reuse"):
        for message in _messages(EXCERPTS[name][1]):
            assert message in said, (name, message)


@pytest.mark.parametrize("rule_id", CONDITIONS)
def test_each_rule_says_what_upstream_says_under_upstreams_condition(rule_id: str) -> None:
    rule = runtime.rule(rule_id)
    name, conditions = CONDITIONS[rule_id]
    source, excerpt = EXCERPTS[name]
    text = _text(excerpt)
    assert any(m.startswith(rule.effect) for m in _messages(excerpt)), (rule.effect,
                                                                        _messages(excerpt))
    for condition in conditions:
        assert condition in text, (rule_id, condition)
    assert rule.source == source


def test_in_flight_batching_needs_the_three_features_kiln_can_switch_off() -> None:
    """supportsInflightBatching: GPT attention plugin, packed input, paged (or no) KV cache;
    the only batching the executor still creates for a transformer is in-flight."""
    text = _text(EXCERPTS["supports"][1])
    for feature in ("mUseGptAttentionPlugin", "mInputPacked", "KVCacheType::kPAGED"):
        assert feature in text
    assert "InflightFusedBatching" in _text(EXCERPTS["create_model"][1])
    assert "Static batching type is deprecated" in _text(EXCERPTS["create_model"][1])


def test_refusals_enforced_at_admission_are_crd_rules_quoting_upstream() -> None:
    crd = str(engine_build_crd())
    for rule in runtime.RULES:
        if rule.action == "refuse" and rule.enforced.startswith("admission"):
            assert rule.effect in crd, rule.id
    build = engine_build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]["build"]
    found = {r.get("fieldPath"): r["rule"] for r in build["x-kubernetes-validations"]
             if runtime.rule("inflight_batching").effect in r["message"]}
    assert set(found) == {".plugins.gptAttention", ".plugins.removeInputPadding",
                          ".plugins.pagedKvCache"}
    # the engine's plugins: backend pytorch ignores them, so they are not refused there
    assert all(rule.startswith("self.backend != 'tensorrt' ||") for rule in found.values())
