"""Admission equals the toolchain: every catalogue GPU x backend x algo x kvCache (and the
plugin settings that depend on them) sent to the real apiserver (real CRD, real CEL); its
decision must equal the one the recorded refusal table (kiln.trtllm.refusals) gives, and a
refusal's message must name the GPU and the reason.

The PyTorch backend does not run trtllm-build: its rows are the support matrix's
(kiln.domain.catalogue), as are the tensorrt limits trtllm-build does not enforce itself
(``refusals.NOT_ENFORCED``: FP8 and W4A8 below 8.9, NVFP4 below 10.0).
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cluster.test_crds_admission import EB_BASE, crd_namespace  # noqa: F401 (a fixture)
from kiln import GROUP, VERSION
from kiln.api.engine_build import SM100_PLUGIN_ARGS
from kiln.domain import catalogue
from kiln.trtllm import refusals

pytestmark = pytest.mark.cluster

DOCUMENTED = {("algo", "fp8"): 89, ("algo", "w4a8_awq"): 89, ("algo", "nvfp4"): 100}
"""Lowest SM the support matrix gives (refusals.NOT_ENFORCED): kiln refuses below it."""


def sm(gpu: catalogue.GPU) -> int:
    return gpu.capability[0] * 10 + gpu.capability[1]


@dataclass
class Combo:
    gpu: catalogue.GPU
    backend: str
    algo: str
    kv: str
    plugins: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        body = copy.deepcopy(EB_BASE)
        body["spec"]["targets"] = [{"gpu": self.gpu.name}]
        build = body["spec"]["build"]
        build |= {"backend": self.backend,
                  "quantization": {"algo": self.algo, "kvCache": self.kv}}
        if self.plugins:
            build["plugins"] = self.plugins
        if self.extra_args:
            build["extraArgs"] = self.extra_args
        return body


def _settings(combo: Combo) -> dict[str, str]:
    """The plugin settings trtllm-build sees (rule conditions are written that way)."""
    p = combo.plugins
    out = {"use_paged_context_fmha": "enable" if p.get("pagedContextFmha", True) else "disable"}
    if "fp8ContextFmha" in p:
        out["use_fp8_context_fmha"] = "enable" if p["fp8ContextFmha"] else "disable"
    for arg in combo.extra_args:
        name, _, value = arg[2:].partition("=")
        out[name] = value
    return out


def _plugin_rule_applies(rule: refusals.Rule, combo: Combo) -> bool:
    settings = _settings(combo)
    for condition in (rule.plugin or "").split(","):
        if ">" in condition:  # name>N: an integer flag above N
            name, _, low = condition.partition(">")
            if int(settings.get(name) or 0) <= int(low):
                return False
            continue
        names, _, value = condition.partition("=")
        if not any(settings.get(n) == value if value else
                   settings.get(n, "disable") != "disable" for n in names.split("|")):
            return False
    return True


KILN_REFUSES = {"fp8_fmha_needs_fp8_algo", "fp8_fmha_needs_fp8_kv", "fp8_fmha_forced_on",
                "plugins_sm100", "context_logits_draft", "gemm_swiglu_needs_fused_mlp",
                "eagle_checkpoint"}
"""Plugin rules kiln refuses at admission: an explicit fp8ContextFmha trtllm-build would
silently flip, and PluginConfig.validate's SM 100 refusals. The paged context FMHA overrides are
reported instead (the engine's plugin_config, in status)."""


def expected(combo: Combo) -> tuple[bool, list[str]]:
    """(refused, texts a refusal's message must contain) from the refusal table."""
    cc = sm(combo.gpu)
    texts: list[str] = []
    if combo.backend == "pytorch":
        answer = catalogue.supports(combo.gpu, "pytorch", combo.algo,  # type: ignore[arg-type]
                                    combo.kv)  # type: ignore[arg-type]
        if not answer.ok:
            texts.append("backend pytorch")
            if catalogue.available("pytorch", combo.algo, combo.kv).ok:  # type: ignore[arg-type]
                texts.append(combo.gpu.name)
        return not answer.ok, texts
    for rule in refusals.refusals(combo.algo, combo.kv, cc):  # type: ignore[arg-type]
        texts += [combo.gpu.name, rule.effect]
    for (part, value), low in DOCUMENTED.items():
        if (combo.algo if part == "algo" else combo.kv) == value and cc < low:
            texts += [combo.gpu.name, f"{part} {value}" if part == "kvCache" else value]
    for rule in refusals.RULES:
        if rule.id in KILN_REFUSES and rule.applies(combo.algo, combo.kv, cc)  \
                and _plugin_rule_applies(rule, combo):  # type: ignore[arg-type]
            texts.append("fp8ContextFmha" if "fp8_fmha" in rule.id
                         else rule.effect.split(". ")[0] if rule.sm_min is None
                         else combo.gpu.name)
    return bool(texts), texts


def decide(api: client.CustomObjectsApi, namespace: str, combo: Combo) -> list[str] | None:
    """None when admitted, else the apiserver's messages."""
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "enginebuilds",
                                            combo.body(), dry_run="All",
                                            field_validation="Strict")
    except ApiException as e:
        if e.status != 422:
            raise
        body = json.loads(e.body)
        return [c.get("message", "") for c in body.get("details", {}).get("causes", [])] \
            or [body["message"]]
    return None


