#!/usr/bin/env python3
"""What a fake GPU node's ``nvidia-smi`` would say, for the programs the test bed runs on it.

kwok nodes carry GPU Feature Discovery labels but no GPU; the local-process runner gives each
pod it runs ``KILN_NVIDIA_SMI`` pointing at this module (as a script) and ``KILN_TESTBED_GPU``
with its node's GPU as ``nvidia-smi`` names it (product label with spaces, compute capability
from the labels, driver from ``testbed.kiln.dev/driver-version``), so the builder's warm-up
records, and the serving pods' checks compare, per node facts a test can change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

GPU_ENV = "KILN_TESTBED_GPU"
DRIVER_LABEL = "testbed.kiln.dev/driver-version"
DEFAULT_DRIVER = "580.95.05"
SCRIPT = Path(__file__)


def facts(labels: dict[str, str]) -> str | None:
    """``name,compute_cap,driver_version`` for a node's labels; None for a node without GPU."""
    product = labels.get("nvidia.com/gpu.product")
    if not product:
        return None
    cc = f"{labels.get('nvidia.com/gpu.compute.major', '0')}." \
         f"{labels.get('nvidia.com/gpu.compute.minor', '0')}"
    return f"{product.replace('-', ' ')},{cc},{labels.get(DRIVER_LABEL, DEFAULT_DRIVER)}"


def env_for(node: Any) -> dict[str, str]:
    """The environment that makes this module the node's nvidia-smi."""
    said = facts(dict((node.metadata.labels or {}) if node is not None else {}))
    if said is None:
        return {}
    return {"KILN_NVIDIA_SMI": str(SCRIPT), GPU_ENV: said}


def main(argv: list[str]) -> int:
    """``--query-gpu=a,b,c --format=csv,noheader``: the fields asked for, in order."""
    name, cc, driver = (os.environ.get(GPU_ENV) or ",,").split(",")
    known = {"name": name, "compute_cap": cc, "driver_version": driver}
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), "name")
    if not name:
        print("No devices were found", file=sys.stderr)
        return 6
    print(", ".join(known.get(f.strip(), "[N/A]") for f in query.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
