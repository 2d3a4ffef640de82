"""The DRA selector's facts: GFD's product label of the driver's product name, the compute
capability as the driver's version."""

from __future__ import annotations

import pytest

from kiln.dev.testbed import nodes
from kiln.domain import dra


@pytest.mark.parametrize("pool", [nodes.A100, nodes.H100, nodes.L40S, nodes.H200],
                         ids=lambda p: p.name)
def test_the_test_beds_product_names_are_gfds_labels(pool: nodes.Pool) -> None:
    assert dra.gfd_product(pool.product_name) == pool.product


def test_gfd_drops_what_it_cannot_label() -> None:  # k8s-device-plugin resource.go sanitise
    assert dra.gfd_product("NVIDIA  GeForce RTX(TM) 4090") == "NVIDIA-GeForce-RTXTM-4090"


def test_the_selector_names_product_and_compute_capability() -> None:
    assert dra.selector("NVIDIA-H100-80GB-HBM3", "9.0") == (
        "device.attributes['gpu.nvidia.com'].productName.replace(' ', '-') == "
        "'NVIDIA-H100-80GB-HBM3' && device.attributes['gpu.nvidia.com'].cudaComputeCapability"
        ".compareTo(semver('9.0.0')) == 0")
    assert dra.semver("12.1") == "12.1.0"
