"""NVIDIA's DRA driver as the test bed's fake GPU nodes would publish it: its DeviceClass and
one ResourceSlice per GPU node (``kiln.domain.dra``: the driver's names), so the real
scheduler allocates ResourceClaims on them. Published on demand (``publish``): most tests
select GPUs by GFD labels and extended resources only."""

from __future__ import annotations

from typing import Any

from kiln.dev.testbed.cluster import Cluster
from kiln.dev.testbed.nodes import DEFAULT_POOLS, Pool
from kiln.domain import dra

GROUP, VERSION = dra.API_VERSION.split("/")


def device_class() -> dict[str, Any]:
    """The driver's DeviceClass of whole GPUs (its Helm chart's ``deviceclass-gpu.yaml``,
    less ``extendedResourceName``: the fake nodes' ``nvidia.com/gpu`` stays the device
    plugin's)."""
    kind, gpu = dra.DEVICE_TYPE
    return {"apiVersion": dra.API_VERSION, "kind": "DeviceClass",
            "metadata": {"name": dra.DEVICE_CLASS},
            "spec": {"selectors": [{"cel": {"expression": (
                f"device.driver == '{dra.DRIVER}' && "
                f"device.attributes['{dra.DRIVER}'].{kind} == '{gpu}'")}}]}}


def resource_slice(pool: Pool, node: str) -> dict[str, Any]:
    """The slice a node's kubelet plugin publishes: its GPUs, with their attributes."""
    kind, gpu = dra.DEVICE_TYPE
    devices = [{"name": f"gpu-{i}", "attributes": {
        kind: {"string": gpu},
        dra.UUID: {"string": f"GPU-{node}-{i}"},
        dra.PRODUCT_NAME: {"string": pool.product_name},
        dra.ARCHITECTURE: {"string": pool.architecture},
        dra.COMPUTE_CAPABILITY: {"version": dra.semver(f"{pool.compute[0]}.{pool.compute[1]}")},
        dra.DRIVER_VERSION: {"version": "580.95.5"},
    }, "capacity": {"memory": {"value": f"{pool.memory_mib}Mi"}}} for i in range(pool.gpus)]
    return {"apiVersion": dra.API_VERSION, "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-{dra.DRIVER}"},
            "spec": {"driver": dra.DRIVER, "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": devices}}


def publish(cluster: Cluster, pools: tuple[Pool, ...] = DEFAULT_POOLS) -> None:
    """Create the DeviceClass and a ResourceSlice for every node of ``pools`` with whole
    GPUs (MIG pools are the driver's ``mig`` devices: not published)."""
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client)
    api.create_cluster_custom_object(GROUP, VERSION, "deviceclasses", device_class())
    for pool in pools:
        if pool.product_name and not pool.mig_profile:
            for node in pool.node_names():
                api.create_cluster_custom_object(GROUP, VERSION, "resourceslices",
                                                 resource_slice(pool, node))
