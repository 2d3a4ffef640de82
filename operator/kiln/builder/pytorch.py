"""Backend ``pytorch``: the checkpoint ``trtllm-serve --backend pytorch`` serves, validated.

No compile: the Hugging Face checkpoint is checked (config, architecture, safetensors,
tokenizer) and laid out as the engine directory. Quantized variants are made with ModelOpt
(``quantize.py --export_format hf``), which needs a GPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kiln.builder import commands, toolchain, verify
from kiln.builder.checkpoint import PYTORCH_ARCHITECTURES, Checkpoint, inspect
from kiln.builder.commands import Paths
from kiln.builder.progress import say
from kiln.contract.task import BuildTask


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra space) or, across file systems, copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def quantized(task: BuildTask) -> bool:
    q = task.build.quantization
    return q.algo != "none" or q.kv_cache != "none"


def prepare(task: BuildTask, paths: Paths, *, examples: Path,
            calib_dataset: str | None) -> Checkpoint:
    """Fill ``paths.engine`` with the checkpoint to serve; returns the source checkpoint."""
    source = inspect(paths.weights, supported=PYTORCH_ARCHITECTURES, backend="pytorch")
    say(f"{source.architecture}: {len(source.weights)} safetensors file(s), "
        f"{source.tensor_count} tensors, tokenizer {source.tokenizer[0]}", phase="validate")
    if not quantized(task):
        for path in source.files:
            link_or_copy(path, paths.engine / path.name)
        verify.prepared(paths.engine, source, PYTORCH_ARCHITECTURES)
        return source
    toolchain.require_gpu(task.target.compute_capability,
                          f"quantization {task.build.quantization.algo} "
                          f"(kv cache {task.build.quantization.kv_cache})")
    out = Paths(paths.weights, paths.engine, paths.engine, paths.timing_cache)
    toolchain.run(commands.quantize_command(task.build, out, examples=examples,
                                            python=toolchain.tool_python(),
                                            calib_dataset=calib_dataset, export_format="hf"),
                  phase="quantize", cwd=paths.weights.parent)
    for name in [*source.tokenizer, "generation_config.json"]:
        if (paths.weights / name).is_file() and not (paths.engine / name).exists():
            link_or_copy(paths.weights / name, paths.engine / name)
    inspect(paths.engine, supported=PYTORCH_ARCHITECTURES, backend="pytorch")
    return source
