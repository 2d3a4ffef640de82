"""The GPU catalogue: names users write, the labels nodes carry, what each GPU can run.

Data, plus three lookups: ``by_name``, ``by_product`` (an ``nvidia.com/gpu.product`` label
value) and ``supports`` (can a backend run a quantization there, and if not, why).
Sources: NVIDIA's CUDA GPU table and TensorRT-LLM's support matrix (reference/trtllm.md §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kiln.api import Backend, KvCacheQuant, QuantAlgo

Capability = tuple[int, int]
Part = Literal["algo", "kvCache"]


def capability(text: str) -> Capability:
    """``"8.9"`` → ``(8, 9)``."""
    match = re.fullmatch(r"([0-9]+)\.([0-9])", text)
    if not match:
        raise ValueError(f"{text!r} is not a compute capability such as 8.9")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class GPU:
    """One GPU model as kiln knows it."""

    name: str
    """The catalogue name users write (``spec.targets[].gpu``, ``spec.gpu``)."""
    products: tuple[str, ...]
    """``nvidia.com/gpu.product`` values GPU Feature Discovery gives its nodes."""
    compute_capability: str
    """``major.minor``, e.g. ``9.0``."""
    memory_gib: int
    """Memory per GPU."""
    family: str
    """Architecture: ampere, ada-lovelace, hopper or blackwell."""

    @property
    def capability(self) -> Capability:
        return capability(self.compute_capability)

    def supported(self, backend: Backend) -> tuple[QuantAlgo, ...]:
        """Quantization algorithms ``backend`` runs on this GPU (``none`` included)."""
        return tuple(a for a in QUANT_ALGOS if supports(self, backend, a, "none").ok)

    def supported_kv_cache(self, backend: Backend) -> tuple[KvCacheQuant, ...]:
        """KV cache quantizations ``backend`` runs on this GPU (``none`` included)."""
        return tuple(k for k in KV_CACHE_QUANTS if supports(self, backend, "none", k).ok)


def _gpu(name: str, products: str, cc: str, memory_gib: int, family: str) -> GPU:
    return GPU(name, tuple(products.split()), cc, memory_gib, family)


GPUS: tuple[GPU, ...] = (
    _gpu("A100-40GB", "NVIDIA-A100-SXM4-40GB NVIDIA-A100-PCIE-40GB", "8.0", 40, "ampere"),
    _gpu("A100-80GB", "NVIDIA-A100-SXM4-80GB NVIDIA-A100-80GB-PCIe", "8.0", 80, "ampere"),
    _gpu("A30", "NVIDIA-A30", "8.0", 24, "ampere"),
    _gpu("A10", "NVIDIA-A10", "8.6", 24, "ampere"),
    _gpu("A10G", "NVIDIA-A10G", "8.6", 24, "ampere"),
    _gpu("A40", "NVIDIA-A40", "8.6", 48, "ampere"),
    _gpu("L4", "NVIDIA-L4", "8.9", 24, "ada-lovelace"),
    _gpu("L40", "NVIDIA-L40", "8.9", 48, "ada-lovelace"),
    _gpu("L40S", "NVIDIA-L40S", "8.9", 48, "ada-lovelace"),
    _gpu("H100-SXM", "NVIDIA-H100-80GB-HBM3", "9.0", 80, "hopper"),
    _gpu("H100-PCIe", "NVIDIA-H100-PCIe", "9.0", 80, "hopper"),
    _gpu("H100-NVL", "NVIDIA-H100-NVL", "9.0", 94, "hopper"),
    _gpu("H20", "NVIDIA-H20", "9.0", 96, "hopper"),
    _gpu("H200", "NVIDIA-H200 NVIDIA-H200-141GB-HBM3e", "9.0", 141, "hopper"),
    _gpu("H200-NVL", "NVIDIA-H200-NVL", "9.0", 141, "hopper"),
    _gpu("GH200", "NVIDIA-GH200-480GB NVIDIA-GH200-144G-HBM3e", "9.0", 96, "hopper"),
    _gpu("B200", "NVIDIA-B200", "10.0", 180, "blackwell"),
    _gpu("GB200", "NVIDIA-GB200", "10.0", 186, "blackwell"),
    _gpu("RTX-PRO-6000", "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "12.0", 96,
         "blackwell"),
)

QUANT_ALGOS: tuple[QuantAlgo, ...] = (
    "none", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4")
KV_CACHE_QUANTS: tuple[KvCacheQuant, ...] = ("none", "fp8", "int8")
BACKENDS: tuple[Backend, ...] = ("tensorrt", "pytorch")
MIN_CAPABILITY: Capability = (8, 0)


@dataclass(frozen=True)
class Requirement:
    """Where ``backend`` runs quantization ``part`` = one of ``values``: half-open compute
    capability ranges ``[low, high)`` (``high`` None: no upper bound); none means nowhere."""

    backend: Backend
    part: Part
    values: tuple[str, ...]
    ranges: tuple[tuple[Capability, Capability | None], ...]
    why: str

    def allows(self, cc: Capability) -> bool:
        return any(low <= cc and (high is None or cc < high) for low, high in self.ranges)


_ADA, _BLACKWELL, _SM11 = (8, 9), (10, 0), (11, 0)
_NOT_SM10 = ((MIN_CAPABILITY, _BLACKWELL), (_SM11, None))
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("tensorrt", "algo", ("fp8", "w4a8_awq"), ((_ADA, None),),
                "needs FP8 math: compute capability 8.9 (Ada) or newer"),
    Requirement("tensorrt", "algo", ("nvfp4",), ((_BLACKWELL, None),),
                "needs Blackwell: compute capability 10.0 or newer"),
    Requirement("tensorrt", "algo", ("int8_sq", "int8_wo", "int4_wo"), _NOT_SM10,
                "is refused by trtllm-build on compute capability 10.x (B200, GB200)"),
    Requirement("tensorrt", "kvCache", ("fp8",), ((_ADA, None),),
                "needs FP8 math: compute capability 8.9 (Ada) or newer"),
    Requirement("tensorrt", "kvCache", ("int8",), _NOT_SM10,
                "is refused by trtllm-build on compute capability 10.x (B200, GB200)"),
    Requirement("pytorch", "algo", ("fp8",), ((_ADA, None),),
                "needs FP8 math: compute capability 8.9 (Ada) or newer"),
    Requirement("pytorch", "algo", ("nvfp4",), ((_BLACKWELL, None),),
                "needs Blackwell: compute capability 10.0 or newer"),
    Requirement("pytorch", "algo", ("w4a8_awq",), ((_ADA, _BLACKWELL),),
                "runs on Ada and Hopper only (compute capability 8.9 to 9.x)"),
    Requirement("pytorch", "algo", ("int4_awq",), ((MIN_CAPABILITY, _BLACKWELL),),
                "runs on Ampere, Ada and Hopper only (compute capability 8.0 to 9.x)"),
    Requirement("pytorch", "algo", ("int8_sq", "int8_wo", "int4_wo"), (),
                "is not available in the PyTorch backend; use backend tensorrt"),
    Requirement("pytorch", "kvCache", ("int8",), (),
                "is not available in the PyTorch backend; use kvCache fp8"),
)
"""Every restriction kiln knows; the CRD's CEL rules are generated from these too."""


