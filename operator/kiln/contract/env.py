"""The environment of kiln's pods: every variable the operator sets and the programs read.

The build Job runs ``kiln-builder``; the serving pod's init container runs ``kiln
fetch-engine``. Both read their credentials from one list of keys: the source's as they are in
``spec.model.credentialsSecret``, the store's from the operator's store Secret under
``KILN_STORE_``.
"""

from __future__ import annotations

from collections.abc import Mapping

TASK = "KILN_TASK"
"""The build task as JSON (:mod:`kiln.contract.task`)."""
WORKDIR = "KILN_WORKDIR"
"""The builder's scratch directory."""
MIN_FREE_BYTES = "KILN_MIN_FREE_BYTES"
CALIB_DATASET = "KILN_CALIB_DATASET"
TRTLLM_EXAMPLES = "KILN_TRTLLM_EXAMPLES"
"""Where the builder image keeps TensorRT-LLM's examples."""
MODELOPT_EXAMPLES = "KILN_MODELOPT_EXAMPLES"
"""Where the builder image keeps ModelOpt's ``examples/`` (``llm_ptq/hf_ptq.py``, the
PyTorch backend's quantization); unset: TensorRT-LLM's own scripts are tried instead."""
TRTLLM_PYTHON = "KILN_TRTLLM_PYTHON"
"""The Python that has TensorRT-LLM installed."""
TERMINATION_LOG = "KILN_TERMINATION_LOG"
"""Where the termination message goes (default ``/dev/termination-log``)."""

GPU_COMPUTE_CAPABILITY = "KILN_GPU_COMPUTE_CAPABILITY"
"""The serving node's compute capability, when ``nvidia-smi`` cannot tell."""
NVIDIA_SMI = "KILN_NVIDIA_SMI"
MODEL_REPO_FILES = "KILN_MODEL_REPO_FILES"
"""The Triton model repository's files as JSON ``{path: text}``."""
TRUSTED_KEYS = "KILN_TRUSTED_KEYS"
"""The public keys (a PEM bundle) whose signature makes a stored engine kiln's."""
BUILD_NAMESPACE = "KILN_BUILD_NAMESPACE"
"""The platform's build namespace, where shared engines (keys that name no namespace) are
built; unset: there are none (``kiln.contract.provenance.built_where``)."""
FETCH_STORE = "KILN_STORE"
FETCH_KEY = "KILN_ENGINE_KEY"
FETCH_UPLOAD = "KILN_ENGINE_UPLOAD"
"""The upload of the key the operator verified and the Deployment pins: any other manifest
of the key (an older signed upload restored) is refused."""
FETCH_SOURCE = "KILN_SOURCE"
FETCH_REVISION = "KILN_SOURCE_REVISION"
FETCH_DEST = "KILN_ENGINE_DIR"
FETCH_MODEL_REPO = "KILN_MODEL_REPO"
FETCH_GUARD_DIR = "KILN_GUARD_DIR"
"""Where ``kiln fetch-engine`` puts the version guard the server container runs first."""

STORE_PREFIX = "KILN_STORE_"
"""The store's credentials reach a pod as ``KILN_STORE_<KEY>``, apart from the source's."""
ENDPOINT = "AWS_ENDPOINT_URL"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_REGION", ENDPOINT, "HF_TOKEN", "HF_ENDPOINT")
"""The keys read from a credentials Secret (each optional, passed by reference)."""
ENDPOINTS = (ENDPOINT, "HF_ENDPOINT")
"""The variables that name where a build reads from: bound in the task by value, and a build
pod whose environment names another is refused (``BuildTask.source.endpoints``)."""
STORE_KEYS = tuple(k for k in CREDENTIAL_KEYS if k.startswith("AWS_"))
"""Those of them an engine store (S3) reads."""


def credentials(env: Mapping[str, str], prefix: str = "") -> dict[str, str] | None:
    """The credential keys set in ``env`` (under ``prefix``), or None when there are none."""
    found = {k: env[prefix + k] for k in CREDENTIAL_KEYS if env.get(prefix + k)}
    return found or None


def store_credentials(env: Mapping[str, str]) -> dict[str, str] | None:
    """The store's credentials in a pod's environment."""
    return credentials(env, STORE_PREFIX)


def store_endpoint(env: Mapping[str, str]) -> str | None:
    """The store's S3 endpoint: its own, else the pod's ``AWS_ENDPOINT_URL``."""
    return env.get(STORE_PREFIX + ENDPOINT) or env.get(ENDPOINT) or None
