"""Fake nodes for kwok: GPU pools labelled as GPU Feature Discovery labels real ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.api.common import GPU_RESOURCE

POOL_LABEL = "testbed.kiln.dev/pool"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class Pool:
    """A set of identical nodes; ``product`` is None for CPU-only nodes."""

    name: str
    size: int = 2
    product: str | None = None
    family: str = ""
    compute: tuple[int, int] = (0, 0)
    memory_mib: int = 0
    gpus: int = 8
    mig_profile: str = ""
    """A MIG pool (GFD's single strategy): ``product`` ends in ``-MIG-<profile>``, ``gpus``
    counts slices, ``memory_mib`` is a slice's."""
    product_name: str = ""
    architecture: str = ""
    """As NVML (and NVIDIA's DRA driver, ``kiln.domain.dra``) name them; ``product`` is
    GFD's label of ``product_name``."""

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.size)]


A100 = Pool("a100", product="NVIDIA-A100-SXM4-80GB", family="ampere", compute=(8, 0),
            memory_mib=81920, product_name="NVIDIA A100-SXM4-80GB", architecture="Ampere")
H100 = Pool("h100", product="NVIDIA-H100-80GB-HBM3", family="hopper", compute=(9, 0),
            memory_mib=81559, product_name="NVIDIA H100 80GB HBM3", architecture="Hopper")
L40S = Pool("l40s", product="NVIDIA-L40S", family="ada-lovelace", compute=(8, 9),
            memory_mib=46068, product_name="NVIDIA L40S", architecture="Ada Lovelace")
H200 = Pool("h200", product="NVIDIA-H200", family="hopper", compute=(9, 0), memory_mib=143771,
            product_name="NVIDIA H200", architecture="Hopper")
A100_MIG = Pool("a100-mig", size=1, product="NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", family="ampere",
                compute=(8, 0), memory_mib=9728, gpus=56, mig_profile="1g.10gb")
"""Eight A100s cut in seven 1g.10gb slices each; not a default pool (``gpu: auto`` tests
would gain a product)."""
CPU = Pool("cpu")
DEFAULT_POOLS = (A100, H100, L40S, CPU)


def node_manifest(pool: Pool, name: str) -> dict[str, Any]:
    """A Node that kwok manages; GPU nodes carry GFD labels, capacity and the GPU taint."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
    }
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "2Ti"}
    taints: list[dict[str, str]] = []
    if pool.product:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": pool.product,
            "nvidia.com/gpu.family": pool.family,
            "nvidia.com/gpu.compute.major": str(pool.compute[0]),
            "nvidia.com/gpu.compute.minor": str(pool.compute[1]),
            "nvidia.com/gpu.memory": str(pool.memory_mib),
            "nvidia.com/gpu.count": str(pool.gpus),
        }
        if pool.mig_profile:  # NVIDIA/k8s-device-plugin internal/lm/mig-strategy.go
            labels |= {"nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "single",
                       "nvidia.com/gpu.slices.gi": "1", "nvidia.com/gpu.slices.ci": "1",
                       "nvidia.com/gpu.multiprocessors": "14"}
        capacity[GPU_RESOURCE] = str(pool.gpus)
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
