"""``kiln fetch-engine``: the serving pod's init container.

Downloads an engine from the store (every file's sha256 checked) after making sure this
node's GPU has the compute capability the engine was built for, or, for the PyTorch
fallback, the checkpoint from its source. Optionally writes a Triton model repository.
Each failure has its exit code (:mod:`kiln.contract.exitcodes`) and a structured message in
the termination log (:mod:`kiln.contract.termination`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kiln.contract import env as names
from kiln.contract import provenance, termination, version_guard
from kiln.contract.key import short_key
from kiln.contract.manifest import MANIFEST, Manifest
from kiln.errors import (
    GPUMismatch,
    IntegrityError,
    InvalidInput,
    InvalidTask,
    NotFound,
    Untrusted,
)
from kiln.store import open_store
from kiln.store.base import sha256_file


@dataclass(frozen=True)
class Capability:
    """This node's GPU compute capabilities and where they were read."""

    values: tuple[str, ...]
    source: str


def _nvidia_smi(env: Mapping[str, str]) -> tuple[str, ...]:
    binary = shutil.which(env.get(names.NVIDIA_SMI) or "nvidia-smi")
    if binary is None:
        return ()
    try:
        out = subprocess.run([binary, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(sorted({line.strip() for line in out.splitlines() if line.strip()}))


def node_capability(env: Mapping[str, str]) -> Capability | None:
    """From ``nvidia-smi`` when it answers, else from ``KILN_GPU_COMPUTE_CAPABILITY``."""
    found = _nvidia_smi(env)
    if found:
        return Capability(found, "nvidia-smi")
    if value := (env.get(names.GPU_COMPUTE_CAPABILITY) or "").strip():
        return Capability((value,), names.GPU_COMPUTE_CAPABILITY)
    return None


def check_gpu(manifest: Manifest, node: Capability | None) -> str:
    """Raise GPUMismatch unless every GPU here has the manifest's compute capability."""
    wanted = str(manifest.inputs.get("computeCapability") or "")
    product = manifest.inputs.get("gpuProduct") or "its GPU"
    if not wanted:
        return f"engine {manifest.key} records no compute capability; not checked"
    if node is None:
        return (f"this node's compute capability is unknown (no nvidia-smi, no "
                f"{names.GPU_COMPUTE_CAPABILITY}); engine {manifest.key} needs {wanted}")
    other = [cc for cc in node.values if cc != wanted]
    if other:
        raise GPUMismatch(
            f"engine {manifest.key} was built for compute capability {wanted} ({product}), "
            f"but this node's GPU has compute capability {', '.join(node.values)} (from "
            f"{node.source}): a TensorRT engine only runs on the compute capability it was "
            "built for. The pod landed on the wrong GPU: check the Deployment's node "
            "selector and the node's nvidia.com/gpu.product label")
    return f"GPU compute capability {wanted} matches engine {short_key(manifest.key)}"


def _present(dest: Path, manifest: Manifest) -> bool:
    """Whether ``dest`` already holds exactly this engine (a restarted init container)."""
    try:
        local = Manifest.model_validate_json((dest / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    if local.key != manifest.key or local.upload != manifest.upload:
        return False
    return all((dest / f.path).is_file() and sha256_file(dest / f.path) == f.sha256
               for f in manifest.files)


def fetch_engine(store_uri: str, key: str, dest: Path, env: Mapping[str, str],
                 upload: str | None = None) -> str:
    """Check the GPU, then download engine ``key`` (its ``upload``, when given: the one the
    operator verified); returns what was done."""
    store = open_store(store_uri, credentials=names.store_credentials(env),
                       endpoint_url=names.store_endpoint(env))
    manifest_bytes = store.read_manifest_bytes(key)
    if manifest_bytes is None:
        raise NotFound(f"engine {key} is not in {store.uri} (no manifest): was it deleted? "
                       "This report makes the EngineBuild that wants it look, and build it "
                       "again")
    trusted = provenance.public_keys(env.get(names.TRUSTED_KEYS) or "")
    verified = provenance.verify(key, manifest_bytes, store.read_envelope(key), trusted,
                                 env.get(names.BUILD_NAMESPACE) or None)
    manifest = verified.manifest
    if upload and manifest.upload != upload:
        raise Untrusted(f"engine {short_key(key)}: the store holds upload {manifest.upload!r}, "
                        f"but this Deployment pins upload {upload!r}, the one the operator "
                        "verified: another signed upload of the key (an older one restored?) "
                        "is refused")
    print(f"kiln fetch-engine: engine {short_key(key)} is signed by a trusted key "
          f"({', '.join(sorted(k[:12] for k in verified.keyids))}), built by Job "
          f"{verified.job.namespace}/{verified.job.name}", file=sys.stderr)
    said = check_gpu(manifest, node_capability(env))
    print(f"kiln fetch-engine: {said}", file=sys.stderr)
    if _present(dest, manifest):
        return f"engine {short_key(key)} already in {dest}, every sha256 checked"
    try:
        store.download(key, dest, manifest=manifest)
    except IntegrityError as error:
        raise IntegrityError(f"engine {key}: {error.message}. This report makes the "
                             "EngineBuild that wants it check the stored engine, set it aside "
                             "if it is damaged, and build it again") from None
    return (f"engine {short_key(key)}: {len(manifest.files)} file(s), "
            f"{manifest.total_bytes} bytes, every sha256 checked, in {dest}")


def fetch_checkpoint(source_uri: str, revision: str | None, dest: Path,
                     env: Mapping[str, str]) -> str:
    """Download the checkpoint the PyTorch fallback serves."""
    from kiln.sources import open_source

    source = open_source(source_uri, credentials=names.credentials(env), revision=revision,
                         endpoint_url=env.get(names.ENDPOINT))
    identity = source.download(dest)
    return f"checkpoint {source_uri} ({short_key(identity.digest)}) in {dest}"


def write_repository(repo: Path, files: Mapping[str, str]) -> None:
    """Write a model repository's files (relative paths, no ``..``)."""
    for rel, text in files.items():
        if rel.startswith("/") or ".." in rel.split("/"):
            raise InvalidInput(f"{rel!r} is not a relative path inside the repository")
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


GUARD = Path(version_guard.__file__)
"""The version guard the server container runs before the server (standard library only)."""


def install_guard(directory: Path) -> Path:
    """Copy the version guard into ``directory`` (a volume the server container mounts)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / GUARD.name
    shutil.copyfile(GUARD, target)
    return target


def run(*, store: str | None, key: str | None, source: str | None, revision: str | None,
        dest: Path, model_repo: Path | None, env: Mapping[str, str] | None = None,
        guard_dir: Path | None = None, upload: str | None = None) -> int:
    """The command: engine (``store`` + ``key``) or checkpoint (``source``) into ``dest``."""
    env = dict(os.environ) if env is None else env
    try:
        if store and key:
            done = fetch_engine(store, key, dest, env, upload)
        elif source:
            done = fetch_checkpoint(source, revision, dest, env)
        else:
            raise InvalidTask("give --store and --key, or --source")
        if model_repo is not None:
            write_repository(model_repo, json.loads(env.get(names.MODEL_REPO_FILES) or "{}"))
        if guard_dir is not None:
            install_guard(guard_dir)
    except Exception as error:  # every failure: its exit code and a structured message
        _, failure = termination.failure_of(error)
        print(f"kiln fetch-engine: {failure.reason}: {failure.message}", file=sys.stderr)
        return termination.fail(error, env, key)
    print(f"kiln fetch-engine: {done}", file=sys.stderr)
    return termination.succeed({"key": key, "message": done}, env)
