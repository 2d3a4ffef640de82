"""The engine path for real: TensorRT-LLM converts and builds the tiny checkpoint on a GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from typing import Any

import pytest

from builder.support import Bed

HAS_GPU = bool(shutil.which("nvidia-smi")) and subprocess.run(
    ["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None and bool(
    shutil.which("trtllm-build"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU (nvidia-smi finds none)"),
    pytest.mark.skipif(not HAS_TRTLLM, reason="needs TensorRT-LLM <= 1.2.x with trtllm-build "
                                              "(run inside the builder image)"),
]


def _compute_capability() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_tensorrt_engine_builds_verifies_and_reuses_the_timing_cache(
        bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri, backend="tensorrt", dtype="float16", maxBatchSize=4,
                    maxInputLen=32, maxSeqLen=64, maxNumTokens=128)
    task = task.model_copy(update={"target": task.target.model_copy(
        update={"compute_capability": _compute_capability()})})
    run = bed.run(task)
    assert run.code == 0, run.log
    prefix = f"engines/{task.key}/"
    manifest: dict[str, Any] = json.loads(bed.s3.get_object(
        Bucket=bed.store_bucket, Key=prefix + "manifest.json")["Body"].read())
    assert {"rank0.engine", "config.json"} <= {f["path"] for f in manifest["files"]}
    assert manifest["versions"]["tensorrt_llm"].startswith(("0.", "1.0", "1.1", "1.2"))
    assert "phase=smoke generated=" in run.log
    assert any(k.startswith("timing-cache/") for k in bed.keys("timing-cache/"))
