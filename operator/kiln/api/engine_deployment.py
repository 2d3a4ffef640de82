"""``EngineDeployment``: serve an EngineBuild's engines on a pool of GPU nodes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from kiln.api.common import (
    API_VERSION,
    CONDITIONS_EXTRA,
    LABEL_KEY_RULE,
    Condition,
    Grace,
    KilnModel,
    LabelMap,
    Name,
    Resources,
    SecurityContext,
    cel,
    q,
    rules,
)
from kiln.api.rollout import Rollout, RolloutStatus

ServerKind = Literal["trtllm-serve", "triton"]
Fallback = Literal["pytorch", "previous", "none"]
ServingMode = Literal["engine", "fallback"]

AUTO_GPU = "auto"
MAX_NAME = 40
"""kiln names a Service and per-GPU Deployments after an EngineDeployment."""
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": MAX_NAME, "pattern": DNS_1035}
"""Schema of ``metadata.name``: a DNS-1035 label short enough for the names kiln derives."""
PERCENT = r"^(100|[1-9]?[0-9])%$"
SERVER_ARGS_RESERVED = ("host", "port", "backend", "tp_size", "pp_size", "tensor_parallel_size",
                        "pipeline_parallel_size", "tokenizer", "extra_llm_api_options", "config")
"""trtllm-serve options kiln sets (with their aliases: ``serve.py`` spells ``--tp_size`` also
``--tensor_parallel_size``, ``--extra_llm_api_options`` also ``--config``)."""
_RESERVED = r"^--(" + "|".join(SERVER_ARGS_RESERVED) + r")(=|$)"

IntOrPercent = Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=4, pattern=PERCENT)]


class EngineBuildRef(KilnModel):
    """An EngineBuild in the same namespace."""

    name: Name
    """The EngineBuild's name."""


class Pool(KilnModel):
    """The nodes that serve."""

    node_selector: LabelMap | None = Field(
        default=None, min_length=1, max_length=16, json_schema_extra=rules(LABEL_KEY_RULE))
    """Labels the serving nodes carry (besides the GPU product kiln selects on); unset: every
    GPU node."""
    drain_after: Grace = "10m"
    """How long a GPU product that left the pool (its label lost, its nodes gone) keeps its
    Deployment; after that it is removed once every other product served is Ready, and never
    while it is the only product with ready pods."""


class Runtime(KilnModel):
    """trtllm-serve's LLM API options (an ``--extra_llm_api_options`` YAML kiln writes to a
    ConfigMap). Unset fields: the build spec's value where it has one, else TensorRT-LLM's
    default. The tensorrt backend caps batch size and token limits at the engine's."""

    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    """``max_batch_size``; unset: the build's ``maxBatchSize``."""
    max_num_tokens: int | None = Field(default=None, ge=1, le=1048576)
    """``max_num_tokens``; unset: the build's ``maxNumTokens``."""
    max_seq_len: int | None = Field(default=None, ge=1, le=1048576)
    """``max_seq_len``; unset: the build's ``maxSeqLen`` (else the model's)."""
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    """``kv_cache_config.dtype`` (PyTorch backend only); unset: ``fp8`` when the build's
    ``quantization.kvCache`` is fp8, else ``auto``."""
    free_gpu_memory_fraction: float | None = Field(default=None, ge=0.01, le=1)
    """``kv_cache_config.free_gpu_memory_fraction``; unset: 0.9."""
    enable_chunked_prefill: bool | None = None
    """``enable_chunked_prefill``; unset: false. A TensorRT engine without paged context FMHA
    cannot chunk: the runtime turns it off, and kiln says so in ``status.products[].message``."""
    enable_block_reuse: bool | None = None
    """``kv_cache_config.enable_block_reuse`` (KV cache reuse across requests); unset: true.
    Turned off by the runtime on a TensorRT engine without paged context FMHA or built with
    ``--gather_context_logits`` (said in status); ``false`` is refused for an engine built
    with ``--speculative_decoding_mode=draft_tokens_external``, which needs it."""


