"""Backend ``pytorch``: the checkpoint ``trtllm-serve --backend pytorch`` serves, validated.

No compile: the Hugging Face checkpoint is checked (config, architecture, safetensors,
tokenizer) and laid out as the engine directory. Quantized variants are made with ModelOpt's
``export_hf_checkpoint`` through the HF-export script the image has (asked with ``--help``
before a GPU-hour is spent): ModelOpt's documented ``hf_ptq.py`` under
``$KILN_MODELOPT_EXAMPLES`` first, else TensorRT-LLM's own scripts; it needs a GPU. A
KV-cache-only fp8 request is not quantized here: the server sets ``kv_cache_config.dtype`` at
run time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kiln.builder import commands, toolchain, verify
from kiln.builder.checkpoint import PYTORCH_ARCHITECTURES, Checkpoint, inspect
from kiln.builder.commands import Paths
from kiln.builder.progress import say
from kiln.contract.env import MODELOPT_EXAMPLES
from kiln.contract.task import BuildTask
from kiln.errors import Unsupported
from kiln.trtllm import flags


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra space) or, across file systems, copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def quantized(task: BuildTask) -> bool:
    """Whether the checkpoint is re-quantized (the KV cache alone is a runtime option)."""
    return task.build.quantization.algo != "none"


def modelopt_examples() -> Path | None:
    """ModelOpt's examples directory in this image (``$KILN_MODELOPT_EXAMPLES``), if set."""
    found = os.environ.get(MODELOPT_EXAMPLES)
    return Path(found) if found else None


def entry_point(task: BuildTask, examples: Path, python: str) -> flags.Command:
    """The first HF-export script of ``flags.HF_EXPORT_SCRIPTS`` this image has, with every
    flag kiln passes in its ``--help``; Unsupported naming what is missing otherwise."""
    if task.build.quantization.calibration is not None:
        raise Unsupported("quantization.calibration cannot be used with backend pytorch: "
                          "ModelOpt's HF-export scripts calibrate only on its named Hub "
                          "datasets (SUPPORTED_DATASET_CONFIG), not on a directory")
    why = []
    modelopt = modelopt_examples()
    for script in flags.HF_EXPORT_SCRIPTS:
        if script is flags.HF_PTQ and modelopt is None:
            why.append(f"{script.program}: {MODELOPT_EXAMPLES} is not set")
            continue
        path = commands.hf_script(script, examples, modelopt)
        cmd = commands.hf_quantize_command(task.build, script, Path("in"), Path("out"),
                                           examples=examples, python=python,
                                           modelopt_examples=modelopt)
        if not path.is_file():
            why.append(f"{path} is missing")
            continue
        listed = toolchain.help_flags([python, str(path)])
        if listed is None:
            why.append(f"{path} --help failed")
            continue
        missing = sorted({a for a in cmd if a.startswith("--")} - listed)
        if missing:
            why.append(f"{script.program} lacks {', '.join(missing)}")
            continue
        return script
    raise Unsupported(f"this builder image cannot quantize {task.build.quantization.algo} for "
                      "the PyTorch backend: no HF-export ModelOpt script takes kiln's flags ("
                      + "; ".join(why) + "). Use an image with ModelOpt's examples "
                      f"(${MODELOPT_EXAMPLES}) or TensorRT-LLM's examples/quantization, or "
                      "backend tensorrt")


def prepare(task: BuildTask, paths: Paths, *, examples: Path) -> Checkpoint:
    """Fill ``paths.engine`` with the checkpoint to serve; returns the source checkpoint.
    Calibration runs on the scripts' default dataset (cnn_dailymail from the Hub): ModelOpt's
    ``get_dataset_dataloader`` takes no directory, so the operator's default
    (``KILN_CALIB_DATASET``, a directory for quantize.py) is not passed either."""
    source = inspect(paths.weights, supported=PYTORCH_ARCHITECTURES, backend="pytorch")
    say(f"{source.architecture}: {len(source.weights)} safetensors file(s), "
        f"{source.tensor_count} tensors, tokenizer {source.tokenizer[0]}", phase="validate")
    if not quantized(task):
        for path in source.files:
            link_or_copy(path, paths.engine / path.name)
        verify.prepared(paths.engine, source, PYTORCH_ARCHITECTURES)
        return source
    python = toolchain.tool_python()
    script = entry_point(task, examples, python)
    toolchain.require_gpu(task.target.compute_capability,
                          f"quantization {task.build.quantization.algo} "
                          f"(kv cache {task.build.quantization.kv_cache})")
    toolchain.run(commands.hf_quantize_command(task.build, script, paths.weights, paths.engine,
                                               examples=examples, python=python,
                                               modelopt_examples=modelopt_examples()),
                  phase="quantize", cwd=paths.weights.parent)
    for name in [*source.tokenizer, "generation_config.json"]:
        if (paths.weights / name).is_file() and not (paths.engine / name).exists():
            link_or_copy(paths.weights / name, paths.engine / name)
    inspect(paths.engine, supported=PYTORCH_ARCHITECTURES, backend="pytorch")
    return source
