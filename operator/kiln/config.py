"""The operator's own settings, read once from the environment (the chart sets them)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.contract.warmup import WarmupRuntime
from kiln.domain.aot import TRTLLM_SERVE
from kiln.domain.pod_policy import LEVELS, Level

DEFAULT_BUILDER_IMAGE = "ghcr.io/kiln-dev/kiln-builder:0.1.0-trtllm1.2.1"
DEFAULT_SERVER_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
DEFAULT_FETCH_IMAGE = "ghcr.io/kiln-dev/kiln:0.1.0"
DEFAULT_TRITON_MODELS_DIR = "/app/all_models/inflight_batcher_llm"
DEFAULT_TRITON_LLMAPI_DIR = "/app/all_models/llmapi/tensorrt_llm"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _pod_namespace() -> str | None:
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or None
    except OSError:
        return None


def _json_map(text: str | None, name: str) -> dict[str, str]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} must be a JSON object of strings, got {text!r}")
    return {str(k): v for k, v in value.items()}


def _pod_labels(env: Mapping[str, str], name: str) -> dict[str, str]:
    """Extra pod labels; kiln's own are left out, with a warning (the operator watches its
    pods by them; kiln's win on the pods in any case)."""
    labels = _json_map(env.get(name), name)
    own = sorted(k for k in labels if k in ("app.kubernetes.io/managed-by",
                                            "app.kubernetes.io/component")
                 or k.startswith("kiln.dev/"))
    if own:
        logging.getLogger(__name__).warning(
            "%s: ignoring %s: kiln sets those labels on its pods, and watches its pods by "
            "app.kubernetes.io/managed-by=kiln", name, ", ".join(own))
    return {k: v for k, v in labels.items() if k not in own}


