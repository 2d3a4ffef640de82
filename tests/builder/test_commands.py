"""The engine path's commands, pinned as golden values for a matrix of specs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from kiln.api import BuildSpec
from kiln.builder import commands
from kiln.builder.commands import Paths
from kiln.errors import Unsupported
from kiln.trtllm import flags
from kiln.trtllm.flags import check_command

PATHS = Paths.under(Path("/work"))
EX = "/app/tensorrt_llm/examples"
PLUGINS = ("--gpt_attention_plugin auto --context_fmha enable --kv_cache_type paged "
           "--use_paged_context_fmha enable --remove_input_padding enable "
           "--multiple_profiles disable --reduce_fusion disable")
"""Upstream's defaults are kiln's: no --gemm_plugin, no --use_fp8_context_fmha unless set."""
LIMITS = "--max_batch_size 2048 --max_input_len 1024 --max_num_tokens 8192"
BUILD = "trtllm-build --checkpoint_dir /work/checkpoint --output_dir /work/engine"
CACHE = "--output_timing_cache /work/timing.cache"

MATRIX: dict[str, tuple[dict[str, Any], bool, str, str]] = {
    "bf16": (
        {"dtype": "bfloat16"}, False,
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype bfloat16 --tp_size 1 --pp_size 1",
        f"{BUILD} {LIMITS} {PLUGINS} {CACHE}",
    ),
    "fp8-kv-fp8": (
        {"dtype": "bfloat16", "quantization": {"algo": "fp8", "kvCache": "fp8"},
         "maxBatchSize": 256, "maxInputLen": 8192, "maxSeqLen": 16384, "maxNumTokens": 16384,
         "plugins": {"gemm": "fp8", "fp8ContextFmha": True}}, True,
        f"python3 {EX}/quantization/quantize.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype bfloat16 --qformat fp8 --kv_cache_dtype fp8 "
        "--tp_size 1 --pp_size 1",
        f"{BUILD} --max_batch_size 256 --max_input_len 8192 --max_seq_len 16384 "
        "--max_num_tokens 16384 --gpt_attention_plugin auto --gemm_plugin fp8 "
        "--context_fmha enable --kv_cache_type paged --use_paged_context_fmha enable "
        "--use_fp8_context_fmha enable --remove_input_padding enable "
        "--multiple_profiles disable --reduce_fusion disable "
        f"--input_timing_cache /work/timing.cache {CACHE}",
    ),
    "int4-awq": (
        {"dtype": "float16", "quantization": {"algo": "int4_awq"}, "maxBatchSize": 64}, False,
        f"python3 {EX}/quantization/quantize.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype float16 --qformat int4_awq "
        "--tp_size 1 --pp_size 1",
        f"{BUILD} --max_batch_size 64 --max_input_len 1024 --max_num_tokens 8192 {PLUGINS} "
        f"{CACHE}",
    ),
    "nvfp4-b200": (
        {"dtype": "bfloat16", "quantization": {"algo": "nvfp4", "kvCache": "fp8",
                                               "calibration": {"dataset": "s3://calib/cnn/",
                                                               "samples": 256}}}, False,
        f"python3 {EX}/quantization/quantize.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype bfloat16 --qformat nvfp4 --kv_cache_dtype fp8 "
        "--tp_size 1 --pp_size 1 --calib_dataset /work/calibration --calib_size 256",
        f"{BUILD} {LIMITS} {PLUGINS} {CACHE}",
    ),
    "tp2": (
        {"dtype": "bfloat16", "parallelism": {"tensor": 2}}, True,
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype bfloat16 --tp_size 2 --pp_size 1",
        f"{BUILD} {LIMITS} {PLUGINS} --workers 2 --input_timing_cache /work/timing.cache "
        f"{CACHE}",
    ),
    "tp2-pp2": (
        {"dtype": "bfloat16", "parallelism": {"tensor": 2, "pipeline": 2},
         "maxSeqLen": 4096, "plugins": {"multipleProfiles": True, "reduceFusion": True},
         "extraArgs": ["--log_level=verbose", "--monitor_memory"]}, False,
        f"python3 {EX}/models/core/llama/convert_checkpoint.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype bfloat16 --tp_size 2 --pp_size 2",
        f"{BUILD} --max_batch_size 2048 --max_input_len 1024 --max_seq_len 4096 "
        "--max_num_tokens 8192 --gpt_attention_plugin auto --context_fmha enable "
        "--kv_cache_type paged --use_paged_context_fmha enable --remove_input_padding enable "
        "--multiple_profiles enable --reduce_fusion enable --workers 4 "
        f"{CACHE} --log_level=verbose --monitor_memory",
    ),
}
CALIB = "/work/calibration"


def _table(cmd: list[str]) -> flags.Command:
    name = Path(cmd[1]).name if cmd[0] == "python3" else cmd[0]
    return next(c for c in flags.COMMANDS if c.program == name)


@pytest.mark.parametrize("name", MATRIX)
def test_engine_path_commands_are_pinned(name: str) -> None:
    raw, cache, checkpoint, build = MATRIX[name]
    spec = BuildSpec.model_validate(raw)
    calib = CALIB if spec.quantization.calibration else None
    convert = commands.checkpoint_command(spec, "LlamaForCausalLM", PATHS, calib_dataset=calib)
    engine = commands.build_command(spec, PATHS, timing_cache_exists=cache)
    assert shlex.join(convert) == checkpoint
    assert shlex.join(engine) == build
    check_command(convert, _table(convert))
    check_command(engine, flags.TRTLLM_BUILD)


def test_weight_only_uses_convert_checkpoint_and_kv_only_uses_quantize() -> None:
    wo = BuildSpec.model_validate({"quantization": {"algo": "int8_wo"}})
    assert shlex.join(commands.checkpoint_command(wo, "Qwen2ForCausalLM", PATHS)) == (
        f"python3 {EX}/models/core/qwen/convert_checkpoint.py --model_dir /work/weights "
        "--output_dir /work/checkpoint --dtype auto --tp_size 1 --pp_size 1 "
        "--use_weight_only --weight_only_precision int8")
    kv = BuildSpec.model_validate({"quantization": {"kvCache": "int8"}})
    cmd = commands.checkpoint_command(kv, "LlamaForCausalLM", PATHS, calib_dataset="/data/c")
    assert cmd[cmd.index("--qformat") + 1] == "full_prec"
    assert cmd[cmd.index("--kv_cache_dtype") + 1] == "int8"
    assert cmd[-2:] == ["--calib_dataset", "/data/c"]


PYTORCH: dict[str, tuple[dict[str, Any], flags.Command, str]] = {
    "pytorch-fp8-hf-ptq": (
        {"quantization": {"algo": "fp8"}}, flags.HF_PTQ,
        "python3 /modelopt/examples/llm_ptq/hf_ptq.py --pyt_ckpt_path /work/weights "
        "--export_path /work/engine --qformat fp8 --kv_cache_qformat none --export_fmt hf"),
    "pytorch-nvfp4-kv-fp8-hf-ptq": (
        {"quantization": {"algo": "nvfp4", "kvCache": "fp8"}}, flags.HF_PTQ,
        "python3 /modelopt/examples/llm_ptq/hf_ptq.py --pyt_ckpt_path /work/weights "
        "--export_path /work/engine --qformat nvfp4 --kv_cache_qformat fp8 --export_fmt hf"),
    "pytorch-fp8-hf-to-hf": (
        {"quantization": {"algo": "fp8"}}, flags.QUANTIZE_HF_TO_HF,
        f"python3 {EX}/quantization/quantize_hf_to_hf.py --pyt_ckpt_path /work/weights "
        "--export_path /work/engine --qformat fp8 --kv_cache_qformat none"),
    "pytorch-fp8-kv-fp8-with-modelopt": (
        {"quantization": {"algo": "fp8", "kvCache": "fp8"}}, flags.QUANTIZE_WITH_MODELOPT,
        f"python3 {EX}/quantization/quantize_with_modelopt.py --pyt_ckpt_path /work/weights "
        "--export_path /work/engine --qformat fp8 --export_fmt hf --disable_kv_cache_quant "
        "False"),
}
"""No --dataset: ModelOpt's get_dataset_dataloader takes only SUPPORTED_DATASET_CONFIG names
(a directory raises NotImplementedError), so backend pytorch is calibrated on the default."""


@pytest.mark.parametrize("name", PYTORCH)
def test_pytorch_quantization_exports_a_hugging_face_checkpoint(name: str) -> None:
    raw, script, golden = PYTORCH[name]
    spec = BuildSpec.model_validate({"backend": "pytorch", **raw})
    cmd = commands.hf_quantize_command(spec, script, PATHS.weights, PATHS.engine,
                                       modelopt_examples=Path("/modelopt/examples"))
    assert shlex.join(cmd) == golden
    check_command(cmd, script)
    assert "--tp_size" not in cmd, "the PyTorch backend shards at load time"


def test_pytorch_never_passes_a_calibration_directory() -> None:
    """Even with an operator default (KILN_CALIB_DATASET, a directory for quantize.py), the
    HF-export scripts get no --dataset: ModelOpt would refuse the path."""
    spec = BuildSpec.model_validate({"backend": "pytorch", "quantization": {"algo": "fp8"}})
    for script in flags.HF_EXPORT_SCRIPTS:
        cmd = commands.hf_quantize_command(spec, script, PATHS.weights, PATHS.engine,
                                           modelopt_examples=Path("/modelopt/examples"))
        assert "--dataset" not in cmd and "--calib_size" not in cmd
    assert flags.MODELOPT_DATASETS_ONLY_NAMED


def test_unknown_family_is_unsupported() -> None:
    with pytest.raises(Unsupported) as e:
        commands.convert_command(BuildSpec(), "GPTNeoXForCausalLM", PATHS)
    assert e.value.reason == "Unsupported"


def test_timing_cache_blob_is_per_product_and_tensorrt_version() -> None:
    assert commands.timing_cache_blob("NVIDIA H100 80GB HBM3", "10.14.1.48") == (
        "timing-cache/platform/NVIDIA-H100-80GB-HBM3/tensorrt-10.14.1.48.cache")
    assert commands.timing_cache_blob("NVIDIA H100 80GB HBM3", "10.14.1.48", "team-a") == (
        "timing-cache/namespace/team-a/NVIDIA-H100-80GB-HBM3/tensorrt-10.14.1.48.cache")
    assert (commands.timing_cache_blob("NVIDIA-A100-SXM4-80GB", "10.14.1")
            != commands.timing_cache_blob("NVIDIA-A100-SXM4-80GB", "10.13.3"))
