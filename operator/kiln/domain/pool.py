"""The serving pool: GPU nodes as GPU Feature Discovery labels them, grouped by product, and
the GPU products each EngineDeployment serves on (what its EngineBuild must build for).

Both controllers use it: the EngineDeployment controller to place Deployments, the EngineBuild
controller to compute ``status.autoTargets`` from the EngineDeployments that reference it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kiln.api import AUTO_GPU, EngineBuildSpec, EngineDeployment
from kiln.domain import catalogue
from kiln.domain.labels import CC_MAJOR_LABEL, CC_MINOR_LABEL, GPU_PRODUCT_LABEL


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


def served_before(ed: EngineDeployment) -> dict[str, str]:
    """Products the EngineDeployment's status says it serves or waits to serve, seen in the
    pool (product → compute capability): the memory of a product that has left the pool and
    drains (its Deployment kept, its engine still built)."""
    products = ed.status.products if ed.status else []
    return {p.gpu_product: p.compute_capability for p in products if p.compute_capability}


def served_products(ed: EngineDeployment, pool: Mapping[str, str]) -> dict[str, str]:
    """The GPU products to serve on (product → compute capability).

    ``auto``: every product in the pool, and those served before that left it (they drain).
    A catalogue name: its products present in the pool and those served before (draining),
    else its first product (the Deployment then waits for such nodes): the Deployment's name
    never changes because the pool changed. Raises KeyError for a name the catalogue does not
    know.
    """
    before = served_before(ed)
    if ed.spec.gpu == AUTO_GPU:
        return {**before, **pool}
    gpu = catalogue.by_name(ed.spec.gpu)
    present = {p: cc for p, cc in pool.items() if catalogue.by_product(p) is gpu}
    kept = {p: cc for p, cc in before.items() if catalogue.by_product(p) is gpu}
    return {**kept, **present} or {gpu.products[0]: gpu.compute_capability}


def needed_products(deployments: Iterable[EngineDeployment],
                    nodes: Iterable[GpuNode]) -> dict[str, str]:
    """GPU products the EngineDeployments serve on; an unknown GPU name needs nothing (that
    object is stalled)."""
    listed = list(nodes)
    products: dict[str, str] = {}
    for ed in deployments:
        try:
            products |= served_products(ed, pool_products(listed, ed.spec.pool.node_selector))
        except KeyError:
            continue
    return dict(sorted(products.items()))


def _covered(spec: EngineBuildSpec, product: str) -> bool:
    gpu = catalogue.by_product(product)
    for target in spec.targets:
        if gpu is not None and target.gpu == gpu.name:
            return True
        if target.gpu is None and (target.node_selector or {}).get(GPU_PRODUCT_LABEL) == product:
            return True
    return False


def _rank(product: str) -> tuple[int, str]:
    """The catalogue's first product of a GPU comes first."""
    gpu = catalogue.by_product(product)
    products = gpu.products if gpu else ()
    return (products.index(product) if product in products else len(products), product)


def auto_targets(spec: EngineBuildSpec, products: Mapping[str, str]) -> list[str]:
    """``product@cc`` for each product no spec target covers, one per catalogue GPU."""
    chosen: dict[str, str] = {}  # catalogue name (or the product itself) → product
    for product in sorted(products, key=_rank):
        gpu = catalogue.by_product(product)
        if not _covered(spec, product):
            chosen.setdefault(gpu.name if gpu else product, product)
    return sorted(f"{product}@{products[product]}" for product in chosen.values())
