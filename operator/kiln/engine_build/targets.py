"""Effective build targets: what each ``spec.targets`` entry (or auto target) resolves to."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.api import EngineBuildSpec, Target
from kiln.domain import catalogue
from kiln.domain.labels import CC_MAJOR_LABEL, CC_MINOR_LABEL, GPU_PRODUCT_LABEL


@dataclass(frozen=True)
class ResolvedTarget:
    """A target with the facts the key and the Job need."""

    name: str
    """Catalogue name, or ``cc<major.minor>`` for an explicit node selector."""
    gpu_product: str
    """``nvidia.com/gpu.product`` of the build nodes (the selector's, or the catalogue's)."""
    compute_capability: str
    node_selector: dict[str, str]
    """Labels every build node must carry (the compute capability among them)."""
    products: tuple[str, ...] = ()
    """Any of these ``nvidia.com/gpu.product`` values (a node affinity), when not empty."""


def _catalogue_target(gpu: catalogue.GPU) -> ResolvedTarget:
    major, minor = gpu.compute_capability.split(".")
    return ResolvedTarget(
        name=gpu.name,
        gpu_product=gpu.products[0],
        compute_capability=gpu.compute_capability,
        node_selector={CC_MAJOR_LABEL: major, CC_MINOR_LABEL: minor},
        products=gpu.products,
    )


def resolve(target: Target) -> ResolvedTarget:
    """A spec target → the nodes to build on; the compute capability is selected by label."""
    if target.gpu is not None:
        return _catalogue_target(catalogue.by_name(target.gpu))
    if target.node_selector is None or target.compute_capability is None:
        raise ValueError("a target needs gpu, or nodeSelector with computeCapability")
    major, minor = target.compute_capability.split(".")
    selector = {**target.node_selector, CC_MAJOR_LABEL: major, CC_MINOR_LABEL: minor}
    return ResolvedTarget(
        name=f"cc{target.compute_capability}",
        gpu_product=target.node_selector.get(GPU_PRODUCT_LABEL, f"cc{target.compute_capability}"),
        compute_capability=target.compute_capability,
        node_selector=selector,
    )


def for_product(product: str, compute_capability: str) -> ResolvedTarget:
    """An auto target: a GPU product seen in a serving pool."""
    gpu = catalogue.by_product(product)
    major, minor = compute_capability.split(".")
    return ResolvedTarget(
        name=gpu.name if gpu else product,
        gpu_product=product,
        compute_capability=compute_capability,
        node_selector={GPU_PRODUCT_LABEL: product, CC_MAJOR_LABEL: major, CC_MINOR_LABEL: minor},
    )


def effective(spec: EngineBuildSpec, auto_products: list[str]) -> list[ResolvedTarget]:
    """Spec targets, then auto targets (``product`` or ``product@cc``) not already covered."""
    resolved = [resolve(t) for t in spec.targets]
    seen = {t.gpu_product for t in resolved}
    for entry in auto_products:
        product, _, cc = entry.partition("@")
        if product in seen:
            continue
        gpu = catalogue.by_product(product)
        cc = cc or (gpu.compute_capability if gpu else "")
        if cc:
            resolved.append(for_product(product, cc))
            seen.add(product)
    return resolved
