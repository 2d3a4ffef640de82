"""Artifact sets, pure: the serving pods' placement check (kiln.contract.version_guard) and
which EngineDeployment options keep a set from being placed (kiln.domain.aot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.api import BuildSpec, Server
from kiln.contract import version_guard
from kiln.dev.testbed import gpu
from kiln.domain.aot import mismatched

H100 = "NVIDIA H100 80GB HBM3,9.0,580.95.05"


def engine(tmp_path: Path, **report: object) -> Path:
    root = tmp_path / "engine"
    (root / "artifacts" / "cache" / "inductor").mkdir(parents=True)
    (root / "artifacts" / "cache" / "inductor" / "k.py").write_text("kernel")
    made = {"runtime": "r", "versioned": {"kiln": ["kiln"]},
            "versions": version_guard.artifact_versions({"kiln": ["kiln"]}),
            "gpuName": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0",
            "driverVersion": "580.95.05", **report}
    (root / "artifacts" / "report.json").write_text(json.dumps(made))
    return root


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(gpu.GPU_ENV, H100)
    return str(gpu.SCRIPT)


def test_a_set_made_here_is_placed_writable(tmp_path: Path, h100: str) -> None:
    state, said = version_guard.place_artifacts(engine(tmp_path), tmp_path / "placed", h100)
    assert state == "Placed", said
    placed = tmp_path / "placed" / "inductor" / "k.py"
    assert placed.read_text() == "kernel" and placed.stat().st_mode & 0o777 == 0o666


@pytest.mark.parametrize(("report", "why"), [
    ({"driverVersion": "550.54.15"}, "driver: made on 550.54.15"),
    ({"gpuName": "NVIDIA A100-SXM4-80GB"}, "GPU: made on NVIDIA A100"),
    ({"versions": {"kiln": "0.0.1", "cuda": "none"}}, "kiln: made with 0.0.1"),
    ({"versions": {}}, "kiln: the set does not record its version"),
])
def test_a_set_made_elsewhere_is_not_placed_and_an_earlier_placement_goes(
        tmp_path: Path, h100: str, report: dict[str, object], why: str) -> None:
    dest = tmp_path / "placed"
    (dest / "old").mkdir(parents=True)  # a restarted pod's volume, placed before
    state, said = version_guard.place_artifacts(engine(tmp_path, **report), dest, h100)
    assert state == "Stale" and why in said, said
    assert list(dest.iterdir()) == []


def test_a_broken_report_or_none_never_fails_the_pod(tmp_path: Path, h100: str) -> None:
    root = engine(tmp_path)
    (root / "artifacts" / "report.json").write_text("[1, 2]")
    assert version_guard.place_artifacts(root, tmp_path / "a", h100)[0] == "Stale"
    (root / "artifacts" / "report.json").unlink()
    assert version_guard.place_artifacts(root, tmp_path / "b", h100)[0] == "None"
    assert version_guard.place_artifacts(root, tmp_path / "c", "/nonexistent")[0] == "None"


def test_an_unknown_gpu_is_stale(tmp_path: Path) -> None:
    state, said = version_guard.place_artifacts(engine(tmp_path), tmp_path / "p",
                                                "/no/such/nvidia-smi")
    assert state == "Stale" and "GPU is unknown" in said


def test_only_options_that_differ_from_the_build_or_replace_it_keep_a_set_off() -> None:
    build = BuildSpec(backend="pytorch", max_num_tokens=4096)
    same = Server.model_validate({"runtime": {"maxNumTokens": 4096,
                                              "freeGpuMemoryFraction": 0.5,
                                              "enableBlockReuse": False}})
    assert mismatched(same, build) == []
    other = Server.model_validate({"runtime": {"maxNumTokens": 2048}})
    assert mismatched(other, build) == ["server.runtime.maxNumTokens 2048 (the build's is 4096)"]
    flags = Server.model_validate({"args": ["--max_batch_size=8", "--log_level=info",
                                            "--extra_llm_api_options", "/x.yaml"]})
    assert mismatched(flags, build) == ["server.args --extra_llm_api_options",
                                        "server.args --max_batch_size"]
