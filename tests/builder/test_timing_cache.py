"""The TensorRT timing cache travels through the store: read before a build, saved after."""

from __future__ import annotations

from pathlib import Path

from kiln.api import BuildSpec
from kiln.builder import commands, tensorrt
from kiln.contract.task import BuildTask
from kiln.store import open_store


def test_timing_cache_is_reused_and_saved_only_when_it_grew(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    blob = commands.timing_cache_blob("NVIDIA-H100-80GB-HBM3", "10.14.1.48")
    local = tmp_path / "timing.cache"

    assert tensorrt.load_timing_cache(store, blob, local) is None
    assert not local.exists(), "a first build starts without --input_timing_cache"
    local.write_bytes(b"tactics v1")
    tensorrt.save_timing_cache(store, blob, local, None)
    assert store.get_blob(blob) == b"tactics v1"

    local.unlink()
    before = tensorrt.load_timing_cache(store, blob, local)
    assert before == b"tactics v1"
    assert local.read_bytes() == b"tactics v1"
    other = commands.timing_cache_blob("NVIDIA-A100-SXM4-80GB", "10.14.1.48")
    assert tensorrt.load_timing_cache(store, other, tmp_path / "other.cache") is None

    local.write_bytes(b"tactics v2")
    tensorrt.save_timing_cache(store, blob, local, before)
    assert store.get_blob(blob) == b"tactics v2"


def _task(namespace: str | None) -> BuildTask:
    origin = {"scheme": "s3", "bucket": "models", "prefix": "llama/"}
    return BuildTask.for_build(
        key="ab" * 32, weights_identity="sha256:1234",
        origin=origin | ({"namespace": namespace} if namespace else {}),
        source="s3://models/llama/", revision=None, build=BuildSpec(),
        gpu_product="NVIDIA-H100-80GB-HBM3", compute_capability="9.0",
        store="s3://engines/", builder_image="kiln-builder:1@sha256:" + "0" * 64)


def test_a_timing_cache_one_tenants_build_wrote_is_not_read_by_another_tenants(
        tmp_path: Path) -> None:
    """Issue 24: the cache is per namespace a build runs in (its key's), so a tenant's build
    (exec into its pod, its own builder flags) cannot shape the tactics another's reads."""
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    local = tmp_path / "timing.cache"
    a, b, platform = (tensorrt.timing_cache_blob(_task(ns), "10.14.1.48")
                      for ns in ("tenant-a", "tenant-b", None))
    local.write_bytes(b"poisoned by tenant a")
    tensorrt.save_timing_cache(store, a, local, None)

    assert tensorrt.load_timing_cache(store, b, tmp_path / "b.cache") is None
    assert tensorrt.load_timing_cache(store, platform, tmp_path / "p.cache") is None
    assert tensorrt.load_timing_cache(store, a, tmp_path / "a.cache") == b"poisoned by tenant a"
    assert len({a, b, platform}) == 3
