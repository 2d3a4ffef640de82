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


def _this_gpu() -> tuple[str, str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    name, cc = out.splitlines()[0].split(",")
    return name.strip().replace(" ", "-"), cc.strip()


def test_tensorrt_engine_builds_verifies_and_reuses_the_timing_cache(
        bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri, gpu=_this_gpu(), backend="tensorrt", dtype="float16", maxBatchSize=4,
                    maxInputLen=32, maxSeqLen=64, maxNumTokens=128)
    run = bed.run(task)
    assert run.code == 0, run.log
    prefix = f"engines/{task.key}/"
    manifest: dict[str, Any] = json.loads(bed.s3.get_object(
        Bucket=bed.store_bucket, Key=prefix + "manifest.json")["Body"].read())
    assert {"rank0.engine", "config.json"} <= {f["path"] for f in manifest["files"]}
    assert manifest["versions"]["tensorrt_llm"].startswith(("0.", "1.0", "1.1", "1.2"))
    assert "phase=smoke generated=" in run.log
    assert bed.keys("cache/timing-cache/"), "the timing cache was saved for the next build"
    again = bed.task(uri, gpu=_this_gpu(), backend="tensorrt", dtype="float16", maxBatchSize=8,
                     maxInputLen=32, maxSeqLen=64, maxNumTokens=128)
    second = bed.run(again)
    assert second.code == 0, second.log
    assert "--input_timing_cache" in second.log, "a later build reuses the cache"
