"""The TensorRT timing cache travels through the store: read before a build, saved after."""

from __future__ import annotations

from pathlib import Path

from kiln.builder import commands, tensorrt
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
