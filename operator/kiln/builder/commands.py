"""The TensorRT-LLM commands of the engine path, rendered from the spec (pure, testable).

Parallelism is fixed at conversion/quantization (``--tp_size``/``--pp_size``); trtllm-build
takes the limits and plugins, builds ranks in parallel with ``--workers`` when the Job has
several GPUs, and reads and writes the TensorRT timing cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kiln.api import BuildSpec
from kiln.builder.checkpoint import TENSORRT_FAMILIES
from kiln.errors import Unsupported
from kiln.trtllm import flags

DEFAULT_EXAMPLES = Path("/app/tensorrt_llm/examples")
"""Where the TensorRT-LLM release image keeps its examples (``convert_checkpoint.py``,
``quantization/quantize.py``)."""

QUANTIZE_FORMATS = frozenset({"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"})
"""Algorithms that need ModelOpt calibration (``quantize.py --qformat``)."""
CALIBRATION_DIR = "calibration"
"""Where the builder puts ``spec.build.quantization.calibration`` in the work directory. Its
name must not contain ``cnn_dailymail`` or ``scienceqa``: quantize_by_modelopt.py matches
those substrings before it treats the value as a local directory."""
WEIGHT_ONLY = {"int8_wo": "int8", "int4_wo": "int4"}
"""Weight-only algorithms ``convert_checkpoint.py`` does without calibration."""


@dataclass(frozen=True)
class Paths:
    """Directories and files of one build, inside the work directory."""

    weights: Path
    """The downloaded Hugging Face checkpoint."""
    checkpoint: Path
    """The TensorRT-LLM checkpoint (``config.json`` + ``rank{N}.safetensors``)."""
    engine: Path
    """The engine directory that is uploaded."""
    timing_cache: Path

    @classmethod
    def under(cls, workdir: Path) -> Paths:
        return cls(weights=workdir / "weights", checkpoint=workdir / "checkpoint",
                   engine=workdir / "engine", timing_cache=workdir / "timing.cache")


def world_size(spec: BuildSpec) -> int:
    return spec.parallelism.tensor * spec.parallelism.pipeline


def needs_quantize(spec: BuildSpec) -> bool:
    """Whether the checkpoint comes from ``quantize.py`` rather than ``convert_checkpoint.py``."""
    return spec.quantization.algo in QUANTIZE_FORMATS or spec.quantization.kv_cache != "none"


def _parallel(spec: BuildSpec) -> list[str]:
    return ["--tp_size", str(spec.parallelism.tensor),
            "--pp_size", str(spec.parallelism.pipeline)]


def _calibration(calib_dataset: str | None, samples: int | None, dataset_flag: str,
                 size_flag: str = "--calib_size") -> list[str]:
    out = [dataset_flag, calib_dataset] if calib_dataset else []
    return out + ([size_flag, str(samples)] if samples else [])


def quantize_command(spec: BuildSpec, paths: Paths, *, examples: Path = DEFAULT_EXAMPLES,
                     python: str = "python3", calib_dataset: str | None = None) -> list[str]:
    """``quantize.py``: ModelOpt calibration into a TensorRT-LLM checkpoint."""
    algo = spec.quantization.algo
    qformat = "full_prec" if algo == "none" else algo
    cmd = [python, str(examples / "quantization" / "quantize.py"),
           "--model_dir", str(paths.weights), "--output_dir", str(paths.checkpoint),
           "--dtype", spec.dtype, "--qformat", qformat]
    if spec.quantization.kv_cache != "none":
        cmd += ["--kv_cache_dtype", spec.quantization.kv_cache]
    cmd += _parallel(spec)
    calibration = spec.quantization.calibration
    return cmd + _calibration(calib_dataset, calibration.samples if calibration else None,
                              "--calib_dataset")


def hf_script(script: flags.Command, examples: Path, modelopt_examples: Path | None) -> Path:
    """Where ``script`` is: ModelOpt's ``hf_ptq.py`` under its examples, the others under
    TensorRT-LLM's ``examples/quantization/``."""
    if script is flags.HF_PTQ:
        if modelopt_examples is None:
            raise Unsupported("hf_ptq.py needs ModelOpt's examples directory "
                              "(KILN_MODELOPT_EXAMPLES)")
        return modelopt_examples / flags.HF_PTQ_DIR / script.program
    return examples / "quantization" / script.program


