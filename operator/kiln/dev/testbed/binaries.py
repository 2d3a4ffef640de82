"""Build the test bed's binaries from pinned Go modules, once, into a content-keyed cache."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import kiln

# One multi-call binary for the Kubernetes components and etcd (one compile, one link);
# kwok and helm pin Kubernetes libraries of their own, so each is its own Go module.
MULTICALL = "kiln-testbed"
MULTICALL_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
TOOLS = {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "helm": "helm.sh/helm/v3/cmd/helm"}
KUEUE_MODULE = "sigs.k8s.io/kueue"
KUEUE_CRDS = "config/components/crd/bases"
"""Kueue's CRDs, as its Go module ships them (next to its manager's sources)."""
ON_DEMAND = ("kueue",)
"""Modules built only when a test asks (``ensure_kueue``), into a cache of their own: the
other binaries' cache key leaves them out."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the built binaries."""

    bin_dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.bin_dir / name

    def __str__(self) -> str:
        return str(self.bin_dir)


def source_dir() -> Path:
    """The ``testbed/`` Go modules of this checkout (or ``KILN_TESTBED_SRC``)."""
    if env := os.environ.get("KILN_TESTBED_SRC"):
        return Path(env)
    return Path(kiln.__file__).resolve().parents[2] / "testbed"


def cache_root() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def inputs_hash(src: Path) -> str:
    """Hash of everything the build depends on: Go sources, go.mod/go.sum, Go version (of
    ``src`` less the ``ON_DEMAND`` modules, when ``src`` is the whole ``testbed/``)."""
    digest = hashlib.sha256()
    go_version = subprocess.run(["go", "version"], capture_output=True, text=True, check=True)
    digest.update(go_version.stdout.encode())
    skipped = tuple(src / name for name in ON_DEMAND)
    for path in sorted(p for p in src.rglob("*")
                       if p.is_file() and not any(p.is_relative_to(s) for s in skipped)):
        digest.update(str(path.relative_to(src)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _version_flags(go_mod: Path) -> str:
    """Stamp the Kubernetes version a release build would carry (helm and kubectl read it)."""
    match = re.search(r"^\s*k8s\.io/kubernetes (v(\d+)\.(\d+)\.\d+)", go_mod.read_text(), re.M)
    if match is None:
        return ""
    package = "k8s.io/component-base/version"
    version, major, minor = match.groups()
    return (f" -X {package}.gitVersion={version} -X {package}.gitMajor={major}"
            f" -X {package}.gitMinor={minor} -X {package}.gitTreeState=clean")


def _go(args: list[str], cwd: Path, verbose: bool) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -buildvcs=false"}
    started = time.monotonic()
    if verbose:
        print(f"testbed: go {' '.join(args)} (in {cwd.name}/)", file=sys.stderr, flush=True)
    subprocess.run(["go", *args], cwd=cwd, env=env, check=True)
    if verbose:
        print(f"testbed: done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def ensure_built(*, verbose: bool = False) -> Binaries:
    """Return the cached binaries for this checkout's ``testbed/``, building them if missing."""
    if env := os.environ.get("KILN_TESTBED_BIN"):
        return Binaries(Path(env))
    src = source_dir()
    if not (src / "kube" / "go.mod").is_file():
        raise FileNotFoundError(f"no test bed sources at {src}: run from a kiln checkout")
    root = cache_root() / "testbed"
    target = root / inputs_hash(src)
    if (target / ".complete").is_file():
        return Binaries(target)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return Binaries(target)
        staging = root / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        ldflags = "-ldflags=-s -w"
        _go(["build", ldflags + _version_flags(src / "kube" / "go.mod"), "-o",
             str(staging / MULTICALL), "."], src / "kube", verbose)
        for name in MULTICALL_NAMES:
            (staging / name).symlink_to(MULTICALL)
        for name, package in TOOLS.items():
            _go(["build", ldflags, "-o", str(staging / name), package], src / name, verbose)
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return Binaries(target)


def ensure_kueue(*, verbose: bool = False) -> Path:
    """Kueue's manager and its CRDs (``kueue``, ``crds/``), built from the pinned module on
    first use into a cache of their own."""
    src = source_dir() / "kueue"
    root = cache_root() / "testbed-kueue"
    target = root / inputs_hash(src)
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target
        staging = root / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _go(["build", "-ldflags=-s -w", "-o", str(staging / "kueue"), f"{KUEUE_MODULE}/cmd/kueue"],
            src, verbose)
        module = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", KUEUE_MODULE], cwd=src,
                                capture_output=True, text=True, check=True).stdout.strip()
        (staging / "crds").mkdir()
        for crd in sorted((Path(module) / KUEUE_CRDS).glob("*.yaml")):
            shutil.copyfile(crd, staging / "crds" / crd.name)  # the module cache is read-only
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