class Server(KilnModel):
    """The inference server."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "!has(self.streaming) || self.kind == 'triton'",
        "streaming chooses Triton's transaction policy; trtllm-serve streams per request "
        "(\"stream\": true) whatever it is", ".streaming")))

    kind: ServerKind = "trtllm-serve"
    """``trtllm-serve`` (OpenAI-compatible, health at ``/health``) or ``triton``."""
    streaming: bool | None = None
    """Triton only: ``true`` makes the ``tensorrt_llm`` model decoupled, which streaming
    requests need (``generate_stream``, gRPC ``ModelStreamInfer``) and with which Triton
    refuses plain ``infer``/``generate`` calls; ``false`` serves plain calls and refuses
    streaming ones. Unset: ``true`` for ``tensorrt`` engines (the inflight batcher's
    ``decoupled_mode``, docs/model_config.md: "Must be set to true for requests setting the
    stream tensor to true"), ``false`` for ``pytorch`` engines (the LLM-API model's own
    default, ``triton_config.decoupled: False``)."""
    image: str | None = Field(default=None, min_length=1, max_length=512)
    """Server image; unset: the operator's default (it must match the builder's TensorRT-LLM)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port the server listens on and the Service exposes."""
    args: list[Annotated[str, Field(max_length=256, json_schema_extra=rules(cel(
        f"!self.matches({q(_RESERVED)})",
        "kiln sets " + ", ".join(f"--{a}" for a in SERVER_ARGS_RESERVED)
        + " itself; use server.port and the build's parallelism")))]] = Field(
        default_factory=list, max_length=64)
    """More server arguments, e.g. ``--max_batch_size=64``."""
    resources: Resources | None = None
    """CPU and memory of the server container (GPUs come from the build's parallelism)."""
    security_context: SecurityContext | None = None
    """Overrides of the serving pod's restricted security context, for server images that
    need more, e.g. to run as root (docs/security.md)."""
    runtime: Runtime = Field(default_factory=Runtime)
    """trtllm-serve's runtime limits and KV cache settings (kind ``trtllm-serve`` only)."""


class Strategy(KilnModel):
    """How pods move to a new engine."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "!((self.maxSurge == 0 || self.maxSurge == '0%') && "
        "(self.maxUnavailable == 0 || self.maxUnavailable == '0%'))",
        "maxSurge and maxUnavailable cannot both be 0: the rollout could never progress")))

    max_surge: IntOrPercent = 1
    """Extra pods during a rollout (a number or a percentage)."""
    max_unavailable: IntOrPercent = 0
    """Pods that may be unavailable during a rollout; 0 never loses capacity."""


class EngineDeploymentSpec(KilnModel):
    """Where and how to serve an EngineBuild's engines."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "self.fallback != 'pytorch' || self.server.kind == 'trtllm-serve'",
        "fallback pytorch serves the checkpoint with trtllm-serve; under server.kind triton "
        "the checkpoint (Triton's LLM-API model) and a tensorrt engine (the inflight batcher) "
        "take different requests, so clients would break when the engine arrives",
        ".fallback")))

    engine_build_ref: EngineBuildRef
    """The EngineBuild whose engines to serve."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Serving pods per GPU product."""
    gpu: str = Field(default=AUTO_GPU, max_length=32)
    """A GPU from kiln's catalogue, or ``auto``: every GPU product present in the pool."""
    pool: Pool = Field(default_factory=Pool)
    """The serving nodes."""
    server: Server = Field(default_factory=Server)
    """The inference server."""
    fallback: Fallback = "previous"
    """While no engine is ready for a GPU product: ``pytorch`` serves the checkpoint with the
    PyTorch backend (trtllm-serve only), ``previous`` keeps the last engine, ``none`` serves
    nothing."""
    strategy: Strategy = Field(default_factory=Strategy)
    """Rolling update limits (default 1 / 0: never lose capacity)."""
    rollout: Rollout | None = None
    """Promote only what is proven: a new engine key serves a canary beside the current key,
    a benchmark gate compares them, and the key takes the rest only if it holds every
    threshold; unset, a new key rolls onto every replica as soon as it is ready."""


