"""The GPU catalogue: names users write, the labels nodes carry, what each GPU can run.

Data, plus three lookups: ``by_name``, ``by_product`` (an ``nvidia.com/gpu.product`` label
value) and ``supports`` (can a backend run a quantization there, and if not, why). A MIG
profile is a GPU of its own (its memory, its parent's compute capability), never its parent.
Sources: NVIDIA's CUDA GPU table and TensorRT-LLM's support matrix (reference/trtllm.md §6);
what ``trtllm-build`` refuses per compute capability comes from :mod:`kiln.trtllm.refusals`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kiln.api import Backend, KvCacheQuant, QuantAlgo
from kiln.trtllm import refusals

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
    mig_profile: str = ""
    """For a MIG slice: its profile (``1g.10gb``); GFD names it in the product label's
    ``-MIG-<profile>`` suffix (single strategy)."""
    parent: str = ""
    """For a MIG slice: the catalogue name of the GPU it is cut from."""

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
    _gpu("GH200", "NVIDIA-GH200-480GB", "9.0", 96, "hopper"),
    _gpu("GH200-144GB", "NVIDIA-GH200-144G-HBM3e", "9.0", 142, "hopper"),
    _gpu("RTX-6000-Ada", "NVIDIA-RTX-6000-Ada-Generation", "8.9", 48, "ada-lovelace"),
    _gpu("L20", "NVIDIA-L20", "8.9", 45, "ada-lovelace"),
    _gpu("RTX-A6000", "NVIDIA-RTX-A6000", "8.6", 48, "ampere"),
    _gpu("B200", "NVIDIA-B200", "10.0", 180, "blackwell"),
    _gpu("GB200", "NVIDIA-GB200", "10.0", 186, "blackwell"),
    _gpu("B300", "NVIDIA-B300-SXM6-AC", "10.3", 268, "blackwell"),
    _gpu("GB300", "NVIDIA-GB300-NVL NVIDIA-GB300", "10.3", 278, "blackwell"),
    _gpu("RTX-PRO-6000", "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "12.0", 96,
         "blackwell"),
)

MIG_SUFFIX = "-MIG-"
"""GPU Feature Discovery's product label of a MIG slice: ``<GPU>-MIG-<profile>``
(NVIDIA/k8s-device-plugin internal/lm/resource.go, ``baseLabeler(count, model, "MIG",
migProfile)``); time-slicing appends ``-SHARED`` after it."""

_MIG_PROFILES: dict[str, str] = {
    "A100-40GB": "1g.5gb 1g.10gb 2g.10gb 3g.20gb 4g.20gb 7g.40gb",
    "A100-80GB": "1g.10gb 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb",
    "A30": "1g.6gb 2g.12gb 4g.24gb",
    "H100-SXM": "1g.10gb 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb",
    "H100-PCIe": "1g.10gb 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb",
    "H100-NVL": "1g.12gb 1g.24gb 2g.24gb 3g.47gb 4g.47gb 7g.94gb",
    "H200": "1g.18gb 1g.35gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb",
    "H200-NVL": "1g.18gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb",
    "GH200": "1g.12gb 1g.24gb 2g.24gb 3g.48gb 4g.48gb 7g.96gb",
    "GH200-144GB": "1g.18gb 2g.36gb 3g.72gb 4g.72gb 7g.144gb",
    "B200": "1g.23gb 2g.45gb 3g.90gb 4g.90gb 7g.180gb",
    "GB200": "1g.23gb 2g.47gb 3g.93gb 4g.93gb 7g.186gb",
    "B300": "1g.34gb 2g.67gb 3g.135gb 4g.135gb 7g.269gb",
    "GB300": "1g.35gb 2g.70gb 3g.139gb 4g.139gb 7g.278gb",
    "RTX-PRO-6000": "1g.24gb 2g.48gb 4g.96gb",
}
"""The compute MIG profiles of each MIG-capable GPU, from NVIDIA/mig-parted
deployments/systemd/config-default.yaml (bd7160f); a profile not listed here (``+me``
variants, a new GPU's) is still its own GPU to ``by_product``, with no catalogue name."""


def _mig_memory(profile: str) -> int:
    match = re.match(r"[0-9]+g\.([0-9]+)gb", profile)
    return int(match.group(1)) if match else 0


def mig(parent: GPU, profile: str) -> GPU:
    """The MIG slice ``profile`` of ``parent``: its own products, memory and name."""
    return GPU(f"{parent.name}{MIG_SUFFIX}{profile}",
               tuple(f"{p}{MIG_SUFFIX}{profile}" for p in parent.products),
               parent.compute_capability, _mig_memory(profile), parent.family,
               mig_profile=profile, parent=parent.name)


MIGS: tuple[GPU, ...] = tuple(
    mig(gpu, profile) for gpu in GPUS for profile in _MIG_PROFILES.get(gpu.name, "").split())
"""MIG slices as targets of their own (``spec.targets[].gpu``, ``spec.gpu``)."""
ALL: tuple[GPU, ...] = GPUS + MIGS
"""Every name kiln accepts: whole GPUs, then MIG slices."""

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


_ADA, _BLACKWELL = (8, 9), (10, 0)
_DOCUMENTED: tuple[Requirement, ...] = (
    Requirement("tensorrt", "algo", ("fp8", "w4a8_awq"), ((_ADA, None),),
                "needs FP8 math: compute capability 8.9 (Ada) or newer"),
    Requirement("tensorrt", "algo", ("nvfp4",), ((_BLACKWELL, None),),
                "needs Blackwell: compute capability 10.0 or newer"),
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
"""Where the support matrix restricts a quantization (trtllm-build itself does not refuse
these, see ``refusals.NOT_ENFORCED``): kiln refuses them anyway. No FP8 KV cache limit:
docs/source/features/quantization.md@09d4c79 (hardware matrix) gives Ampere "FP8 KV Cache: Y",
and no 1.2.x source refuses it for trtllm-build (``refusals.ADMITTED``)."""


def _cc(sm: int) -> Capability:
    return sm // 10, sm % 10


Ranges = tuple[tuple[Capability, Capability | None], ...]


def _outside(rule: refusals.Rule) -> Ranges:
    """The capability ranges (from 8.0 up) a rule's ``[sm_min, sm_max)`` leaves free."""
    low = _cc(rule.sm_min) if rule.sm_min is not None else MIN_CAPABILITY
    ranges: list[tuple[Capability, Capability | None]] = []
    if low > MIN_CAPABILITY:
        ranges.append((MIN_CAPABILITY, low))
    if rule.sm_max is not None:
        ranges.append((_cc(rule.sm_max), None))
    return tuple(ranges)


def _span(rule: refusals.Rule) -> str:
    low = f"{rule.sm_min // 10}.{rule.sm_min % 10}" if rule.sm_min is not None else "8.0"
    if rule.sm_max is None:
        return f"{low} and newer"
    return f"{low} to below {rule.sm_max // 10}.{rule.sm_max % 10}"


def _refused() -> tuple[Requirement, ...]:
    """One requirement per quantization ``refuse`` rule of trtllm-build (backend tensorrt);
    rules with the same values and range are merged, their messages joined."""
    merged: dict[tuple[Part, tuple[str, ...], Ranges], list[str]] = {}
    spans: dict[tuple[Part, tuple[str, ...], Ranges], str] = {}
    for rule in refusals.RULES:
        if rule.action != "refuse" or rule.plugin is not None:
            continue
        part: Part = "algo" if rule.algos is not None else "kvCache"
        values = tuple(rule.algos if rule.algos is not None else rule.kv_cache or ())
        where = (part, values, _outside(rule))
        merged.setdefault(where, []).append(rule.effect)
        spans[where] = _span(rule)
    return tuple(
        Requirement("tensorrt", part, values, ranges,
                    "is refused by trtllm-build on compute capability "
                    f"{spans[part, values, ranges]} (" + " ".join(dict.fromkeys(effects)) + ")")
        for (part, values, ranges), effects in merged.items())


REQUIREMENTS: tuple[Requirement, ...] = (*_DOCUMENTED, *_refused())
"""Every restriction kiln knows: the support matrix's and trtllm-build's own refusals. The
CRD's CEL rules and docs/compatibility.md are generated from these."""


class Support(NamedTuple):
    """The answer of ``supports``: ``ok``, and when not, a ``reason`` a person can act on."""

    ok: bool
    reason: str = ""


_BY_NAME = {gpu.name: gpu for gpu in ALL}
_BY_PRODUCT = {product: gpu for gpu in ALL for product in gpu.products}


def names() -> list[str]:
    """Catalogue names in catalogue order (whole GPUs, then MIG slices)."""
    return [gpu.name for gpu in ALL]


def by_name(name: str) -> GPU:
    """The GPU called ``name``; KeyError (listing the known names) if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(names())}") from None


def by_product(product: str) -> GPU | None:
    """The GPU whose ``nvidia.com/gpu.product`` label is ``product``, or None.

    GPU Feature Discovery appends ``-SHARED`` (time-slicing: the same GPU) and
    ``-MIG-<profile>`` (a MIG slice: a GPU of its own, never its parent; a profile the
    catalogue does not list is made from the parent, with the profile's memory).
    """
    base = product.removesuffix("-SHARED")
    if found := _BY_PRODUCT.get(product) or _BY_PRODUCT.get(base):
        return found
    whole, _, profile = base.partition(MIG_SUFFIX)
    parent = _BY_PRODUCT.get(whole)
    if not profile or parent is None:
        return None
    return mig(parent, profile)


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
