"""Running ``kiln-builder`` (the console script) against moto's S3, for the builder tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.api import BuildSpec
from kiln.contract import exitcodes
from kiln.contract.key import engine_key
from kiln.contract.task import BuildTask
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.sources import open_source, origin_of

GPU = ("NVIDIA-H100-80GB-HBM3", "9.0")
IMAGE = "kiln-builder:test"


def kiln_builder() -> str:
    found = shutil.which("kiln-builder") or str(Path(sys.executable).with_name("kiln-builder"))
    assert Path(found).exists(), "the kiln-builder console script is not installed"
    return found


@dataclass
class Run:
    code: int
    log: str
    termination: dict[str, Any]


@dataclass
class Bed:
    """What a builder run needs: moto's endpoint, a client, a store bucket, a scratch dir."""

    endpoint: str
    s3: Any
    store_bucket: str
    tmp: Path

    def weights(self, bucket: str, prefix: str = "llama/", **config: Any) -> str:
        directory = checkpoints.write(self.tmp / f"ckpt-{prefix.strip('/')}")
        if config:
            data = json.loads((directory / "config.json").read_text())
            (directory / "config.json").write_text(json.dumps({**data, **config}))
        return checkpoints.upload(self.s3, directory, bucket, prefix)

    def identity(self, uri: str) -> str:
        return open_source(uri, endpoint_url=self.endpoint).identity().digest

    def task(self, uri: str, identity: str | None = None, gpu: tuple[str, str] = GPU,
             **build: Any) -> BuildTask:
        """A task as the operator makes it: the key computed from its inputs."""
        spec = BuildSpec.model_validate({"backend": "pytorch", **build})
        identity = identity or self.identity(uri)
        origin = origin_of(uri, "ns", None)
        data = spec.quantization.calibration
        calibration = None if data is None else {
            "identity": open_source(data.dataset, endpoint_url=self.endpoint,
                                    hf_repo_type="dataset").identity().digest,
            "origin": origin_of(data.dataset, "ns", None)}
        key = engine_key(weights_identity=identity, origin=origin, build=spec,
                         builder_image=IMAGE,
                         gpu_product=gpu[0], compute_capability=gpu[1], calibration=calibration)
        return BuildTask.for_build(
            key=key, weights_identity=identity, origin=origin, source=uri, revision=None,
            build=spec,
            gpu_product=gpu[0], compute_capability=gpu[1],
            store=f"s3://{self.store_bucket}/", builder_image=IMAGE, calibration=calibration)

    def run(self, task: BuildTask | str, *args: str, **env: str) -> Run:
        termination = self.tmp / "termination-log"
        termination.unlink(missing_ok=True)
        task_file = self.tmp / "task.json"
        task_file.write_text(task if isinstance(task, str) else task.to_json())
        result = subprocess.run(
            [kiln_builder(), "--task-file", str(task_file), "--workdir", str(self.tmp / "work"),
             "--min-free-bytes", "0", "--progress-interval", "0", *args],
            env={**os.environ, "AWS_ENDPOINT_URL": self.endpoint,
                 "KILN_TERMINATION_LOG": str(termination), **env},
            capture_output=True, text=True, timeout=300, check=False)
        log = result.stdout + result.stderr
        text = termination.read_text() if termination.exists() else ""
        assert len(text.encode()) <= 4096
        return Run(result.returncode, log, json.loads(text) if text else {})

    def keys(self, prefix: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.store_bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))


def failed(run: Run, reason: str, code: int) -> str:
    assert run.code == code, run.log
    assert run.termination["reason"] == reason, run.termination
    assert run.termination["exitCode"] == code
    assert run.termination["retryable"] is (exitcodes.BY_CODE[code].action != "FailJob")
    return str(run.termination["message"])
