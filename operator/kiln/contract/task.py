"""The build task: what one build Job must build, rendered by the operator, read by the builder.

The operator puts it into the Job as JSON in the ``KILN_TASK`` environment variable; the
builder reads it from there or from ``--task-file``. Field names are camelCase, like the API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kiln.api import BuildSpec, KilnModel
from kiln.contract.env import TASK
from kiln.contract.warmup import Warmup


class TaskSource(KilnModel):
    """Where the weights are."""

    uri: str = Field(min_length=1, max_length=1024)
    """``s3://bucket/prefix/``, ``hf://org/name@revision`` or ``pvc://claim/path``."""
    revision: str | None = Field(default=None, max_length=128)
    """For a pvc:// source: the revision label that pins its identity."""
    credentials_from_env: bool = False
    """Whether the source's credentials are in the environment (``AWS_*``, ``HF_TOKEN``, from
    ``spec.model.credentialsSecret``) rather than ambient (node role, workload identity)."""
    endpoints: dict[str, str] | None = Field(default=None, max_length=4)
    """The endpoints the build reads from, by value (``AWS_ENDPOINT_URL``, ``HF_ENDPOINT``;
    empty: the library's default), as the operator resolved them when it rendered the Job:
    the builder refuses an environment that names any other (a Secret edited since). None
    (a task made by hand): not checked."""


class TaskCalibration(KilnModel):
    """What the calibration data is and where it comes from (inputs of the key)."""

    identity: str = Field(min_length=1, max_length=1024)
    """Its identity digest, as the operator read it; the builder refuses other data."""
    origin: dict[str, str] = Field(min_length=1, max_length=8)
    """Where it comes from (``kiln.sources.origin_of``)."""


class TaskTarget(KilnModel):
    """The GPU the engine is for."""

    gpu_product: str = Field(min_length=1, max_length=128)
    """``nvidia.com/gpu.product`` of the build nodes, e.g. ``NVIDIA-H100-80GB-HBM3``."""
    compute_capability: str = Field(pattern=r"^[0-9]{1,2}\.[0-9]$")
    """e.g. ``9.0``."""


class BuildTask(KilnModel):
    """One engine to build: the resolved inputs of its key, and where to put it."""

    schema_version: Literal[1] = 1
    """Version of this format."""
    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The engine key (sha256 hex); the engine goes to ``<store>/engines/<key>/``."""
    weights_identity: str = Field(min_length=1, max_length=1024)
    """The weights' identity digest the key was computed from; the builder refuses others."""
    origin: dict[str, str] = Field(min_length=1, max_length=8)
    """Where the weights come from (``kiln.sources.origin_of``: the namespace of a pvc://
    source, the bucket and prefix of an s3:// one, an endpoint the credentials Secret names),
    computed by the operator: an input of the key, recorded in the manifest."""
    source: TaskSource
    build: BuildSpec
    target: TaskTarget
    store: str = Field(min_length=1, max_length=1024)
    """``s3://bucket/prefix/`` or ``pvc://claim/path``."""
    builder_image: str = Field(min_length=1, max_length=512)
    """The image reference the key was computed with (recorded in the manifest)."""
    calibration: TaskCalibration | None = None
    """The calibration data's identity and origin, for a build that names some."""
    warmup: Warmup | None = None
    """The warm-up whose caches become the engine's artifact set (backend pytorch); None:
    no set. Part of the key."""

    @classmethod
    def for_build(cls, *, key: str, weights_identity: str, origin: Mapping[str, str],
                  source: str, revision: str | None, build: BuildSpec, gpu_product: str,
                  compute_capability: str, store: str, builder_image: str,
                  credentials_from_env: bool = False,
                  endpoints: Mapping[str, str] | None = None,
                  calibration: Mapping[str, Any] | None = None,
                  warmup: Warmup | None = None) -> BuildTask:
        """The task for one target of an EngineBuild."""
        return cls(
            key=key, weights_identity=weights_identity, origin=dict(origin),
            source=TaskSource(uri=source, revision=revision,
                              credentials_from_env=credentials_from_env,
                              endpoints=None if endpoints is None else dict(endpoints)),
            build=build,
            target=TaskTarget(gpu_product=gpu_product, compute_capability=compute_capability),
            store=store, builder_image=builder_image, warmup=warmup,
            calibration=None if calibration is None else TaskCalibration.model_validate(
                dict(calibration)))

    def to_json(self) -> str:
        """Compact JSON (camelCase), for the ``KILN_TASK`` environment variable."""
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BuildTask:
        """Parse a task; raises ``pydantic.ValidationError`` when it is not one."""
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, task_file: str | Path | None = None,
             env: Mapping[str, str] | None = None) -> BuildTask:
        """The task from ``task_file`` if given, else from ``KILN_TASK`` in ``env``."""
        if task_file is not None:
            return cls.from_json(Path(task_file).read_bytes())
        env = os.environ if env is None else env
        text = env.get(TASK)
        if not text:
            raise ValueError(f"no task: pass --task-file or set {TASK}")
        return cls.from_json(text)
