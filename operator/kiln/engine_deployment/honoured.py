"""Runtime options a TensorRT engine cannot honour (kiln.trtllm.runtime), found before serving.

trtllm-serve hands the options to the C++ executor, which turns off what the engine cannot do
with a log line only (``fixExecutorConfig``) and refuses a draft-tokens target without block
reuse at start. Kiln says the first in the product's status and refuses the second.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.api import EngineBuild, EngineDeployment, EngineStatus
from kiln.api.engine_build import DRAFT_EXTERNAL, FP8_FMHA_ALGOS
from kiln.trtllm.runtime import RuntimeRule, rule

CONTEXT_LOGITS = "--gather_context_logits"


@dataclass(frozen=True)
class Unhonoured:
    """A runtime option (``spec`` path) that ``rule`` turns off, or refuses."""

    rule: RuntimeRule
    option: str
    why: str

    @property
    def refused(self) -> bool:
        return self.rule.action == "refuse"

    def text(self) -> str:
        verb = "fails the server at start" if self.refused else "is turned off by TensorRT-LLM"
        return (f"{self.option} {verb} on this engine ({self.why}; {self.rule.id}: "
                f"'{self.rule.effect}')")


def paged_context_fmha(eb: EngineBuild, entry: EngineStatus | None) -> bool:
    """Whether the engine has paged context FMHA: as its plugins record it, else as
    trtllm-build leaves the spec (off without context FMHA, with an int8 KV cache, and with an
    fp8 one unless the algorithm keeps FP8 context FMHA)."""
    if entry is not None and entry.plugins and "pagedContextFmha" in entry.plugins:
        return entry.plugins["pagedContextFmha"]
    b = eb.spec.build
    q = b.quantization
    return (b.plugins.context_fmha and b.plugins.paged_context_fmha and q.kv_cache != "int8"
            and (q.kv_cache != "fp8" or q.algo in FP8_FMHA_ALGOS))


def unhonoured(ed: EngineDeployment, eb: EngineBuild,
               entry: EngineStatus | None) -> list[Unhonoured]:
    """What trtllm-serve's options lose, or cannot have, on ``entry``'s TensorRT engine."""
    if ed.spec.server.kind != "trtllm-serve" or eb.spec.build.backend != "tensorrt":
        return []
    r, extra = ed.spec.server.runtime, eb.spec.build.extra_args
    args = {a.partition("=")[0] for a in ed.spec.server.args}
    paged = paged_context_fmha(eb, entry)
    logits = CONTEXT_LOGITS in extra
    reuse = r.enable_block_reuse is not False
    reuse_field = "server.runtime.enableBlockReuse" + ("" if r.enable_block_reuse else
                                                       " (unset: on)")
    found = []
    if (r.enable_chunked_prefill or "--enable_chunked_prefill" in args) and not paged:
        found.append(Unhonoured(rule("chunked_context_needs_paged_context_fmha"),
                                "server.runtime.enableChunkedPrefill",
                                "the engine has no paged context FMHA"))
    if reuse and not paged:
        found.append(Unhonoured(rule("reuse_needs_paged_context_fmha"), reuse_field,
                                "the engine has no paged context FMHA"))
    if reuse and logits:
        found.append(Unhonoured(rule("reuse_with_context_logits"), reuse_field,
                                f"the engine was built with {CONTEXT_LOGITS}"))
    if DRAFT_EXTERNAL in extra and not (reuse and paged and not logits):
        found.append(Unhonoured(rule("draft_external_needs_reuse"),
                                "server.runtime.enableBlockReuse",
                                f"the engine was built with {DRAFT_EXTERNAL}, and block reuse "
                                "is " + ("asked off" if not reuse else "turned off")))
    return found