def hf_quantize_command(spec: BuildSpec, script: flags.Command, source: Path, out: Path, *,
                        examples: Path = DEFAULT_EXAMPLES, python: str = "python3",
                        modelopt_examples: Path | None = None) -> list[str]:
    """An HF-export ModelOpt script (``flags.HF_EXPORT_SCRIPTS``): the quantized Hugging Face
    checkpoint the PyTorch backend loads. The KV cache is given explicitly: the scripts'
    defaults quantize it to fp8. No ``--dataset``: ModelOpt takes only its named Hub datasets
    there (``flags.MODELOPT_DATASETS_ONLY_NAMED``), so admission refuses calibration data."""
    q = spec.quantization
    cmd = [python, str(hf_script(script, examples, modelopt_examples)),
           "--pyt_ckpt_path", str(source), "--export_path", str(out), "--qformat", q.algo]
    kv_fp8 = q.kv_cache == "fp8"
    if script is flags.HF_PTQ:
        cmd += ["--kv_cache_qformat", q.kv_cache, "--export_fmt", "hf"]
    elif script is flags.QUANTIZE_HF_TO_HF:
        cmd += ["--kv_cache_qformat", q.kv_cache]
    elif script is flags.QUANTIZE_WITH_MODELOPT:
        cmd += ["--export_fmt", "hf", "--disable_kv_cache_quant", "False" if kv_fp8 else "True"]
    else:
        raise Unsupported(f"{script.program} is not an HF-export script kiln knows")
    return cmd


def convert_command(spec: BuildSpec, architecture: str, paths: Paths, *,
                    examples: Path = DEFAULT_EXAMPLES, python: str = "python3") -> list[str]:
    """``convert_checkpoint.py`` of the model family (no calibration)."""
    family = TENSORRT_FAMILIES.get(architecture)
    if family is None:
        raise Unsupported(f"architecture {architecture} has no convert_checkpoint.py kiln "
                          "knows; supported: " + ", ".join(sorted(TENSORRT_FAMILIES)))
    cmd = [python, str(examples / "models" / "core" / family / "convert_checkpoint.py"),
           "--model_dir", str(paths.weights), "--output_dir", str(paths.checkpoint),
           "--dtype", spec.dtype, *_parallel(spec)]
    precision = WEIGHT_ONLY.get(spec.quantization.algo)
    if precision:
        cmd += ["--use_weight_only", "--weight_only_precision", precision]
    return cmd


def checkpoint_command(spec: BuildSpec, architecture: str, paths: Paths, *,
                       examples: Path = DEFAULT_EXAMPLES, python: str = "python3",
                       calib_dataset: str | None = None) -> list[str]:
    """Hugging Face checkpoint → TensorRT-LLM checkpoint: quantization or plain conversion."""
    if needs_quantize(spec):
        return quantize_command(spec, paths, examples=examples, python=python,
                                calib_dataset=calib_dataset)
    return convert_command(spec, architecture, paths, examples=examples, python=python)


def _switch(on: bool) -> str:
    return "enable" if on else "disable"


def build_command(spec: BuildSpec, paths: Paths, *, timing_cache_exists: bool,
                  workers: int | None = None) -> list[str]:
    """``trtllm-build`` for the checkpoint in ``paths.checkpoint``."""
    p = spec.plugins
    gemm = ["--gemm_plugin", p.gemm] if p.gemm else []
    fp8_fmha = ([] if p.fp8_context_fmha is None
                else ["--use_fp8_context_fmha", _switch(p.fp8_context_fmha)])
    cmd = ["trtllm-build",
           "--checkpoint_dir", str(paths.checkpoint), "--output_dir", str(paths.engine),
           "--max_batch_size", str(spec.max_batch_size),
           "--max_input_len", str(spec.max_input_len)]
    if spec.max_seq_len is not None:
        cmd += ["--max_seq_len", str(spec.max_seq_len)]
    cmd += ["--max_num_tokens", str(spec.max_num_tokens),
            "--gpt_attention_plugin", p.gpt_attention, *gemm,
            "--context_fmha", _switch(p.context_fmha),
            "--kv_cache_type", "paged" if p.paged_kv_cache else "continuous",
            "--use_paged_context_fmha", _switch(p.paged_context_fmha), *fp8_fmha,
            "--remove_input_padding", _switch(p.remove_input_padding),
            "--multiple_profiles", _switch(p.multiple_profiles),
            "--reduce_fusion", _switch(p.reduce_fusion)]
    workers = world_size(spec) if workers is None else workers
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if timing_cache_exists:
        cmd += ["--input_timing_cache", str(paths.timing_cache)]
    cmd += ["--output_timing_cache", str(paths.timing_cache), *spec.extra_args]
    return cmd


def timing_cache_blob(gpu_product: str, tensorrt_version: str, namespace: str = "") -> str:
    """Store blob name of the timing cache for one GPU product and TensorRT version, of the
    builds that run in ``namespace`` (empty: the platform's build namespace): a tenant's
    build, whose pod the tenant can exec into, never writes tactics another tenant's build
    reads (issue 24)."""
    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"
    where = f"namespace/{slug(namespace)}" if namespace else "platform"
    return f"timing-cache/{where}/{slug(gpu_product)}/tensorrt-{slug(tensorrt_version)}.cache"
