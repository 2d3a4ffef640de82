"""The artifact-set contract proven on a real GPU, with a runtime that runs here: a small Llama
under torch.compile (tests/builder/torch_runtime.py). kiln-builder's capture warms it up once
and keeps Inductor's and Triton's caches; the serving pods' placement (the version guard's
``place_artifacts``) restores them for a fresh process, which must reach its first token at
least three times sooner than a cold one; a set whose recorded driver or versions differ is
omitted, not loaded. Run on the device: ``pytest --noconftest tests/builder/test_aot_gpu.py``
(no cluster needed); skipped where there is no GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HAS_GPU = bool(shutil.which("nvidia-smi")) and subprocess.run(
    ["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0
HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "triton"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU (nvidia-smi finds none)"),
    pytest.mark.skipif(not HAS_TORCH, reason="needs torch, transformers and triton"),
]
LLAMA = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
         "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000,
         "max_position_embeddings": 2048}
SERVER = Path(__file__).with_name("torch_runtime.py")


def test_a_captured_set_restored_by_placement_starts_three_times_sooner(
        tmp_path: Path) -> None:
    from kiln.builder import aot
    from kiln.contract import version_guard
    from kiln.contract.warmup import CachePath, Warmup, WarmupShape
    from kiln.trtllm.aot import CACHE_VARS

    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps(LLAMA))
    torch_caches = [CachePath(name=v.name, path=v.path) for v in CACHE_VARS
                    if v.name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")]
    warmup = Warmup(runtime="torch-inductor",
                    command=[sys.executable, str(SERVER), "--engine", "{model}",
                             "--port", "{port}"],
                    cache=torch_caches, versioned={"torch": ["torch"], "triton": ["triton"]},
                    shapes=[WarmupShape(prompt_tokens=32, output_tokens=4, concurrency=2)],
                    start_timeout_seconds=900)
    env = {k: v for k, v in os.environ.items() if k not in {c.name for c in torch_caches}}

    report = aot.capture(warmup, engine, engine, tmp_path / "work", env)
    assert report.files > 0 and report.gpu_name and report.driver_version
    assert {"torch", "triton", "cuda"} <= set(report.versions)

    # a serving pod: the placement checks the set against this GPU, driver and image
    placed = tmp_path / "placed"
    state, said = version_guard.place_artifacts(engine, placed, None)
    assert state == "Placed", said
    warm = aot.start_to_first_token(warmup, engine, placed, tmp_path / "work", env,
                                    shapes=False)
    cold = report.cold_seconds  # a fresh process on empty caches, in the capture
    figures = {"capture_cold_s": report.cold_seconds, "capture_warm_s": report.warm_seconds,
               "placed_warm_s": round(warm, 2),
               "ratio": round(cold / warm, 2), "gpu": report.gpu_name,
               "driver": report.driver_version, "versions": report.versions,
               "artifact_files": report.files, "artifact_bytes": report.bytes}
    print("AOT-FIGURES " + json.dumps(figures), flush=True)
    if out := os.environ.get("OUT"):
        Path(out, "aot-figures.json").write_text(json.dumps(figures, indent=2))
    assert cold >= 3 * warm, figures

    # the same set recorded for another driver: omitted, the directory left empty
    recorded = json.loads((engine / "artifacts" / "report.json").read_text())
    (engine / "artifacts" / "report.json").write_text(
        json.dumps({**recorded, "driverVersion": "1.0"}))
    elsewhere = tmp_path / "elsewhere"
    state, said = version_guard.place_artifacts(engine, elsewhere, None)
    assert state == "Stale" and "driver" in said, said
    assert not elsewhere.exists() or not any(elsewhere.iterdir())
