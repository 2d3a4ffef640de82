"""The GPU catalogue: lookups and which quantizations run where."""

from __future__ import annotations

import pytest

from kiln.api import Backend, KvCacheQuant, QuantAlgo
from kiln.dev.testbed import nodes
from kiln.domain import catalogue
from kiln.domain.catalogue import by_name, by_product, supports


def test_names_and_products_are_unique() -> None:
    names = catalogue.names()
    assert len(names) == len(set(names))
    products = [p for gpu in catalogue.GPUS for p in gpu.products]
    assert len(products) == len(set(products))
    for required in ("A100-80GB", "A100-40GB", "A10", "L4", "L40S", "H100-SXM", "H100-PCIe",
                     "H200", "GH200", "B200", "RTX-PRO-6000"):
        assert required in names


@pytest.mark.parametrize(("product", "name", "cc"), [
    ("NVIDIA-A100-SXM4-80GB", "A100-80GB", "8.0"),
    ("NVIDIA-H100-80GB-HBM3", "H100-SXM", "9.0"),
    ("NVIDIA-L40S", "L40S", "8.9"),
    ("NVIDIA-H200", "H200", "9.0"),
    ("NVIDIA-B200", "B200", "10.0"),
])
def test_test_bed_and_common_products_resolve(product: str, name: str, cc: str) -> None:
    gpu = by_product(product)
    assert gpu is not None
    assert (gpu.name, gpu.compute_capability) == (name, cc)
    assert by_name(name) is gpu


def test_every_test_bed_pool_is_in_the_catalogue_with_its_compute_capability() -> None:
    for pool in (nodes.A100, nodes.H100, nodes.L40S, nodes.H200):
        assert pool.product is not None
        gpu = by_product(pool.product)
        assert gpu is not None, pool.product
        assert gpu.capability == pool.compute


def test_shared_products_map_to_the_gpu() -> None:
    assert by_product("NVIDIA-H100-80GB-HBM3-SHARED") is by_name("H100-SXM")
    assert by_product("NVIDIA-GeForce-GTX-1080") is None


def test_a_mig_slice_is_a_gpu_of_its_own_never_its_parent() -> None:
    """GFD's single strategy labels a MIG node ``<product>-MIG-<profile>``: a 1g slice has a
    seventh of the memory and runs other kernels, so it is its own target."""
    mig = by_product("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb")
    assert mig is by_name("A100-40GB-MIG-1g.5gb") and mig is not by_name("A100-40GB")
    assert (mig.compute_capability, mig.memory_gib, mig.parent) == ("8.0", 5, "A100-40GB")
    assert by_product("NVIDIA-H100-80GB-HBM3-MIG-3g.40gb-SHARED") is by_name("H100-SXM-MIG-3g.40gb")
    assert nodes.A100_MIG.product is not None
    assert by_product(nodes.A100_MIG.product) is by_name("A100-80GB-MIG-1g.10gb")
    unlisted = by_product("NVIDIA-A100-SXM4-80GB-MIG-1g.10gb+me")
    assert unlisted is not None and unlisted.name == "A100-80GB-MIG-1g.10gb+me"
    assert (unlisted.compute_capability, unlisted.memory_gib) == ("8.0", 10)
    assert by_product("NVIDIA-GeForce-GTX-1080-MIG-1g.5gb") is None
    assert {m.parent for m in catalogue.MIGS} <= set(catalogue.names())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="H100-SXM"):
        by_name("H100")


@pytest.mark.parametrize(("where", "backend", "algo", "kv", "ok"), [
    ("H100-SXM", "tensorrt", "fp8", "fp8", True),
    ("L40S", "tensorrt", "fp8", "none", True),
    ("L4", "tensorrt", "w4a8_awq", "none", True),
    ("A100-80GB", "tensorrt", "fp8", "none", False),
    ("A10", "tensorrt", "w4a8_awq", "none", False),
    # FP8 KV cache on Ampere: quantization.md's hardware matrix (PyTorch flow) says Y; no
    # 1.2.x source refuses it for trtllm-build either
    ("A100-80GB", "tensorrt", "none", "fp8", True),
    ("A100-80GB", "pytorch", "none", "fp8", True),
    ("A10", "pytorch", "int4_awq", "fp8", True),
    ("L40S", "pytorch", "none", "fp8", True),
    ("A100-80GB", "tensorrt", "int8_sq", "int8", True),
    ("H100-SXM", "tensorrt", "nvfp4", "none", False),
    ("B200", "tensorrt", "nvfp4", "fp8", True),
    ("B200", "tensorrt", "int8_wo", "none", False),
    ("B200", "tensorrt", "int4_wo", "none", False),
    ("B200", "tensorrt", "int8_sq", "none", False),
    ("B200", "tensorrt", "none", "int8", False),
    ("RTX-PRO-6000", "tensorrt", "int8_wo", "none", True),
    ("H100-SXM", "pytorch", "int8_sq", "none", False),
    ("H100-SXM", "pytorch", "none", "int8", False),
    ("H100-SXM", "pytorch", "w4a8_awq", "none", True),
    ("B200", "pytorch", "w4a8_awq", "none", False),
    ("B200", "pytorch", "int4_awq", "none", False),
    ("A100-40GB", "pytorch", "int4_awq", "none", True),
    ("8.9", "tensorrt", "fp8", "none", True),
    ("8.6", "tensorrt", "fp8", "none", False),
    ("10.3", "tensorrt", "int8_sq", "none", False),
    ("12.0", "tensorrt", "nvfp4", "none", True),
    ("7.5", "tensorrt", "none", "none", False),
])
def test_supports(where: str, backend: Backend, algo: QuantAlgo, kv: KvCacheQuant,
                  ok: bool) -> None:
    answer = supports(where, backend, algo, kv)
    assert answer.ok is ok
    assert (answer.reason == "") is ok


def test_reasons_say_what_and_where() -> None:
    reason = supports("A100-80GB", "tensorrt", "fp8").reason
    assert "quantization.algo fp8" in reason
    assert "8.9" in reason
    assert "A100-80GB" in reason
    assert "B200" in supports(by_name("B200"), "tensorrt", "none", "int8").reason
    assert "use backend tensorrt" in supports("H100-SXM", "pytorch", "int8_wo").reason


def test_supported_lists_per_gpu_and_backend() -> None:
    assert by_name("A100-80GB").supported("tensorrt") == (
        "none", "int8_sq", "int4_awq", "int8_wo", "int4_wo")
    assert "nvfp4" in by_name("B200").supported("tensorrt")
    assert "int8_wo" not in by_name("B200").supported("tensorrt")
    assert by_name("H100-SXM").supported_kv_cache("pytorch") == ("none", "fp8")
    assert by_name("A10").supported_kv_cache("tensorrt") == ("none", "fp8", "int8")
    assert by_name("A10").supported_kv_cache("pytorch") == ("none", "fp8")


def test_capability_parses_and_orders() -> None:
    assert catalogue.capability("10.0") > catalogue.capability("9.0")
    with pytest.raises(ValueError, match="compute capability"):
        catalogue.capability("9")


def test_available_is_about_the_backend_alone() -> None:
    assert catalogue.available("tensorrt", "int8_sq", "int8").ok
    assert catalogue.available("pytorch", "nvfp4", "fp8").ok
    refused = catalogue.available("pytorch", "int4_wo")
    assert not refused.ok
    assert "use backend tensorrt" in refused.reason
    assert not catalogue.available("pytorch", "none", "int8").ok
    for gpu in catalogue.GPUS:  # never available means refused on every GPU
        assert not supports(gpu, "pytorch", "int8_sq").ok