@dataclass(frozen=True)
class OperatorConfig:
    """Defaults and knobs that apply to every EngineBuild and EngineDeployment."""

    default_store: str | None = None
    """Engine store when ``spec.output.store`` is unset (``KILN_DEFAULT_STORE``)."""
    builder_image: str = DEFAULT_BUILDER_IMAGE
    """Builder image when ``spec.toolchain.image`` is unset (``KILN_BUILDER_IMAGE``)."""
    store_secret: str | None = None
    """Secret (in each EngineBuild's namespace) with the store's credentials, passed to
    build Jobs by reference (``KILN_STORE_SECRET``)."""
    serve_store_secret: str | None = None
    """Secret (in each EngineDeployment's namespace) with read-only store credentials for
    the serving pods' ``kiln fetch-engine``, which only reads (``KILN_SERVE_STORE_SECRET``;
    unset: ``KILN_STORE_SECRET``'s)."""
    build_env: dict[str, str] = field(default_factory=dict)
    """Extra plain environment for build pods, e.g. ``AWS_ENDPOINT_URL`` of an S3-compatible
    store (``KILN_BUILD_ENV``, a JSON object)."""
    build_pod_labels: dict[str, str] = field(default_factory=dict)
    """Extra labels for build pods, e.g. for cost allocation (``KILN_BUILD_POD_LABELS``)."""
    serving_pod_labels: dict[str, str] = field(default_factory=dict)
    """Extra labels for serving pods (``KILN_SERVING_POD_LABELS``)."""
    build_queue: str | None = None
    """Kueue LocalQueue of build Jobs whose ``spec.job.queueName`` is unset
    (``KILN_BUILD_QUEUE``); unset: such Jobs bypass Kueue."""
    job_ttl_seconds: int = 3600
    """``ttlSecondsAfterFinished`` of build Jobs (``KILN_JOB_TTL_SECONDS``)."""
    weights_check_seconds: float = 30.0
    """How often the sweep retries transient failures and looks whether a ``pollInterval``
    is due (``KILN_WEIGHTS_CHECK_SECONDS``)."""
    resync_seconds: float = 30.0
    """How often the sweep reconciles every EngineBuild and EngineDeployment from the indexes,
    in case an event was missed (``KILN_RESYNC_SECONDS``)."""
    rebuild_settle: str = "1m"
    """How long weights must hold still before they are built, where an EngineBuild's
    ``spec.rebuild.settle`` is unset (``KILN_REBUILD_SETTLE``)."""
    build_namespace: str | None = None
    """The platform's build namespace, one no tenant can touch (``KILN_BUILD_NAMESPACE``):
    engines whose key names no namespace (shared between namespaces) count only if their Job
    ran there; unset: every engine is its own namespace's."""
    namespace: str | None = None
    """The operator's own namespace (``KILN_NAMESPACE``, else the in-cluster ServiceAccount's):
    where the claims of ``pvc://`` stores it reads are mounted."""
    server_image: str = DEFAULT_SERVER_IMAGE
    gate_image: str | None = None
    """The rollout gate Job's image (``kiln gate`` with AIPerf): ``KILN_GATE_IMAGE``, else the
    builder image (kiln is in it)."""
    """Serving image when ``spec.server.image`` is unset, for ``trtllm-serve``
    (``KILN_SERVER_IMAGE``); it must have the builder's TensorRT-LLM."""
    triton_image: str | None = None
    """Serving image for ``server.kind: triton`` when ``spec.server.image`` is unset
    (``KILN_TRITON_IMAGE``); unset: such EngineDeployments must name one."""
    triton_models_dir: str = DEFAULT_TRITON_MODELS_DIR
    """Where the Triton image keeps the inflight-batcher models whose ``model.py`` the
    preprocessing and postprocessing models use (``KILN_TRITON_MODELS_DIR``)."""
    triton_llmapi_dir: str = DEFAULT_TRITON_LLMAPI_DIR
    """Where the Triton image keeps the LLM-API model (``all_models/llmapi/tensorrt_llm``, beside
    the inflight-batcher models) that serves ``pytorch`` engines (``KILN_TRITON_LLMAPI_DIR``)."""
    fetch_image: str = DEFAULT_FETCH_IMAGE
    """Image of the serving pods' ``kiln fetch-engine`` init container: kiln's own
    (``KILN_FETCH_IMAGE``)."""
    serve_env: dict[str, str] = field(default_factory=dict)
    """Extra plain environment for that init container, e.g. ``AWS_ENDPOINT_URL``
    (``KILN_SERVE_ENV``, a JSON object; unset: ``KILN_BUILD_ENV``'s)."""

    signing_key_file: str | None = None
    """PEM private key the operator signs engines' provenance with, from a Secret the chart
    creates or the user provides (``KILN_SIGNING_KEY_FILE``); unset: nothing is signed, so no
    engine is served."""
    trusted_keys_file: str | None = None
    """PEM public keys trusted besides the signing key's own, e.g. the previous key during a
    rotation (``KILN_TRUSTED_KEYS_FILE``)."""
    verify_seconds: float = 600.0
    """How long a verified engine counts before its manifest and signature are read again
    (``KILN_VERIFY_SECONDS``)."""
    allowed_builder_images: tuple[str, ...] = ()
    """Image prefixes (ending in ``/``, ``:`` or ``@``, or a whole repository) or digests
    (``sha256:...``) EngineBuilds may use; empty: any (``KILN_ALLOWED_BUILDER_IMAGES``, a JSON
    list or comma-separated)."""

    def image_allowed(self, image: str) -> bool:
        """Whether ``image`` matches ``allowed_builder_images`` (always, when that is empty)."""
        if not self.allowed_builder_images:
            return True
        return any(_image_matches(image, entry) for entry in self.allowed_builder_images)
    pod_security: Level = "restricted"
    """The Pod Security level that build and serving pods' security-context overrides must
    stay within, whatever the namespace enforces (``KILN_POD_SECURITY``: restricted, baseline
    or privileged; ``kiln.domain.pod_policy``)."""
    allowed_priority_classes: tuple[str, ...] = ()
    """Priority classes build Jobs may name (``KILN_ALLOWED_PRIORITY_CLASSES``, a JSON list or
    comma-separated; ``*``: any); empty: none."""
    leader_election: bool = False
    """Reconcile only while holding a Lease, so that replicas stand by (``KILN_LEADER_ELECTION``;
    the chart sets it)."""
    lease_namespace: str = "default"
    """The Lease's namespace (``KILN_LEASE_NAMESPACE``, else ``POD_NAMESPACE``, else the pod's
    own)."""
    lease_name: str = "kiln"
    """The Lease's name (``KILN_LEASE_NAME``): one per operator installation."""
    warmup_runtime: WarmupRuntime | None = field(default_factory=lambda: TRTLLM_SERVE)
    """The server build Jobs warm up to make a ``backend: pytorch`` engine's artifact set
    (``KILN_WARMUP_RUNTIME``: ``none``, or a JSON ``kiln.contract.warmup.WarmupRuntime``;
    default: trtllm-serve, kiln.trtllm.aot)."""
    used_mark_seconds: float = 86400.0
    """How often an engine in use is marked used in the store, at most (``KILN_USED_MARK_SECONDS``;
    ``kiln gc`` keeps what was marked within its retention)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        return cls(
            default_store=env.get("KILN_DEFAULT_STORE") or None,
            builder_image=env.get("KILN_BUILDER_IMAGE") or DEFAULT_BUILDER_IMAGE,
            store_secret=env.get("KILN_STORE_SECRET") or None,
            serve_store_secret=env.get("KILN_SERVE_STORE_SECRET") or None,
            build_env=_json_map(env.get("KILN_BUILD_ENV"), "KILN_BUILD_ENV"),
            build_pod_labels=_pod_labels(env, "KILN_BUILD_POD_LABELS"),
            serving_pod_labels=_pod_labels(env, "KILN_SERVING_POD_LABELS"),
            build_queue=env.get("KILN_BUILD_QUEUE") or None,
            job_ttl_seconds=int(env.get("KILN_JOB_TTL_SECONDS", "3600")),
            weights_check_seconds=float(env.get("KILN_WEIGHTS_CHECK_SECONDS", "30")),
            resync_seconds=float(env.get("KILN_RESYNC_SECONDS", "30")),
            rebuild_settle=env.get("KILN_REBUILD_SETTLE") or "1m",
            build_namespace=env.get("KILN_BUILD_NAMESPACE") or None,
            namespace=env.get("KILN_NAMESPACE") or _pod_namespace(),
            server_image=env.get("KILN_SERVER_IMAGE") or DEFAULT_SERVER_IMAGE,
            gate_image=env.get("KILN_GATE_IMAGE") or None,
            triton_image=env.get("KILN_TRITON_IMAGE") or None,
            triton_models_dir=env.get("KILN_TRITON_MODELS_DIR") or DEFAULT_TRITON_MODELS_DIR,
            triton_llmapi_dir=env.get("KILN_TRITON_LLMAPI_DIR") or DEFAULT_TRITON_LLMAPI_DIR,
            fetch_image=env.get("KILN_FETCH_IMAGE") or DEFAULT_FETCH_IMAGE,
            serve_env=_json_map(env.get("KILN_SERVE_ENV") or env.get("KILN_BUILD_ENV"),
                                "KILN_SERVE_ENV"),
            signing_key_file=env.get("KILN_SIGNING_KEY_FILE") or None,
            trusted_keys_file=env.get("KILN_TRUSTED_KEYS_FILE") or None,
            verify_seconds=float(env.get("KILN_VERIFY_SECONDS", "600")),
            allowed_builder_images=_list(env.get("KILN_ALLOWED_BUILDER_IMAGES")),
            pod_security=_level(env.get("KILN_POD_SECURITY") or "restricted"),
            allowed_priority_classes=_list(env.get("KILN_ALLOWED_PRIORITY_CLASSES")),
            leader_election=(env.get("KILN_LEADER_ELECTION") or "").lower() in ("1", "true"),
            lease_namespace=(env.get("KILN_LEASE_NAMESPACE") or env.get("POD_NAMESPACE")
                             or _pod_namespace() or "default"),
            lease_name=env.get("KILN_LEASE_NAME") or "kiln",
            used_mark_seconds=float(env.get("KILN_USED_MARK_SECONDS", "86400")),
            warmup_runtime=_warmup_runtime(env.get("KILN_WARMUP_RUNTIME")),
        )


def per_namespace(uri: str | None, namespace: str) -> str | None:
    """A store URI with ``{namespace}`` (``KILN_DEFAULT_STORE``) replaced by ``namespace``."""
    return uri.replace("{namespace}", namespace) if uri else uri


def _level(text: str) -> Level:
    for level in LEVELS:
        if text == level:
            return level
    raise ValueError(f"KILN_POD_SECURITY: expected one of {', '.join(LEVELS)}, got {text!r}")


def _warmup_runtime(text: str | None) -> WarmupRuntime | None:
    """``KILN_WARMUP_RUNTIME``: unset is trtllm-serve, ``none`` is none, else JSON."""
    text = (text or "").strip()
    if not text:
        return TRTLLM_SERVE
    if text.lower() == "none":
        return None
    return WarmupRuntime.model_validate_json(text)


def _list(text: str | None) -> tuple[str, ...]:
    """A JSON list of strings, or comma-separated words."""
    text = (text or "").strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a JSON list of strings, got {text!r}")
        return tuple(v.strip() for v in value if v.strip())
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _image_matches(image: str, entry: str) -> bool:
    """A digest entry matches an image pinned to it; a prefix entry matches images under it
    (an entry not ending in ``/``, ``:`` or ``@`` is a whole repository: ``repo``, ``repo:tag``
    and ``repo@digest`` match it, ``repo-other`` does not)."""
    if entry.startswith("sha256:"):
        return image.endswith("@" + entry)
    if entry.endswith(("/", ":", "@")):
        return image.startswith(entry)
    return image == entry or (image.startswith(entry) and image[len(entry)] in ":@")
