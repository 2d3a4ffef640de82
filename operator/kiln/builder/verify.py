"""Checks on a build's result before it is uploaded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kiln.api import BuildSpec
from kiln.builder.checkpoint import Checkpoint, inspect
from kiln.errors import VerifyFailed

QUANT_ALGOS = {"fp8": "FP8", "int4_awq": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ",
               "int8_wo": "W8A16", "int4_wo": "W4A16", "nvfp4": "NVFP4"}
"""``pretrained_config.quantization.quant_algo`` an engine of each algorithm records
(SmoothQuant records one of several ``W8A8_SQ_*`` variants)."""
KV_ALGOS = {"fp8": "FP8", "int8": "INT8"}
PLUGIN_FEATURES = {"contextFmha": "context_fmha", "pagedContextFmha": "use_paged_context_fmha",
                   "fp8ContextFmha": "use_fp8_context_fmha",
                   "removeInputPadding": "remove_input_padding",
                   "multipleProfiles": "multiple_profiles", "reduceFusion": "reduce_fusion"}
"""``Plugins`` fields → their boolean ``PluginConfig`` field (tensorrt_llm/plugin/plugin.py
@c20322f), as the engine's ``config.json`` records it under ``build_config.plugin_config``."""
_RANK = re.compile(r"^rank(\d+)\.engine$")


def _engine_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise VerifyFailed("trtllm-build left no config.json in the engine directory") from None
    except ValueError as e:
        raise VerifyFailed(f"the engine's config.json is not JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("pretrained_config"), dict):
        raise VerifyFailed("the engine's config.json has no pretrained_config")
    return config


def engine(directory: Path, spec: BuildSpec) -> dict[str, Any]:
    """Check an engine directory against the spec: one ``rank{N}.engine`` per rank of
    tensor x pipeline, the mapping and limits in ``config.json``. Returns the config."""
    config = _engine_config(directory)
    pretrained = config["pretrained_config"]
    mapping = pretrained.get("mapping") or {}
    tp, pp = spec.parallelism.tensor, spec.parallelism.pipeline
    seen = (mapping.get("tp_size"), mapping.get("pp_size"), mapping.get("world_size"))
    if seen != (tp, pp, tp * pp):
        raise VerifyFailed(f"the engine's mapping (tp, pp, world) is {seen}, the spec asks "
                           f"for {(tp, pp, tp * pp)}")
    ranks = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _RANK.match(p.name)))
    if ranks != list(range(tp * pp)):
        raise VerifyFailed(f"expected rank0.engine to rank{tp * pp - 1}.engine, found "
                           + (", ".join(f"rank{r}.engine" for r in ranks) or "none"))
    empty = [f"rank{r}.engine" for r in ranks
             if (directory / f"rank{r}.engine").stat().st_size == 0]
    if empty:
        raise VerifyFailed(f"empty engine files: {', '.join(empty)}")
    build = config.get("build_config") or {}
    if build.get("max_batch_size") not in (None, spec.max_batch_size):
        raise VerifyFailed(f"the engine's max_batch_size is {build['max_batch_size']}, the "
                           f"spec asks for {spec.max_batch_size}")
    quant = pretrained.get("quantization") or {}
    want = QUANT_ALGOS.get(spec.quantization.algo)
    if want and quant.get("quant_algo") != want:
        raise VerifyFailed(f"the engine's quant_algo is {quant.get('quant_algo')}, expected "
                           f"{want} for {spec.quantization.algo}")
    want_kv = KV_ALGOS.get(spec.quantization.kv_cache)
    if want_kv and quant.get("kv_cache_quant_algo") != want_kv:
        raise VerifyFailed(f"the engine's kv_cache_quant_algo is "
                           f"{quant.get('kv_cache_quant_algo')}, expected {want_kv}")
    return config


def built_plugins(config: dict[str, Any]) -> dict[str, bool]:
    """The boolean plugin features an engine's ``config.json`` records (those present)."""
    plugin_config = (config.get("build_config") or {}).get("plugin_config") or {}
    return {field: bool(plugin_config[name]) for field, name in PLUGIN_FEATURES.items()
            if isinstance(plugin_config.get(name), bool)}


def overridden(spec: BuildSpec, built: dict[str, bool]) -> list[str]:
    """What the engine has other than the spec asked (a field left unset asks nothing)."""
    asked = spec.plugins.model_dump(by_alias=True)
    return [f"plugins.{field} is {asked[field]} in the spec, but trtllm-build built the engine "
            f"with {PLUGIN_FEATURES[field]}={value}"
            for field, value in built.items()
            if asked.get(field) is not None and asked[field] != value]


def prepared(directory: Path, expected: Checkpoint,
             supported: frozenset[str] | set[str] | dict[str, str]) -> Checkpoint:
    """Check a prepared PyTorch-backend checkpoint: valid on its own and holding every file
    and tensor of the checkpoint it was prepared from."""
    result = inspect(directory, supported=supported, backend="pytorch")
    missing = sorted({p.name for p in expected.files} - {p.name for p in result.files})
    if missing:
        raise VerifyFailed("the prepared checkpoint lacks " + ", ".join(missing))
    if result.tensor_count != expected.tensor_count:
        raise VerifyFailed(f"the prepared checkpoint holds {result.tensor_count} tensors, "
                           f"the source {expected.tensor_count}")
    return result