class Support(NamedTuple):
    """The answer of ``supports``: ``ok``, and when not, a ``reason`` a person can act on."""

    ok: bool
    reason: str = ""


_BY_NAME = {gpu.name: gpu for gpu in GPUS}
_BY_PRODUCT = {product: gpu for gpu in GPUS for product in gpu.products}


def names() -> list[str]:
    """Catalogue names in catalogue order."""
    return [gpu.name for gpu in GPUS]


def by_name(name: str) -> GPU:
    """The GPU called ``name``; KeyError (listing the known names) if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(names())}") from None


def by_product(product: str) -> GPU | None:
    """The GPU whose ``nvidia.com/gpu.product`` label is ``product``, or None.

    GPU Feature Discovery appends ``-SHARED`` (time-slicing) and ``-MIG-<profile>`` (MIG);
    those map to the underlying GPU (same compute capability, less memory for MIG).
    """
    base = re.sub(r"(-MIG-.*|-SHARED)$", "", product)
    return _BY_PRODUCT.get(product) or _BY_PRODUCT.get(base)


def available(backend: Backend, algo: QuantAlgo, kv_cache: KvCacheQuant = "none") -> Support:
    """Does ``backend`` offer this quantization at all (on some GPU)?"""
    for req in REQUIREMENTS:
        value = algo if req.part == "algo" else kv_cache
        if req.backend == backend and value in req.values and not req.ranges:
            return Support(False, f"quantization.{req.part} {value} with backend {backend} "
                                  f"{req.why}")
    return Support(True)


def supports(where: GPU | str, backend: Backend, algo: QuantAlgo,
             kv_cache: KvCacheQuant = "none") -> Support:
    """Can ``backend`` run quantization ``algo`` with KV cache ``kv_cache`` on ``where``?

    ``where`` is a GPU, a catalogue name, or a compute capability such as ``"9.0"``.
    """
    if isinstance(where, GPU):
        gpu, label = where, f"{where.name} (compute capability {where.compute_capability})"
    elif where in _BY_NAME:
        gpu = _BY_NAME[where]
        label = f"{gpu.name} (compute capability {gpu.compute_capability})"
    else:
        gpu, label = None, f"compute capability {where}"
    cc = gpu.capability if gpu else capability(str(where))
    if cc < MIN_CAPABILITY:
        return Support(False, f"TensorRT-LLM needs compute capability 8.0 or newer, not {label}")
    for req in REQUIREMENTS:
        value = algo if req.part == "algo" else kv_cache
        if req.backend == backend and value in req.values and not req.allows(cc):
            where_text = "" if not req.ranges else f"; {label} cannot"
            return Support(False, f"quantization.{req.part} {value} with backend {backend} "
                                  f"{req.why}{where_text}")
    return Support(True)
