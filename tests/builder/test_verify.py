"""Verification of built engines and prepared checkpoints (real files, no GPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kiln.api import BuildSpec
from kiln.builder import checkpoint, verify
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.errors import VerifyFailed


def engine_dir(tmp_path: Path, tp: int, pp: int, ranks: int | None = None,
               quant: dict[str, Any] | None = None) -> Path:
    out = tmp_path / "engine"
    out.mkdir()
    config = {"version": "1.2.1", "pretrained_config": {
        "architecture": "LlamaForCausalLM",
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
        "quantization": quant or {"quant_algo": None, "kv_cache_quant_algo": None}},
        "build_config": {"max_batch_size": 2048}}
    (out / "config.json").write_text(json.dumps(config))
    for r in range(tp * pp if ranks is None else ranks):
        (out / f"rank{r}.engine").write_bytes(b"plan")
    return out


def test_complete_engine_passes(tmp_path: Path) -> None:
    spec = BuildSpec.model_validate({"parallelism": {"tensor": 2, "pipeline": 2}})
    assert verify.engine(engine_dir(tmp_path, 2, 2), spec)["version"] == "1.2.1"


def test_missing_rank_file_fails(tmp_path: Path) -> None:
    spec = BuildSpec.model_validate({"parallelism": {"tensor": 2}})
    with pytest.raises(VerifyFailed, match=r"rank0\.engine to rank1\.engine, found rank0"):
        verify.engine(engine_dir(tmp_path, 2, 1, ranks=1), spec)


def test_mapping_must_match_the_spec(tmp_path: Path) -> None:
    spec = BuildSpec.model_validate({"parallelism": {"tensor": 4}})
    with pytest.raises(VerifyFailed, match="mapping"):
        verify.engine(engine_dir(tmp_path, 2, 1), spec)


def test_quantization_must_match_the_spec(tmp_path: Path) -> None:
    spec = BuildSpec.model_validate({"quantization": {"algo": "fp8", "kvCache": "fp8"}})
    with pytest.raises(VerifyFailed, match="quant_algo is None, expected FP8"):
        verify.engine(engine_dir(tmp_path, 1, 1), spec)
    shutil.rmtree(tmp_path / "engine")
    good = engine_dir(tmp_path, 1, 1, quant={"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"})
    verify.engine(good, spec)


def test_prepared_checkpoint_must_hold_every_file(tmp_path: Path) -> None:
    source = checkpoints.write(tmp_path / "src")
    supported = checkpoint.PYTORCH_ARCHITECTURES
    expected = checkpoint.inspect(source, supported=supported, backend="pytorch")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    verify.prepared(copy, expected, supported)
    (copy / "generation_config.json").unlink()
    with pytest.raises(VerifyFailed, match=r"generation_config\.json"):
        verify.prepared(copy, expected, supported)


def test_the_plugins_the_engine_really_has_are_read_and_compared(tmp_path: Path) -> None:
    """int8 KV cache: trtllm-build turns paged context FMHA off ("Paged Context FMHA is
    disabled because it doesn't work with int8 kv cache currently.")."""
    out = engine_dir(tmp_path, 1, 1, quant={"quant_algo": None, "kv_cache_quant_algo": "INT8"})
    config = json.loads((out / "config.json").read_text())
    config["build_config"]["plugin_config"] = {
        "context_fmha": True, "use_paged_context_fmha": False, "use_fp8_context_fmha": False,
        "remove_input_padding": True, "multiple_profiles": False, "reduce_fusion": False,
        "gemm_plugin": None}
    (out / "config.json").write_text(json.dumps(config))
    spec = BuildSpec.model_validate({"quantization": {"kvCache": "int8"}})
    built = verify.built_plugins(verify.engine(out, spec))
    assert built == {"contextFmha": True, "pagedContextFmha": False, "fp8ContextFmha": False,
                     "removeInputPadding": True, "multipleProfiles": False,
                     "reduceFusion": False}
    assert verify.overridden(spec, built) == [
        "plugins.pagedContextFmha is True in the spec, but trtllm-build built the engine with "
        "use_paged_context_fmha=False"], "fp8ContextFmha was left to trtllm-build"
