"""The serving container's version guard: refuse an engine built with another TensorRT-LLM or
TensorRT than this image has, or for a CUDA major this node's driver is too old for, before
the server loads it (TensorRT's and CUDA's own refusals are opaque).

Runs in the server image, which has no kiln: the standard library only, and every name of the
operator/pod contract (exit code, termination log) comes on the command line, rendered from
:mod:`kiln.contract`. ``kiln fetch-engine --guard-dir`` copies this file next to the engine.
Versions are read from the packages Python would import (``tensorrt_llm/version.py``,
``__version__``), else from their distributions' metadata; the builder records them with this
same file (``--print-versions``, kiln.builder.toolchain), and they are compared in PEP 440
normal form (``packaging.version`` when the image has it, else ``normalize``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CHECKED = {"tensorrt_llm": ("tensorrt_llm", "tensorrt-llm"),
           "tensorrt": ("tensorrt", "tensorrt_cu13", "tensorrt-cu13", "tensorrt_cu12",
                        "tensorrt-cu12")}
"""Manifest version key → the module, then distributions that may carry it."""
_VERSION = re.compile(r"""^__version__\s*[:=][^"']*["']([^"']+)["']""", re.MULTILINE)
CUDA = "cuda"
"""Manifest version key of the CUDA toolkit the toolchain was built with (``CUDA_VERSION``,
which NVIDIA's images set, else ``/usr/local/cuda/version.json``)."""
CUDA_DRIVER_MINIMUM = {13: 580, 12: 525, 11: 450}
"""CUDA major → the oldest NVIDIA driver branch that runs it (Linux). NVIDIA, CUDA
Compatibility, "Minor Version Compatibility", Table 1 (CUDA 13.x >= 580, 12.x >= 525, 11.x >=
450): docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html. TensorRT-LLM
1.2.1 is a CUDA 13 build."""
CUDA_COMPAT = Path("/usr/local/cuda/compat")
"""The forward-compatibility libraries (``cuda-compat``) that let some data-center drivers
older than the minimum run a newer CUDA (same guide, "Forward Compatibility"): an image that
has them is not refused here."""


def cuda_version() -> str | None:
    """The CUDA toolkit version of this image, if it says."""
    if os.environ.get("CUDA_VERSION"):
        return os.environ["CUDA_VERSION"]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads(Path("/usr/local/cuda/version.json").read_text())["cuda"]["version"]
        return str(found)
    return None


def node_driver() -> str | None:
    """The NVIDIA driver version of this node (``nvidia-smi``, else ``/proc``), if readable."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        if out:
            return out[0]
    with contextlib.suppress(OSError):
        match = re.search(r"Kernel Module\s+([0-9.]+)",
                          Path("/proc/driver/nvidia/version").read_text())
        if match:
            return match.group(1)
    return None


def driver_too_old(cuda: str | None, driver: str | None) -> str | None:
    """``cuda: ...`` when ``driver`` is older than ``cuda``'s major needs, else None."""
    with contextlib.suppress(ValueError, AttributeError):
        need = CUDA_DRIVER_MINIMUM.get(int(str(cuda).split(".")[0]))
        if need is not None and driver and int(driver.split(".")[0]) < need:
            return (f"cuda: engine built for CUDA {cuda}, which needs an NVIDIA driver >= "
                    f"{need}; this node's driver is {driver}")
    return None