def run(kube: Any, namespace: str, combos: list[Combo]) -> list[str]:
    api = client.CustomObjectsApi(kube.api_client)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: decide(api, namespace, c), combos))
    wrong = []
    for combo, answer in zip(combos, answers, strict=True):
        refused, texts = expected(combo)
        what = (f"{combo.gpu.name} {combo.backend} {combo.algo}/{combo.kv} {combo.plugins} "
                f"{combo.extra_args}")
        if (answer is not None) != refused:
            wrong.append(f"{what}: apiserver {'refused' if answer else 'admitted'}, table "
                         f"{'refuses' if refused else 'admits'}: {answer}")
        elif answer is not None:
            text = "\n".join(answer)
            absent = [t for t in texts if t not in text]
            if absent:
                wrong.append(f"{what}: message lacks {absent}: {text}")
    return wrong


BASE = [Combo(g, b, a, k) for g in catalogue.GPUS for b in catalogue.BACKENDS
        for a in catalogue.QUANT_ALGOS for k in catalogue.KV_CACHE_QUANTS]
ONE_PER_CC = list({g.compute_capability: g for g in catalogue.GPUS}.values())
PLUGINS = [Combo(g, "tensorrt", a, k, {"fp8ContextFmha": fp8, "pagedContextFmha": paged})
           for g in ONE_PER_CC for a in catalogue.QUANT_ALGOS for k in catalogue.KV_CACHE_QUANTS
           for fp8 in (True, False) for paged in (True, False)]
EXTRA = [Combo(g, "tensorrt", "none", "none", extra_args=[f"--{flag}={value}"])
         for g in catalogue.GPUS for flag in SM100_PLUGIN_ARGS
         for value in (("fp8" if "gemm" in flag else "enable"), "disable")] + [
    Combo(g, "tensorrt", "none", "none", extra_args=args) for g in ONE_PER_CC
    for args in (["--gather_context_logits", "--max_draft_len=4"],
                 ["--max_draft_len=4"], ["--gather_context_logits"],
                 ["--low_latency_gemm_swiglu_plugin=fp8", "--use_fused_mlp=disable"],
                 ["--gemm_swiglu_plugin=disable", "--use_fused_mlp=disable"],
                 ["--speculative_decoding_mode=eagle"],
                 ["--speculative_decoding_mode=lookahead_decoding"])]


def test_the_matrix_covers_the_catalogue() -> None:
    assert len(BASE) == len(catalogue.GPUS) * 2 * 8 * 3
    assert {g.name for g in catalogue.GPUS} >= {"B300", "GB300", "L20", "RTX-6000-Ada",
                                                "RTX-A6000", "GH200-144GB"}
    assert sum(expected(c)[0] for c in BASE) > 100, "the matrix has refusals"


def test_gpu_backend_algo_kv_admission_equals_the_table(kube: Any,
                                                        crd_namespace: str) -> None:  # noqa: F811
    assert run(kube, crd_namespace, BASE) == []


def test_plugin_flags_admission_equals_the_table(kube: Any,
                                                 crd_namespace: str) -> None:  # noqa: F811
    assert run(kube, crd_namespace, PLUGINS) == []


def test_sm100_plugin_extra_args_admission_equals_the_table(
        kube: Any, crd_namespace: str) -> None:  # noqa: F811
    assert run(kube, crd_namespace, EXTRA) == []
