"""What the TensorRT-LLM 1.2.x runtime refuses or silently changes for an engine that built.

Both of kiln's servers load a TensorRT engine through the C++ executor, whose only batching is
in-flight (``executorImpl.cpp`` ``createModel``: static batching throws), so every engine must
meet ``TrtGptModelInflightBatching``'s constructor checks; the executor first "fixes" runtime
options the engine cannot honour (``fixExecutorConfig``), with a warning in the server's log
only. ``refuse`` rules fail the server at start (every pod crash-loops); ``override`` rules turn
an option off. ``enforced`` says where kiln stops or reports each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MODEL_CONFIG = ("cpp/include/tensorrt_llm/runtime/modelConfig.h"
                "@585c756579dc4d01f21fc13c2f604cdb461ac4f0")
INFLIGHT = ("cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp"
            "@00825c4ee813bdc5eb2e5cf218b644b8c18ce2ec")
EXECUTOR = "cpp/tensorrt_llm/executor/executorImpl.cpp@index-id:571425092"
"""``createModel`` and the chunked-context ``fixExecutorConfig`` (file id of the stored index;
find_files gives commit b35ac1b64368513d215c57d2ed01d62d910df8da for the path)."""

Action = Literal["refuse", "override"]


@dataclass(frozen=True)
class RuntimeRule:
    """When an engine (or the runtime options it is served with) meets ``when``, the
    executor does ``action`` with ``effect`` as its message."""

    id: str
    action: Action
    effect: str
    source: str
    when: str
    enforced: str


RULES: tuple[RuntimeRule, ...] = (
    RuntimeRule(
        "inflight_batching", "refuse",
        "TrtGptModelInflightBatching requires GPT attention/Mamba Conv 1d plugin with packed "
        "input and paged KV cache.", INFLIGHT,
        "supportsInflightBatching() false: a transformer engine without the GPT attention "
        "plugin, without packed input (remove_input_padding) or with a KV cache neither paged "
        "nor disabled (" + MODEL_CONFIG + ")",
        "admission: spec.build.plugins.gptAttention (not disable), .removeInputPadding and "
        ".pagedKvCache (true)"),
    RuntimeRule(
        "draft_external_needs_reuse", "refuse",
        "KV cache block reuse must be enabled for speculative decoding target model", INFLIGHT,
        "speculative decoding mode draft_tokens_external and block reuse off (asked, or turned "
        "off by fixExecutorConfig: no paged context FMHA)",
        "admission: extraArgs --speculative_decoding_mode=draft_tokens_external needs "
        "plugins.pagedContextFmha, and kvCache other than int8 (fp8 only with an FP8 FMHA "
        "algorithm): trtllm-build turns paged context FMHA off otherwise; plan: a trtllm-serve "
        "EngineDeployment of such an engine with server.runtime.enableBlockReuse false, or "
        "with --gather_context_logits, is Stalled (RuntimeOptionRefused)"),
    RuntimeRule(
        "reuse_needs_paged_context_fmha", "override",
        "Fixing executorConfig: KV cache reuse disabled because model was not built with paged "
        "context FMHA support", INFLIGHT,
        "block reuse on (the default) and the engine has no paged context FMHA",
        "status: a trtllm-serve EngineDeployment's products[].message and a Warning Event "
        "(RuntimeOptionIgnored) name the option; it still serves"),
    RuntimeRule(
        "reuse_with_context_logits", "override",
        "Fixing executorConfig: KV cache reuse disabled because model was built to return "
        "context logits", INFLIGHT,
        "block reuse on (the default) and the engine gathers context logits "
        "(extraArgs --gather_context_logits)",
        "status: a trtllm-serve EngineDeployment's products[].message and a Warning Event "
        "(RuntimeOptionIgnored) name the option; it still serves"),
    RuntimeRule(
        "chunked_context_needs_paged_context_fmha", "override",
        "Chunked context is not supported for this configuration and will be disabled.",
        EXECUTOR,
        "enable_chunked_prefill and the engine is RNN-based, has no KV cache or no paged "
        "context FMHA",
        "status: a trtllm-serve EngineDeployment's products[].message and a Warning Event "
        "(RuntimeOptionIgnored) name the option; it still serves"),
)
"""Every runtime check read that a kiln spec can reach."""

NOT_ENFORCED: dict[str, str] = {
    "onboard blocks": "'KV cache blocks need to be onboarded if context FMHA.' (INFLIGHT): "
                      "onboard_blocks is not a runtime option kiln writes (default true)",
    "crossKvCacheFraction": "encoder-decoder models only; kiln builds decoder-only checkpoints",
    "static batching": "'Static batching type is deprecated.' (EXECUTOR createModel): neither "
                       "server kiln renders asks for static batching",
}
"""Runtime checks read that no kiln spec reaches."""


def rule(rule_id: str) -> RuntimeRule:
    return next(r for r in RULES if r.id == rule_id)
