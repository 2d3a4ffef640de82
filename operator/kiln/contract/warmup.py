"""Ahead-of-time artifacts: what the build Job's warm-up runs, and what it leaves in the engine.

A runtime-agnostic contract. The operator puts a ``Warmup`` into the build task: a server
command (an OpenAI-compatible server started exactly as the serving pod starts it), the cache
variables it honours and where each goes under one cache root, the request shapes to warm up
with, and the packages whose versions the artifacts depend on. The builder starts the server
with those variables pointing into an empty root, waits for its health route, sends the
requests, stops it and keeps what was written as files of the engine under ``artifacts/``
(in the manifest, hashed and signed like every other file), with ``artifacts/report.json``.
Then it starts the server once more on a copy placed as a serving pod places it, to measure
the warm start. TensorRT-LLM's command and variables are data (:mod:`kiln.trtllm.aot`); the
test bed and the GPU test use other servers under the same contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kiln.api import KilnModel

ARTIFACTS_DIR = "artifacts"
"""In an engine directory: the artifact set."""
CACHE_DIR = f"{ARTIFACTS_DIR}/cache"
"""The cache root as the warm-up left it (each variable's path below it)."""
REPORT = f"{ARTIFACTS_DIR}/report.json"
"""What the set was made with and on (``ArtifactReport``)."""
PLACED_DIR = "/kiln-artifacts"
"""Where a serving pod's placement puts a valid set; the server's cache variables point here."""


class CachePath(KilnModel):
    """One cache variable: its path under the cache root."""

    name: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", max_length=64)
    path: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    file: bool = False
    """The variable names a file, not a directory."""


class WarmupShape(KilnModel):
    """One warm-up request pattern."""

    prompt_tokens: int = Field(ge=1, le=1048576)
    output_tokens: int = Field(default=8, ge=1, le=4096)
    concurrency: int = Field(default=1, ge=1, le=1024)


class WarmupRuntime(KilnModel):
    """A server the warm-up can run: its command and the caches it keeps."""

    runtime: str = Field(min_length=1, max_length=64)
    """A name for the server and its version line, e.g. ``trtllm-serve``."""
    command: list[str] = Field(min_length=1, max_length=64)
    """The server's argv; ``{model}``, ``{port}`` and ``{options}`` (a YAML file of
    ``options``) are filled in by the builder."""
    health_path: str = "/health"
    completions_path: str = "/v1/completions"
    cache_root_env: str | None = None
    """A variable naming the whole root, where the runtime has one."""
    cache: list[CachePath] = Field(default_factory=list, max_length=32)
    versioned: dict[str, list[str]] = Field(default_factory=dict)
    """Packages the artifacts depend on: module → distributions it may be installed as."""
    start_timeout_seconds: int = Field(default=1800, ge=10, le=21600)


class Warmup(WarmupRuntime):
    """How the build Job warms a runtime up (part of the build task, and of the key)."""

    options: dict[str, Any] = Field(default_factory=dict)
    """The server's options (for trtllm-serve: the ``--extra_llm_api_options`` YAML the
    serving pod gets)."""
    shapes: list[WarmupShape] = Field(min_length=1, max_length=32)

    def environment(self, root: str) -> dict[str, str]:
        """The cache variables for a cache root at ``root``."""
        env = {c.name: f"{root.rstrip('/')}/{c.path}" for c in self.cache}
        if self.cache_root_env:
            env[self.cache_root_env] = root
        return env


class ArtifactReport(KilnModel):
    """``artifacts/report.json``: what a set was made with and on, and what it saved."""

    runtime: str
    cache: list[CachePath] = Field(default_factory=list)
    cache_root_env: str | None = None
    versioned: dict[str, list[str]] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    """What the runtime ran with: each of ``versioned``, and ``cuda`` (the CUDA runtime)."""
    gpu_name: str | None = None
    """As ``nvidia-smi --query-gpu=name`` says it, e.g. ``NVIDIA H100 80GB HBM3``."""
    compute_capability: str | None = None
    driver_version: str | None = None
    cold_seconds: float = Field(ge=0)
    """Server start to the first token of the first request, with an empty cache root."""
    warm_seconds: float | None = Field(default=None, ge=0)
    """The same, with this set placed as a serving pod places it."""
    files: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
