"""GPUs as NVIDIA's DRA driver publishes them in ResourceSlices, and a CEL selector for a
target's GPU on its attributes. Pure data and one render function.

Names from NVIDIA/k8s-dra-driver-gpu (its ``main`` of 2026-05): the driver
(``cmd/gpu-kubelet-plugin/main.go`` DriverName), the DeviceClass of whole GPUs
(``deployments/helm/dra-driver-nvidia-gpu/templates/deviceclass-gpu.yaml``), a GPU's attributes
(``cmd/gpu-kubelet-plugin/deviceinfo.go`` GpuInfo.Attributes; a MIG slice's in ``mig.go``):
``productName`` is NVML's name with its spaces (``NVIDIA H100 80GB HBM3``), where GPU Feature
Discovery's ``nvidia.com/gpu.product`` joins the words with '-' after dropping characters
outside ``[A-Za-z0-9-_. ]`` (NVIDIA/k8s-device-plugin ``internal/lm/resource.go`` sanitise);
``cudaComputeCapability`` is a version (Masterminds semver of ``9.0``: ``9.0.0``).
"""

from __future__ import annotations

DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
"""The driver's DeviceClass of whole GPUs (its selector: the driver, ``type == 'gpu'``)."""
DEVICE_TYPE = ("type", "gpu")
"""The ``type`` attribute of a whole GPU (``cmd/gpu-kubelet-plugin/types.go`` GpuDeviceType)."""
PRODUCT_NAME = "productName"
ARCHITECTURE = "architecture"
COMPUTE_CAPABILITY = "cudaComputeCapability"
DRIVER_VERSION = "driverVersion"
UUID = "uuid"
API_VERSION = "resource.k8s.io/v1"
"""DRA's GA API (Kubernetes 1.34 on; the test bed's 1.37 serves it)."""


def semver(compute_capability: str) -> str:
    """``9.0`` as the driver publishes it: ``9.0.0``."""
    major, minor = compute_capability.split(".")
    return f"{int(major)}.{int(minor)}.0"


def gfd_product(product_name: str) -> str:
    """GPU Feature Discovery's ``nvidia.com/gpu.product`` of an NVML product name."""
    kept = "".join(c for c in product_name if c.isascii() and (c.isalnum() or c in "-_. "))
    return "-".join(kept.split())


def selector(gfd_product_label: str, compute_capability: str) -> str:
    """CEL that matches a GPU of GFD product ``gfd_product_label`` and compute capability
    ``compute_capability`` on the driver's attributes. The product is compared as GFD would
    label it (spaces as '-'), so one catalogue name serves both; product names with other
    characters GFD drops are not matched."""
    gpu = f"device.attributes['{DRIVER}']"
    return (f"{gpu}.{PRODUCT_NAME}.replace(' ', '-') == '{gfd_product_label}' && "
            f"{gpu}.{COMPUTE_CAPABILITY}.compareTo(semver('{semver(compute_capability)}'))"
            " == 0")
