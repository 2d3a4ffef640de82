"""The serving container's version guard, with stand-in ``tensorrt_llm`` / ``tensorrt``
packages of chosen versions on the path (the real ones cannot be installed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.contract import exitcodes
from kiln.contract.termination import parse_failure
from kiln.engine_deployment import render
from kiln.fetcher.main import install_guard
from unit.test_engine_deployment_render import CONFIG, eb, ed, engine_serve

BUILT = {"tensorrt_llm": "1.2.1", "tensorrt": "10.13.3.9"}


def stand_ins(root: Path, trtllm: str, tensorrt: str) -> Path:
    """``tensorrt_llm`` with ``version.py`` (as upstream has it), ``tensorrt`` with
    ``__version__`` in ``__init__.py``; importing either would fail (as without a GPU)."""
    (root / "tensorrt_llm").mkdir(parents=True)
    (root / "tensorrt_llm" / "__init__.py").write_text("raise ImportError('needs a GPU')\n")
    (root / "tensorrt_llm" / "version.py").write_text(f'__version__ = "{trtllm}"\n')
    (root / "tensorrt").mkdir()
    (root / "tensorrt" / "__init__.py").write_text(f'__version__ = "{tensorrt}"\n'
                                                    "raise ImportError('needs a GPU')\n")
    return root


def engine_dir(root: Path, backend: str = "tensorrt") -> Path:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({
        "key": "k" * 64, "versions": BUILT, "inputs": {"build": {"backend": backend}}}))
    return root


def guard(tmp: Path, engine: Path, path: Path) -> subprocess.CompletedProcess[str]:
    script = install_guard(tmp / "kiln")
    # -S: no site-packages, so no kiln: the guard runs on the standard library alone
    return subprocess.run(
        [sys.executable, "-S", str(script), str(engine), "--exit-code",
         str(exitcodes.VERSION_MISMATCH), "--termination-log", str(tmp / "termination")],
        env={"PYTHONPATH": str(path), "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=60, check=False)


def test_another_tensorrt_llm_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = stand_ins(tmp_path / "site", "1.1.0", BUILT["tensorrt"])
    result = guard(tmp_path, engine_dir(tmp_path / "engine"), path)
    assert result.returncode == exitcodes.VERSION_MISMATCH, result.stderr
    failure = parse_failure((tmp_path / "termination").read_text(), result.returncode,
                            "server")
    assert failure.reason == "VersionMismatch" == exitcodes.BY_CODE[result.returncode].reason
    assert "tensorrt_llm: engine built with 1.2.1, this image has 1.1.0" in failure.message
    assert "tensorrt:" not in failure.message, "TensorRT matches"
    assert not failure.retryable


def test_another_tensorrt_is_refused_too(tmp_path: Path) -> None:
    path = stand_ins(tmp_path / "site", BUILT["tensorrt_llm"], "10.11.0.33")
    result = guard(tmp_path, engine_dir(tmp_path / "engine"), path)
    assert result.returncode == exitcodes.VERSION_MISMATCH
    assert "tensorrt: engine built with 10.13.3.9, this image has 10.11.0.33" in result.stderr


@pytest.mark.parametrize("backend", ["tensorrt", "pytorch"])
def test_matching_versions_and_checkpoints_pass(tmp_path: Path, backend: str) -> None:
    same = stand_ins(tmp_path / "same", BUILT["tensorrt_llm"], BUILT["tensorrt"])
    assert guard(tmp_path, engine_dir(tmp_path / "e", backend), same).returncode == 0
    other = stand_ins(tmp_path / "other", "1.1.0", "10.11.0")
    code = guard(tmp_path, engine_dir(tmp_path / "p", backend), other).returncode
    assert code == (0 if backend == "pytorch" else exitcodes.VERSION_MISMATCH)
    assert guard(tmp_path, tmp_path, other).returncode == 0, "no manifest: a checkpoint"


def test_the_rendered_server_command_runs_the_guard_first(tmp_path: Path) -> None:
    """The Deployment's server command, with its directories moved under tmp_path."""
    dep = render.render_deployment(ed(), eb(), engine_serve(), CONFIG)
    server = dep["spec"]["template"]["spec"]["containers"][0]
    engine = engine_dir(tmp_path / "engine")
    install_guard(tmp_path / "kiln")
    script = (server["command"][2].replace(f"{render.GUARD_DIR}/", f"{tmp_path}/kiln/")
              .replace(f" {render.ENGINE_DIR} ", f" {engine} ")
              .replace("/dev/termination-log", str(tmp_path / "termination")))
    marker = tmp_path / "served"
    argv = [*server["command"][:2], script, "--", "sh", "-c", f"touch {marker}"]
    for versions, code in (((BUILT["tensorrt_llm"], BUILT["tensorrt"]), 0),
                           (("1.1.0", BUILT["tensorrt"]), exitcodes.VERSION_MISMATCH)):
        path = stand_ins(tmp_path / "-".join(versions), *versions)
        marker.unlink(missing_ok=True)
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        python3 = bindir / "python3"
        python3.unlink(missing_ok=True)
        python3.symlink_to(sys.executable)
        result = subprocess.run(argv, env={"PYTHONPATH": str(path), "PATH":
                                           f"{bindir}{os.pathsep}{os.environ['PATH']}"},
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == code, result.stderr
        assert marker.exists() is (code == 0), "the server starts only after the guard passed"


def test_versions_are_compared_normalized(tmp_path: Path) -> None:
    """The manifest holds the builder's reading (PEP 440 normal form, as a distribution's
    metadata gives it); a version.py spelling the same version otherwise is no mismatch."""
    path = stand_ins(tmp_path / "site", "1.2.1-rc.1", "10.13.3.9")
    engine = engine_dir(tmp_path / "engine")
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["versions"]["tensorrt_llm"] = "1.2.1rc1"
    (engine / "manifest.json").write_text(json.dumps(manifest))
    assert guard(tmp_path, engine, path).returncode == 0
    other = stand_ins(tmp_path / "other", "1.2.1rc2", "10.13.3.9")
    assert guard(tmp_path, engine, other).returncode == exitcodes.VERSION_MISMATCH


def test_the_builder_reads_versions_the_way_the_guard_does(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read the package Python would import (its ``__version__``) before any
    distribution's metadata: a stand-in without dist-info is seen by both, alike."""
    from kiln.builder import toolchain
    from kiln.contract import version_guard
    from kiln.contract.env import TRTLLM_PYTHON

    path = stand_ins(tmp_path / "site", "1.2.1", "10.13.3.9")
    monkeypatch.setenv(TRTLLM_PYTHON, sys.executable)
    monkeypatch.setenv("PYTHONPATH", str(path))
    found = toolchain.versions()
    assert found["tensorrt_llm"] == "1.2.1"
    assert found["tensorrt"] == "10.13.3.9"
    monkeypatch.syspath_prepend(str(path))
    assert version_guard.installed("tensorrt_llm", ("tensorrt_llm",)) == found["tensorrt_llm"]


def fake_driver(root: Path, version: str) -> Path:
    """A ``nvidia-smi`` on PATH that reports ``version`` as the node's driver."""
    root.mkdir(parents=True, exist_ok=True)
    smi = root / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {version}\necho {version}\n")
    smi.chmod(0o755)
    return root


def guard_on(tmp: Path, engine: Path, site: Path, driver: str,
             cuda_here: str | None = None) -> subprocess.CompletedProcess[str]:
    script = install_guard(tmp / "kiln")
    env = {"PYTHONPATH": str(site),
           "PATH": f"{fake_driver(tmp / f'driver-{driver}', driver)}{os.pathsep}"
                   f"{os.environ['PATH']}", **({"CUDA_VERSION": cuda_here} if cuda_here else {})}
    return subprocess.run(
        [sys.executable, "-S", str(script), str(engine), "--exit-code",
         str(exitcodes.VERSION_MISMATCH), "--termination-log", str(tmp / "termination")],
        env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_node_driver_older_than_the_engines_cuda_major_needs_is_refused(
        tmp_path: Path) -> None:
    """TensorRT-LLM 1.2.1 is a CUDA 13 build: CUDA 13.x needs driver >= 580 (NVIDIA's CUDA
    compatibility guide, kept in version_guard.CUDA_DRIVER_MINIMUM). The builder records the
    CUDA version; the guard reads the node's driver from nvidia-smi."""
    from kiln.contract import version_guard
    assert version_guard.CUDA_DRIVER_MINIMUM[13] == 580
    assert version_guard.CUDA_DRIVER_MINIMUM[12] == 525
    site = stand_ins(tmp_path / "site", BUILT["tensorrt_llm"], BUILT["tensorrt"])
    engine = engine_dir(tmp_path / "engine")
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["versions"]["cuda"] = "13.0.1"
    (engine / "manifest.json").write_text(json.dumps(manifest))
    result = guard_on(tmp_path, engine, site, "570.172.08")
    assert result.returncode == exitcodes.VERSION_MISMATCH, result.stderr
    failure = parse_failure((tmp_path / "termination").read_text(), result.returncode,
                            "server")
    assert ("cuda: engine built for CUDA 13.0.1, which needs an NVIDIA driver >= 580; this "
            "node's driver is 570.172.08") in failure.message
    assert guard_on(tmp_path, engine, site, "580.65.06").returncode == 0
    # An engine from before kiln recorded CUDA: the image's CUDA_VERSION stands in for it.
    older = engine_dir(tmp_path / "older")
    assert guard_on(tmp_path, older, site, "570.172.08", "13.0.1").returncode == \
        exitcodes.VERSION_MISMATCH
    assert guard_on(tmp_path, older, site, "570.172.08").returncode == 0, "nothing known"


def test_the_driver_api_decides_where_it_loads_compat_libraries_included() -> None:
    """Review of issue 27: an image with /usr/local/cuda/compat was never checked. Where
    libcuda loads, its own answer decides: the supported CUDA version (forward compatibility
    included) and cuInit's refusal of a compatibility setup that cannot work."""
    from kiln.contract import version_guard as g
    assert g.driver_cannot_run("13.0.1", (0, 13000)) is None
    assert g.driver_cannot_run("13.0.1", (0, 12080)) == (
        "cuda: engine built for CUDA 13.0.1; this node's driver supports CUDA 12.8 at most")
    assert "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE" in str(
        g.driver_cannot_run("13.0.1", (804, 13000)))
    assert g.driver_cannot_run("12.8", (0, 13000)) is None


def test_the_compat_directory_no_longer_hides_a_driver_that_cannot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.contract import version_guard as g
    monkeypatch.setattr(g, "driver_cuda", lambda: (804, 13000))
    monkeypatch.setattr(g, "installed", lambda module, dists: None)
    found = g.mismatches({"versions": {"cuda": "13.0.1"}})
    assert any("cannot run this image's CUDA 13.0.1" in f for f in found), found
    monkeypatch.setattr(g, "driver_cuda", lambda: (0, 13000))
    assert g.mismatches({"versions": {"cuda": "13.0.1"}}) == []
