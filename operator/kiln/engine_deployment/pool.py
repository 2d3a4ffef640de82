"""The serving pool: GPU nodes as GPU Feature Discovery labels them, grouped by product."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kiln import catalogue
from kiln.labels import CC_MAJOR_LABEL, CC_MINOR_LABEL, GPU_PRODUCT_LABEL


@dataclass(frozen=True)
class GpuNode:
    """One node with GPUs: its product, compute capability and labels."""

    name: str
    product: str
    compute_capability: str
    labels: tuple[tuple[str, str], ...]

    def matches(self, selector: Mapping[str, str] | None) -> bool:
        labels = dict(self.labels)
        return all(labels.get(k) == v for k, v in (selector or {}).items())


def gpu_node(node: Mapping[str, Any]) -> GpuNode | None:
    """A Node (a dict) as a GpuNode; None without a product label or a known capability."""
    meta = node.get("metadata") or {}
    labels: dict[str, str] = dict(meta.get("labels") or {})
    product = labels.get(GPU_PRODUCT_LABEL)
    if not product:
        return None
    major, minor = labels.get(CC_MAJOR_LABEL), labels.get(CC_MINOR_LABEL)
    if major and minor:
        cc = f"{major}.{minor}"
    else:
        gpu = catalogue.by_product(product)
        if gpu is None:
            return None
        cc = gpu.compute_capability
    return GpuNode(str(meta.get("name", "")), product, cc, tuple(sorted(labels.items())))


def pool_products(nodes: Iterable[GpuNode],
                  selector: Mapping[str, str] | None) -> dict[str, str]:
    """GPU products of the nodes ``selector`` picks, with their compute capability."""
    found: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        if node.matches(selector):
            found.setdefault(node.product, node.compute_capability)
    return dict(sorted(found.items()))
