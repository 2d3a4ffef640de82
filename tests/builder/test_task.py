"""The build task round-trips through the Job's environment and a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln.api import BuildSpec
from kiln.contract.env import TASK
from kiln.contract.task import BuildTask

KEY = "ab" * 32


def task(**changes: object) -> BuildTask:
    values: dict[str, object] = dict(
        key=KEY, weights_identity="sha256:1234",
        origin={"scheme": "s3", "bucket": "models", "prefix": "llama/"},
        source="s3://models/llama/", revision=None,
        build=BuildSpec.model_validate({"dtype": "bfloat16", "parallelism": {"tensor": 2},
                                        "extraArgs": ["--fast_build"]}),
        gpu_product="NVIDIA-H100-80GB-HBM3", compute_capability="9.0",
        store="s3://engines/", builder_image="kiln-builder:1@sha256:" + "0" * 64)
    values.update(changes)
    return BuildTask.for_build(**values)  # type: ignore[arg-type]


def test_round_trip_through_env_and_file(tmp_path: Path) -> None:
    original = task(credentials_from_env=True)
    env = {TASK: original.to_json()}
    data = json.loads(env[TASK])
    assert data["build"]["parallelism"] == {"tensor": 2, "pipeline": 1}
    assert data["target"] == {"gpuProduct": "NVIDIA-H100-80GB-HBM3", "computeCapability": "9.0"}
    assert data["source"]["credentialsFromEnv"] is True
    assert BuildTask.load(env=env) == original
    path = tmp_path / "task.json"
    path.write_text(original.to_json())
    assert BuildTask.load(path, env={}) == original


def test_bad_tasks_are_refused() -> None:
    with pytest.raises(ValueError, match="KILN_TASK"):
        BuildTask.load(env={})
    with pytest.raises(ValidationError):
        task(key="not-a-key")
    bad = json.loads(task().to_json())
    bad["build"]["extraArgs"] = ["--output_dir=out"]
    with pytest.raises(ValidationError, match="not an allowed trtllm-build flag"):
        BuildTask.from_json(json.dumps(bad))
