"""The serving container's version guard: refuse an engine built with another TensorRT-LLM or
TensorRT than this image has, or for a CUDA major this node's driver is too old for, before
the server loads it (TensorRT's and CUDA's own refusals are opaque); and, run as the
``place-artifacts`` init container, place an engine's artifact set only when this node's GPU
and driver and this image's versions are those it was made with (``--place-artifacts``;
kiln.contract.warmup).

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
import shutil
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
older than the minimum run a newer CUDA (same guide, "Forward Compatibility"). Having them is
not proof they work (data-center GPUs and some driver branches only): the driver API, when it
loads, says (``driver_cuda``); only without it does the directory stand in."""
CUDA_INIT_REFUSALS = {803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
                      804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"}
"""``cuInit`` errors of a forward-compatibility setup that cannot run (CUDA driver API,
``CUresult``)."""


def driver_cuda() -> tuple[int, int] | None:
    """``(cuInit's result, cuDriverGetVersion)`` of the libcuda this process loads (the
    compatibility libraries included, e.g. ``13000`` for CUDA 13.0), or None without one."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    init = int(lib.cuInit(0))
    if int(lib.cuDriverGetVersion(ctypes.byref(version))) != 0:
        return None
    return init, int(version.value)


def driver_cannot_run(cuda: str | None, probe: tuple[int, int]) -> str | None:
    """``cuda: ...`` when the loaded driver cannot run ``cuda``'s major, else None."""
    init, supported = probe
    if init in CUDA_INIT_REFUSALS:
        return (f"cuda: this node's driver cannot run this image's CUDA {cuda} "
                f"(cuInit: {CUDA_INIT_REFUSALS[init]}: forward compatibility does not work "
                "on this GPU or driver branch)")
    with contextlib.suppress(ValueError, AttributeError):
        major = int(str(cuda).split(".")[0])
        if supported // 1000 < major:
            return (f"cuda: engine built for CUDA {cuda}; this node's driver supports CUDA "
                    f"{supported // 1000}.{supported % 1000 // 10} at most")
    return None


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
    cuda = recorded.get(CUDA) or cuda_version()
    probe = driver_cuda() if cuda else None
    if probe is not None:  # the driver API of this image on this node: compat libs included
        refused = driver_cannot_run(str(cuda), probe)
        out += [refused] if refused else []
    elif not CUDA_COMPAT.is_dir():
        old_driver = driver_too_old(str(cuda), node_driver())
        out += [old_driver] if old_driver else []
    return out


_CUDA = re.compile(r"""^cuda\s*(?::[^=]*)?=\s*["']([^"']+)["']""", re.MULTILINE)


def cuda_runtime() -> str | None:
    """The CUDA runtime torch was built with (``torch/version.py``'s ``cuda``), unimported."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "version.py"
        match = _CUDA.search(path.read_text(errors="replace")) if path.is_file() else None
        if match:
            return match.group(1)
    return None


def gpu_facts(nvidia_smi: str | None) -> dict[str, str] | None:
    """The first GPU's name, compute capability and driver, as ``nvidia-smi`` tells them."""
    binary = shutil.which(nvidia_smi or "nvidia-smi")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--query-gpu=name,compute_cap,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(parts):
            return {"gpu_name": parts[0], "compute_capability": parts[1],
                    "driver_version": parts[2]}
    return None


ABSENT = "none"


def artifact_versions(versioned: dict[str, list[str]]) -> dict[str, str]:
    """This image's version of each package a set depends on (``none`` where it has none),
    and of the CUDA runtime torch was built with."""
    found = versions({k: tuple(v) for k, v in versioned.items()})
    return {**{k: found.get(k, ABSENT) for k in versioned}, "cuda": cuda_runtime() or ABSENT}


def artifact_problems(report: dict[str, object], gpu: dict[str, str] | None,
                      here: dict[str, str]) -> list[str]:
    """Why a set made as ``report`` (``artifacts/report.json``, camelCase) says must not be
    loaded here; empty: it may."""
    if gpu is None:
        return ["this node's GPU is unknown (nvidia-smi did not answer)"]
    out = [f"{what}: made on {report.get(made)!s}, this node has {gpu.get(here)}"
           for what, made, here in (("GPU", "gpuName", "gpu_name"),
                                    ("compute capability", "computeCapability",
                                     "compute_capability"),
                                    ("driver", "driverVersion", "driver_version"))
           if str(report.get(made) or "") != gpu.get(here)]
    made = report.get("versions")
    made = made if isinstance(made, dict) else {}
    versioned = report.get("versioned")
    for name in sorted({*made, *(versioned if isinstance(versioned, dict) else {}), "cuda"}):
        if name not in made:  # fail closed: what a set does not say it was made with
            out.append(f"{name}: the set does not record its version")
        elif normalize(str(here.get(name) or ABSENT)) != normalize(str(made[name])):
            out.append(f"{name}: made with {made[name]}, this image has "
                       f"{here.get(name) or ABSENT}")
    return out


def _empty(dest: Path) -> None:
    """Nothing in ``dest`` (a restarted pod's volume may hold an earlier placement)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in dest.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _copy(source: Path, dest: Path) -> int:
    """Regular files only, writable by any user (the server may run as another one and
    writes its caches on)."""
    copied = 0
    for path in sorted(source.rglob("*")) if source.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o666)
        copied += 1
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        folder.chmod(0o777)
    return copied


def place_artifacts(engine: Path, dest: Path, nvidia_smi: str | None) -> tuple[str, str]:
    """Copy the engine's artifact set to ``dest`` when it was made for this node and image;
    else leave ``dest`` empty. Returns the state (``Placed``, ``Stale`` or ``None``) and a
    sentence; never raises (a set is an optimisation: the server starts without it)."""
    try:
        _empty(dest)
        report_path = engine / "artifacts" / "report.json"
        if not report_path.is_file():
            return "None", "the engine has no artifact set"
        report = json.loads(report_path.read_text())
        if not isinstance(report, dict):
            raise ValueError("report.json is not an object")
        versioned = report.get("versioned")
        problems = artifact_problems(report, gpu_facts(nvidia_smi), artifact_versions(
            versioned if isinstance(versioned, dict) else {}))
        if problems:
            return "Stale", ("artifact set not loaded, the server starts without it: "
                             + "; ".join(problems))
        copied = _copy(engine / "artifacts" / "cache", dest)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        with contextlib.suppress(OSError):
            _empty(dest)
        return "Stale", f"artifact set not loaded, the server starts without it: {error}"
    return "Placed", (f"artifact set of {report.get('runtime')} placed ({copied} file(s)), made "
                      f"on {report.get('gpuName')} with driver {report.get('driverVersion')}")


def _place(args: argparse.Namespace) -> int:
    log = os.environ.get(args.termination_log_from) if args.termination_log_from else None
    if log:
        args.termination_log = Path(log)
    binary = os.environ.get(args.nvidia_smi_from) if args.nvidia_smi_from else None
    state, message = place_artifacts(args.engine, args.place_artifacts, binary)
    print(f"artifacts: {state}: {message}", file=sys.stderr)
    if args.termination_log is not None:
        body = {"artifacts": state, "message": message[:3500]}
        with contextlib.suppress(OSError):
            args.termination_log.write_text(json.dumps(body, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="version_guard", description=__doc__)
    p.add_argument("engine", type=Path, nargs="?",
                   help="the engine directory (with manifest.json)")
    p.add_argument("--exit-code", type=int)
    p.add_argument("--reason", default="VersionMismatch")
    p.add_argument("--termination-log", type=Path, default=None)
    p.add_argument("--print-artifact-versions", metavar="JSON", default=None,
                   help="print this image's versions of {module: [distributions]} and of "
                        "the CUDA runtime, as an artifact set records them, and exit")
    p.add_argument("--print-versions", metavar="JSON", default=None,
                   help="print the versions of {module: [distributions]} as JSON and exit "
                        "(the builder records them this way)")
    p.add_argument("--place-artifacts", metavar="DIR", type=Path, default=None,
                   help="copy the engine's artifact set to DIR when it was made for this node's "
                        "GPU and driver and this image's versions; always exits 0")
    p.add_argument("--termination-log-from", metavar="VAR", default=None,
                   help="an environment variable that may name the termination log instead")
    p.add_argument("--nvidia-smi-from", metavar="VAR", default=None,
                   help="an environment variable that may name the nvidia-smi to ask")
    args = p.parse_args(argv)
    if args.place_artifacts is not None and args.engine is not None:
        return _place(args)
    if args.print_artifact_versions is not None:
        print(json.dumps(artifact_versions(json.loads(args.print_artifact_versions))))
        return 0
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
