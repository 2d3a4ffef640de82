"""One build, start to finish: weights in, a committed engine (or an error) out."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.builder import aot, disk, pytorch, tensorrt, toolchain, verify
from kiln.builder.checkpoint import Checkpoint
from kiln.builder.commands import CALIBRATION_DIR, DEFAULT_EXAMPLES, Paths
from kiln.builder.progress import Progress, human, say
from kiln.contract import env as names
from kiln.contract import layout, provenance
from kiln.contract.key import key_inputs, key_of, short_key
from kiln.contract.task import BuildTask
from kiln.errors import InvalidInput, InvalidTask, WeightsChanged
from kiln.sources import open_source
from kiln.store import open_store


@dataclass(frozen=True)
class Options:
    """How this builder runs (from flags and the environment, not from the task)."""

    workdir: Path
    min_free_bytes: int = 1 << 30
    """Free space kept beyond the estimate of what the build writes."""
    examples: Path = DEFAULT_EXAMPLES
    calib_dataset: str | None = None
    smoke: bool = True
    """Run a one-prompt generation when a GPU and TensorRT-LLM are present."""
    progress_interval: float = 5.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _weights_bytes(details: Mapping[str, Any]) -> int | None:
    """Total size of the weights, when the identity's details tell it (S3 does)."""
    value = details.get("bytes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fresh(paths: Paths) -> None:
    for d in (paths.weights, paths.checkpoint, paths.engine):
        shutil.rmtree(d, ignore_errors=True)
    paths.timing_cache.unlink(missing_ok=True)


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def build(task: BuildTask, options: Options) -> dict[str, Any]:
    """Build ``task`` and commit it to the store; returns the summary for the termination log."""
    started = time.monotonic()
    seconds: dict[str, float] = {}
    env = options.env
    spec = task.build
    say(f"building engine {short_key(task.key)} for {task.target.gpu_product} "
        f"(compute capability {task.target.compute_capability})", phase="start",
        backend=spec.backend, tp=spec.parallelism.tensor, pp=spec.parallelism.pipeline)
    inputs = _inputs(task)
    _check_endpoints(task, env)
    store = open_store(task.store, credentials=names.store_credentials(env),
                       endpoint_url=names.store_endpoint(env))
    trusted = provenance.public_keys(env.get(names.TRUSTED_KEYS) or "")

    def signed(key: str) -> bool:
        """Whether the stored engine is kiln's (signed): only then does it count."""
        try:
            provenance.verify(key, store.read_manifest_bytes(key), store.read_envelope(key),
                              trusted, env.get(names.BUILD_NAMESPACE) or None)
        except provenance.Untrusted as why:
            say(f"a manifest is in the store but does not count: {why.message}", phase="store")
            return False
        return True

    if store.has(task.key) and signed(task.key):
        manifest = store.read_manifest(task.key)
        say(f"engine {short_key(task.key)} is already in the store; nothing to build", phase="done")
        return _summary(task, manifest, seconds, cached=True)

    source = open_source(task.source.uri, revision=task.source.revision,
                         credentials=names.credentials(env) if task.source.credentials_from_env
                         else None, endpoint_url=env.get(names.ENDPOINT))
    identity = source.identity()
    if identity.digest != task.weights_identity:
        raise WeightsChanged(f"the weights at {task.source.uri} are now {identity.digest[:19]}, "
                             f"the task was made for {task.weights_identity[:19]}; the "
                             "operator builds the new weights under a new key")
    total = _weights_bytes(identity.details)
    options.workdir.mkdir(parents=True, exist_ok=True)
    paths = Paths.under(options.workdir)
    _fresh(paths)
    # weights, then a checkpoint and an engine of about their size; a plain PyTorch-backend
    # result is hard links to the weights, a quantized one a second copy
    factor = 3 if spec.backend == "tensorrt" else 2 if pytorch.quantized(task) else 1
    needed = (total or 0) * factor + options.min_free_bytes
    free = disk.require(options.workdir, needed, what=f"{spec.backend} build of "
                        f"{human(total) if total is not None else 'weights of unknown size'}")
    say(f"{human(free)} free in {options.workdir}", phase="disk")

    progress = Progress("download", total, interval=options.progress_interval)
    after = source.download(paths.weights, progress=progress.update)
    seconds["download"] = progress.finish()
    if after.digest != task.weights_identity:
        raise WeightsChanged(f"the weights at {task.source.uri} changed while they were "
                             f"downloaded (now {after.digest[:19]}); the operator builds the "
                             "new weights under a new key")

    calib_dataset = _calibration(task, options, paths, env) if spec.backend == "tensorrt" \
        else None
    versions = toolchain.versions()
    step = time.monotonic()
    checkpoint: Checkpoint
    built: dict[str, bool] = {}
    if spec.backend == "tensorrt":
        checkpoint, built = tensorrt.build(task, paths, store, versions, examples=options.examples,
                                    calib_dataset=calib_dataset)
    else:
        checkpoint = pytorch.prepare(task, paths, examples=options.examples)
    seconds["build"] = time.monotonic() - step
    say(f"{checkpoint.architecture}: result has {human(_dir_bytes(paths.engine))}",
        phase="verify", step="done")
    if options.smoke:
        _smoke(task, paths, versions)
    artifacts = None
    if task.warmup is not None:
        step = time.monotonic()
        artifacts = aot.capture(task.warmup, paths.engine, paths.engine, options.workdir, env)
        seconds["warmup"] = time.monotonic() - step

    build_seconds = time.monotonic() - started
    progress = Progress("upload", _dir_bytes(paths.engine), interval=options.progress_interval)
    upload = uuid.uuid4().hex[:16]
    manifest = store.upload(task.key, paths.engine, inputs=inputs,
                            versions=versions, build_seconds=build_seconds,
                            progress=progress.update, keep=signed, upload_id=upload,
                            built=built, overridden=verify.overridden(spec, built),
                            artifacts=artifacts)
    seconds["upload"] = progress.finish()
    seconds["total"] = time.monotonic() - started
    if manifest.upload != upload:  # a signed engine was committed meanwhile: that one counts
        return _summary(task, manifest, seconds, cached=True)
    say(f"engine {short_key(task.key)} committed", phase="done", seconds=f"{seconds['total']:.1f}")
    summary = _summary(task, manifest, seconds, cached=False)
    # What the operator checks before it signs: the manifest this pod wrote, by digest.
    summary |= {"upload": upload, "manifestSha256": provenance.sha256(manifest.to_json())}
    return summary


def _check_endpoints(task: BuildTask, env: Mapping[str, str]) -> None:
    """Refuse an environment that names another endpoint than the task's (by value, as the
    operator resolved it): a credentials Secret edited between the render and this pod's
    start would have the build read from a place no key names."""
    bound = task.source.endpoints
    if bound is None:
        return
    for name in names.ENDPOINTS:
        have, want = _url(env.get(name)), _url(bound.get(name))
        if have != want:
            raise InvalidInput(
                f"this build pod's {name} is {have or 'unset'}, but its task was rendered "
                f"for endpoint {want or 'unset'}: the credentials Secret changed after kiln "
                "rendered the Job? kiln builds only from the endpoint its task names",
                reason="EndpointMismatch")


def _url(value: str | None) -> str:
    return (value or "").strip().rstrip("/")


def _calibration(task: BuildTask, options: Options, paths: Paths,
                 env: Mapping[str, str]) -> str | None:
    """``spec.build.quantization.calibration`` fetched into the work directory (like the
    weights, with the model's credentials): its local path; else the operator's default."""
    calibration = task.build.quantization.calibration
    if calibration is None:
        return options.calib_dataset
    dest = paths.weights.parent / CALIBRATION_DIR
    shutil.rmtree(dest, ignore_errors=True)
    source = open_source(calibration.dataset,
                         credentials=names.credentials(env) if task.source.credentials_from_env
                         else None, endpoint_url=env.get(names.ENDPOINT), hf_repo_type="dataset")
    progress = Progress("calibration", None, interval=options.progress_interval)
    identity = source.download(dest, progress=progress.update)
    progress.finish()
    if task.calibration is not None and identity.digest != task.calibration.identity:
        raise WeightsChanged(f"the calibration data at {calibration.dataset} is now "
                             f"{identity.digest[:19]}, the task was made for "
                             f"{task.calibration.identity[:19]}; the operator builds the new "
                             "data under a new key")
    say(f"calibration data {calibration.dataset} ({short_key(identity.digest)}) in {dest}",
        phase="calibration")
    return str(dest)


def _smoke(task: BuildTask, paths: Paths, versions: dict[str, str]) -> None:
    """A one-prompt generation from the result; GPU only."""
    if "nvidia_driver" not in versions or "tensorrt_llm" not in versions:
        say("skipped: needs a GPU and TensorRT-LLM", phase="smoke")
        return
    script = Path(__file__).with_name("smoke_script.py")
    p = task.build.parallelism
    toolchain.run([toolchain.tool_python(), str(script), task.build.backend, str(paths.engine),
                   str(p.tensor), str(p.pipeline)], phase="smoke", cwd=paths.engine.parent)


def _inputs(task: BuildTask) -> dict[str, Any]:
    """The key's inputs, recorded in the manifest; they must hash to the task's key."""
    inputs = key_inputs(weights_identity=task.weights_identity, origin=task.origin,
                        build=task.build,
                        builder_image=task.builder_image, gpu_product=task.target.gpu_product,
                        compute_capability=task.target.compute_capability,
                        calibration=None if task.calibration is None
                        else task.calibration.model_dump(),
                        warmup=task.warmup)
    if key_of(inputs) != task.key:
        raise InvalidTask(f"the task's key {short_key(task.key)} is not the key of its inputs: an "
                          "operator and builder of different releases? align them")
    return inputs


def _summary(task: BuildTask, manifest: Any, seconds: dict[str, float],
             cached: bool) -> dict[str, Any]:
    files = [{"path": f.path, "size": f.size} for f in getattr(manifest, "files", [])]
    return {"key": task.key, "uri": layout.engine_uri(task.store, task.key),
            "cached": cached, "sizeBytes": getattr(manifest, "total_bytes", None),
            "buildSeconds": getattr(manifest, "build_seconds", None),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "versions": dict(getattr(manifest, "versions", {}) or {}), "files": files}
