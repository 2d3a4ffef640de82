"""Backend ``tensorrt``: checkpoint conversion or quantization, then ``trtllm-build``.

The TensorRT timing cache is kept in the store per GPU product and TensorRT version, read
before the build and written back when the build extended it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from kiln.builder import commands, toolchain, verify
from kiln.builder.checkpoint import TENSORRT_FAMILIES, Checkpoint, inspect
from kiln.builder.commands import Paths
from kiln.builder.progress import human, say
from kiln.builder.pytorch import link_or_copy
from kiln.contract.manifest import TOKENIZER_SUBDIR
from kiln.contract.task import BuildTask
from kiln.errors import KilnError


class Blobs(Protocol):
    def get_blob(self, name: str) -> bytes | None: ...

    def put_blob(self, name: str, data: bytes) -> Any: ...


def timing_cache_blob(task: BuildTask, tensorrt_version: str) -> str:
    """The timing cache this build reads and writes: that of builds in the namespace its key
    names (``origin``'s ``namespace``; none: the platform's build namespace)."""
    return commands.timing_cache_blob(task.target.gpu_product, tensorrt_version,
                                      task.origin.get("namespace", ""))


def load_timing_cache(store: Blobs, blob: str | None, path: Path) -> bytes | None:
    if blob is None:
        return None
    try:
        data = store.get_blob(blob)
    except KilnError as e:
        say(f"timing cache not read ({e.reason}: {e.message}); building without it",
            phase="timing-cache")
        return None
    if data:
        path.write_bytes(data)
        say(f"reusing {blob} ({human(len(data))})", phase="timing-cache")
        return data
    say(f"no {blob} yet; this build starts it", phase="timing-cache")
    return None


def save_timing_cache(store: Blobs, blob: str | None, path: Path, before: bytes | None) -> None:
    if blob is None or not path.is_file():
        return
    data = path.read_bytes()
    if data == before:
        return
    try:
        store.put_blob(blob, data)
        say(f"saved {blob} ({human(len(data))})", phase="timing-cache")
    except KilnError as e:
        say(f"timing cache not saved ({e.reason}: {e.message})", phase="timing-cache")


def build(task: BuildTask, paths: Paths, store: Blobs, versions: dict[str, str], *,
          examples: Path, calib_dataset: str | None) -> tuple[Checkpoint, dict[str, bool]]:
    """Convert (or quantize) and build into ``paths.engine``; returns the source checkpoint
    and the plugin features the engine really has."""
    source = inspect(paths.weights, supported=TENSORRT_FAMILIES, backend="tensorrt")
    say(f"{source.architecture}: {len(source.weights)} safetensors file(s), "
        f"{source.tensor_count} tensors", phase="validate")
    toolchain.require_engine_toolchain(examples)
    gpus = toolchain.require_gpu(task.target.compute_capability, "trtllm-build")
    spec = task.build
    step = "quantize" if commands.needs_quantize(spec) else "convert"
    toolchain.run(commands.checkpoint_command(spec, source.architecture, paths,
                                              examples=examples, python=toolchain.tool_python(),
                                              calib_dataset=calib_dataset),
                  phase=step, cwd=paths.weights.parent)
    trt = versions.get("tensorrt")
    blob = timing_cache_blob(task, trt) if trt else None
    before = load_timing_cache(store, blob, paths.timing_cache)
    workers = min(commands.world_size(spec), len(gpus))
    toolchain.run(commands.build_command(spec, paths, timing_cache_exists=before is not None,
                                         workers=workers),
                  phase="trtllm-build", cwd=paths.weights.parent)
    save_timing_cache(store, blob, paths.timing_cache, before)
    built = verify.built_plugins(verify.engine(paths.engine, spec))
    for change in verify.overridden(spec, built):
        say(change, phase="verify", warning="plugin-overridden")
    for name in [*source.tokenizer, "generation_config.json", "config.json"]:
        if (paths.weights / name).is_file():
            link_or_copy(paths.weights / name, paths.engine / TOKENIZER_SUBDIR / name)
    return source, built