class ProductStatus(KilnModel):
    """Serving on one GPU product."""

    gpu_product: str = Field(max_length=128)
    """``nvidia.com/gpu.product`` of these nodes."""
    gpu: str | None = Field(default=None, max_length=32)
    """The catalogue name of that product."""
    engine_key: str | None = Field(default=None, max_length=64)
    """The engine served (unset in fallback mode without an engine)."""
    mode: ServingMode = "engine"
    """``engine`` or ``fallback``."""
    deployment: str | None = Field(default=None, max_length=253)
    """The Deployment serving this product."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Ready pods of that Deployment."""
    compute_capability: str | None = Field(default=None, max_length=5)
    """The compute capability of these nodes."""
    missing_since: datetime | None = None
    """When this product left the pool (``ProductMissing``); unset while it is in the pool."""
    message: str | None = Field(default=None, max_length=1024)
    """Why this product is not (or no longer) served as it should be."""
    artifacts: Literal["Placed", "Stale", "Mismatch", "None"] | None = None
    """The engine's ahead-of-time artifact set on these pods: ``Placed`` (made for this GPU,
    driver and server image, and loaded), ``Stale`` (made for another; the server starts
    without it), ``Mismatch`` (``server.runtime`` differs from the build's kernel-shaping
    options; not placed), ``None`` (the engine has none)."""
    artifacts_message: str | None = Field(default=None, max_length=1024)
    """What the serving pods' check said of the set."""
    start_seconds: float | None = Field(default=None, ge=0)
    """Measured server start of this product's ready pods (container start to Ready, the
    slowest of them)."""


class EngineDeploymentStatus(KilnModel):
    """What kiln observed and did; written by kiln only."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this status describes."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, json_schema_extra=CONDITIONS_EXTRA)
    """kstatus conditions: ``Ready``, ``Reconciling``, ``Stalled``."""
    replicas: int | None = Field(default=None, ge=0)
    """Serving pods over all GPU products."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Ready serving pods over all GPU products."""
    products: list[ProductStatus] = Field(default_factory=list, max_length=32, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuProduct"]})
    """One entry per GPU product served."""
    gpus: str | None = Field(default=None, max_length=512)
    """The GPUs served, comma-separated (for ``kubectl get``)."""
    engine_keys: str | None = Field(default=None, max_length=512)
    """The first 12 characters of each engine key served, comma-separated (for ``kubectl
    get``)."""
    startup: str | None = Field(default=None, max_length=512)
    """Per GPU served: the measured server start and the artifact set's state (for ``kubectl
    get -o wide``)."""
    scale_replicas: int | None = Field(default=None, ge=0)
    """What the ``/scale`` subresource reports as current replicas: the pods of the first GPU
    product served (by name), as ``spec.replicas`` counts pods per product."""
    selector: str | None = Field(default=None, max_length=512)
    """The label selector of those pods: what an HPA reads pod metrics from."""
    rollouts: list[RolloutStatus] = Field(
        default_factory=list, max_length=32, json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["gpuProduct", "canaryKey"]})
    """Each new key's canary and gate per GPU product, the latest last; a key ``Rejected`` or
    ``RolledBack`` here is not tried again on that product."""
    canary: str | None = Field(default=None, max_length=512)
    """The rollouts under way or refused, as ``phase key`` (for ``kubectl get``)."""


class EngineDeployment(KilnModel):
    """Serves the engines of an EngineBuild: one Deployment per GPU product in the pool, one
    Service over all of them, rolling onto new engines as they become ready."""

    api_version: Literal["kiln.dev/v1alpha1"] = API_VERSION
    """``kiln.dev/v1alpha1``."""
    kind: Literal["EngineDeployment"] = "EngineDeployment"
    """``EngineDeployment``."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""
    spec: EngineDeploymentSpec
    """What to serve and where."""
    status: EngineDeploymentStatus | None = None
    """What kiln observed."""


__all__ = [
    "AUTO_GPU",
    "NAME_SCHEMA",
    "SERVER_ARGS_RESERVED",
    "EngineBuildRef",
    "EngineDeployment",
    "EngineDeploymentSpec",
    "EngineDeploymentStatus",
    "Fallback",
    "Pool",
    "ProductStatus",
    "Runtime",
    "Server",
    "ServerKind",
    "ServingMode",
    "Strategy",
]