def installed(module: str, distributions: tuple[str, ...]) -> str | None:
    """The version of ``module`` as this image would import it, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in ("version.py", "__init__.py"):
            path = Path(folder) / name
            match = _VERSION.search(path.read_text(errors="replace")) if path.is_file() else None
            if match:
                return match.group(1)
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


_PRE = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "c": "rc", "rc": "rc", "pre": "rc",
        "preview": "rc"}
_PEP440 = re.compile(r"^v?(?P<release>[0-9]+(?:\.[0-9]+)*)"
                     r"(?:[-_.]?(?P<pre>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pren>[0-9]*))?"
                     r"(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post>[0-9]*))?"
                     r"(?:[-_.]?dev[-_.]?(?P<dev>[0-9]*))?"
                     r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?$")


def normalize(version: str) -> str:
    """``version`` in PEP 440 normal form (``1.2.0-RC.1`` → ``1.2.0rc1``); as it is when it is
    not a PEP 440 version."""
    text = version.strip().lower()
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        pass
    else:
        try:
            return str(Version(text))
        except InvalidVersion:
            return text
    match = _PEP440.match(text)
    if not match:
        return text
    out = ".".join(str(int(n)) for n in match["release"].split("."))
    if match["pre"]:
        out += _PRE[match["pre"]] + str(int(match["pren"] or 0))
    if match["post"] is not None:
        out += f".post{int(match['post'] or 0)}"
    if match["dev"] is not None:
        out += f".dev{int(match['dev'] or 0)}"
    if match["local"]:
        out += "+" + re.sub(r"[-_]", ".", match["local"])
    return out


def versions(checked: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``installed`` for each key (a module name) → its distributions; those found."""
    found = {key: cuda_version() if key == CUDA else installed(key, tuple(dists))
             for key, dists in checked.items()}
    return {key: version for key, version in found.items() if version}


def mismatches(manifest: dict[str, object]) -> list[str]:
    """``what: engine X, image Y`` for each checked version that differs (or is missing)."""
    versions = manifest.get("versions")
    recorded = versions if isinstance(versions, dict) else {}
    out = []
    for key, (module, *dists) in CHECKED.items():
        built = recorded.get(key)
        if not built:
            continue
        here = installed(module, (module, *dists))
        if here is None or normalize(here) != normalize(str(built)):
            out.append(f"{key}: engine built with {built}, this image has {here or 'none'}")
    if not CUDA_COMPAT.is_dir():
        old_driver = driver_too_old(str(recorded.get(CUDA) or cuda_version()), node_driver())
        out += [old_driver] if old_driver else []
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="version_guard", description=__doc__)
    p.add_argument("engine", type=Path, nargs="?",
                   help="the engine directory (with manifest.json)")
    p.add_argument("--exit-code", type=int)
    p.add_argument("--reason", default="VersionMismatch")
    p.add_argument("--termination-log", type=Path, default=None)
    p.add_argument("--print-versions", metavar="JSON", default=None,
                   help="print the versions of {module: [distributions]} as JSON and exit "
                        "(the builder records them this way)")
    args = p.parse_args(argv)
    if args.print_versions is not None:
        print(json.dumps(versions(json.loads(args.print_versions))))
        return 0
    if args.engine is None or args.exit_code is None:
        p.error("an engine directory and --exit-code are needed")
    path = args.engine / "manifest.json"
    if not path.is_file():
        print(f"version guard: no {path} (a checkpoint, not an engine): nothing to check",
              file=sys.stderr)
        return 0
    manifest = json.loads(path.read_text())
    backend = ((manifest.get("inputs") or {}).get("build") or {}).get("backend")
    if backend == "pytorch":
        print("version guard: a PyTorch-backend checkpoint: no engine to check", file=sys.stderr)
        return 0
    wrong = mismatches(manifest)
    if not wrong:
        print("version guard: the engine's TensorRT-LLM and TensorRT match this image, and "
              "the node's driver runs its CUDA", file=sys.stderr)
        return 0
    message = (f"engine {manifest.get('key', '?')} cannot run in this server image: "
               + "; ".join(wrong) + ". Use a server image with the builder image's versions "
               "(spec.server.image), or rebuild the engine with this image's toolchain; a "
               "driver too old for the CUDA major needs a newer driver on these nodes")
    print(f"version guard: {args.reason}: {message}", file=sys.stderr)
    if args.termination_log is not None:
        body = {"reason": args.reason, "message": message[:3500], "retryable": False,
                "exitCode": args.exit_code}
        with contextlib.suppress(OSError):
            args.termination_log.write_text(json.dumps(body, sort_keys=True))
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main())
