"""``EngineBuild``: which weights to compile, for which GPUs, with which build limits."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from kiln.api.common import (
    API_VERSION,
    CONDITIONS_EXTRA,
    LABEL_KEY_RULE,
    Condition,
    Duration,
    Grace,
    KilnModel,
    LabelMap,
    Name,
    Resources,
    SecurityContext,
    SourceUri,
    StoreUri,
    cel,
    q,
    rules,
)

Backend = Literal["tensorrt", "pytorch"]
QuantAlgo = Literal["none", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo",
                    "nvfp4"]
KvCacheQuant = Literal["none", "fp8", "int8"]
Dtype = Literal["auto", "float16", "bfloat16", "float32"]
EngineState = Literal["Cached", "Building", "Ready", "Failed"]
BuildPhase = Literal["Pending", "Building", "Ready", "Failed"]

NAME_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": 63}
"""Schema of ``metadata.name``: kiln uses the name as a label value."""
MAX_GPUS_PER_BUILD = 8
"""A build runs in one pod, so tensor * pipeline is bounded by the GPUs of one node."""
COMPUTE_CAPABILITY = r"^[1-9][0-9]?\.[0-9]$"
MIN_COMPUTE_CAPABILITY = "8.0"

_SWITCH = ("enable", "disable")
_DTYPES = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
EXTRA_ARGS: dict[str, tuple[str, ...] | None] = {
    "bert_attention_plugin": _DTYPES,
    "bert_context_fmha_fp32_acc": _SWITCH,
    "fast_build": (),
    "gather_context_logits": (),
    "gemm_allreduce_plugin": ("float16", "bfloat16", "disable"),
    "gemm_swiglu_plugin": ("fp8", "disable"),
    "log_level": ("internal_error", "error", "warning", "info", "verbose", "debug", "trace"),
    "logits_dtype": ("float16", "float32"),
    "low_latency_gemm_plugin": ("fp8", "disable"),
    "low_latency_gemm_swiglu_plugin": ("fp8", "disable"),
    "max_beam_width": None,
    "max_draft_len": None,
    "max_encoder_input_len": None,
    "max_prompt_embedding_table_size": None,
    "moe_plugin": _DTYPES,
    "monitor_memory": (),
    "profiling_verbosity": ("layer_names_only", "detailed", "none"),
    "speculative_decoding_mode": ("draft_tokens_external", "lookahead_decoding", "medusa",
                                  "explicit_draft_tokens", "eagle"),
    "tokens_per_block": None,
    "use_fused_mlp": _SWITCH,
    "weight_sparsity": (),
    "weight_streaming": (),
}
"""``trtllm-build`` flags ``extraArgs`` may carry and their values: ``()`` a bare switch
(``--flag``; argparse refuses ``--flag=value``), ``None`` a positive integer
(``--flag=N``), else ``--flag=<one of these>``. None names a path or a field kiln sets; left
out: ``--strongly_typed`` (gone), ``--streamingllm`` (asserts), ``--gather_generation_logits``
(deprecated), ``--lora_*`` (need ``--lora_dir``, a path), ``--pp_reduce_scatter`` (asserts
unless Mixtral), and the flags build() rewrites from facts admission cannot see (the model's
architecture, world size): ``--nccl_plugin`` (always set from dtype and world size),
``--user_buffer`` (off without reduce_fusion), ``--norm_quant_fusion`` (off unless Llama with
NVFP4 and no reduce_fusion). Checked against :mod:`kiln.trtllm.flags` by the unit tests."""
EXTRA_ARGS_ALLOWED = tuple(EXTRA_ARGS)
SM100_PLUGIN_ARGS = ("gemm_swiglu_plugin", "low_latency_gemm_plugin",
                     "low_latency_gemm_swiglu_plugin", "bert_context_fmha_fp32_acc")
"""Of those, the ones ``PluginConfig.validate`` refuses on compute capability 10.0 unless
``disable`` (kiln.trtllm.refusals ``plugins_sm100``)."""


def _form(name: str, values: tuple[str, ...] | None) -> str:
    if values is None:
        return f"{name}=[1-9][0-9]{{0,6}}"
    if not values:
        return name
    return f"{name}=({'|'.join(values)})"


EXTRA_ARG_FORM = r"^--[a-z][a-z0-9_]*(=[-A-Za-z0-9_.,:+]*)?$"
EXTRA_ARG_ALLOWED = r"^--(" + "|".join(EXTRA_ARGS_ALLOWED) + r")(=|$)"
EXTRA_ARG_VALUE = r"^--(" + "|".join(_form(n, v) for n, v in EXTRA_ARGS.items()) + r")$"


def _extra_arg_hint(arg: str) -> str:
    name = arg[2:].partition("=")[0]
    values = EXTRA_ARGS.get(name, ())
    if values is None:
        return f"--{name}=<a positive integer>"
    if not values:
        return f"--{name} (a switch, no value)"
    return f"--{name}=<{'|'.join(values)}>"


def _check_extra_arg(arg: str) -> str:
    if not re.search(EXTRA_ARG_FORM, arg):
        raise ValueError(f"{arg!r} is not --flag or --flag=value")
    if not re.search(EXTRA_ARG_ALLOWED, arg):
        raise ValueError(f"{arg!r} is not an allowed trtllm-build flag")
    if not re.search(EXTRA_ARG_VALUE, arg):
        raise ValueError(f"{arg!r}: write {_extra_arg_hint(arg)}")
    return arg


ExtraArg = Annotated[
    str,
    Field(max_length=128, json_schema_extra=rules(
        cel(f"self.matches({q(EXTRA_ARG_FORM)})",
            "must be --flag or --flag=value, the value made of letters, digits and "
            "'-_.,:+' (no paths, no spaces)"),
        cel(f"self.matches({q(EXTRA_ARG_ALLOWED)})",
            "flag not allowed; allowed: " + ", ".join(f"--{a}" for a in EXTRA_ARGS_ALLOWED)),
        cel(f"!self.matches({q(EXTRA_ARG_ALLOWED)}) || self.matches({q(EXTRA_ARG_VALUE)})",
            "value not accepted by trtllm-build 1.2.x: switches take no value ("
            + ", ".join(f"--{n}" for n, v in EXTRA_ARGS.items() if v == ())
            + "), the others --flag=value with a positive integer or one of its choices"),
    )),
    AfterValidator(_check_extra_arg),
]


class ModelSpec(KilnModel):
    """The weights to build from."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "!has(self.revision) || self.source.startsWith('pvc://')",
        "revision pins a pvc:// source; for hf:// write the revision into the URI "
        "(hf://org/name@revision), s3:// sources are identified by object versions",
        ".revision")))

    source: SourceUri
    """Where the checkpoint is: ``s3://bucket/prefix/``, ``hf://org/name@revision`` (revision
    optional: a branch is followed) or ``pvc://claim/path``."""
    credentials_secret: Name | None = None
    """Secret (same namespace) with credentials for the source: ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (and optionally ``AWS_ENDPOINT_URL``) for s3, ``HF_TOKEN`` for hf."""
    revision: str | None = Field(default=None, min_length=1, max_length=128)
    """For a pvc:// source only: a label you change whenever the files change (a PVC has no
    versions kiln can read)."""


class Target(KilnModel):
    """A GPU to build for: a catalogue name, or a node selector with its compute capability."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("!has(self.gpu) || (!has(self.nodeSelector) && !has(self.computeCapability))",
            "set either gpu, or nodeSelector with computeCapability, not both"),
        cel("has(self.gpu) || (has(self.nodeSelector) && has(self.computeCapability))",
            "a target needs gpu, or nodeSelector together with computeCapability"),
    ))

    gpu: str | None = Field(default=None, max_length=32)
    """A GPU from kiln's catalogue, e.g. ``H100-SXM``, ``A100-80GB``, ``L40S``."""
    node_selector: LabelMap | None = Field(
        default=None, min_length=1, max_length=16, json_schema_extra=rules(LABEL_KEY_RULE))
    """Node labels selecting the build nodes, for GPUs not in the catalogue."""
    compute_capability: str | None = Field(default=None, max_length=5, json_schema_extra=rules(
        cel(f"self.matches({q(COMPUTE_CAPABILITY)})",
            "must be major.minor, e.g. 8.0, 8.9 or 9.0"),
        cel(f"!self.matches({q(COMPUTE_CAPABILITY)}) || "
            f"double(self) >= {MIN_COMPUTE_CAPABILITY}",
            f"TensorRT-LLM needs compute capability {MIN_COMPUTE_CAPABILITY} (Ampere) or newer"),
    ))
    """The compute capability of the selected nodes' GPUs, e.g. ``9.0``; required with
    ``nodeSelector``."""


class Calibration(KilnModel):
    """The data ModelOpt calibrates on, fetched by the builder like the weights."""

    dataset: SourceUri
    """``s3://bucket/prefix/``, ``pvc://claim/path`` or ``hf://org/name@revision`` (a dataset
    repository on the Hub, or on ``HF_ENDPOINT``'s mirror): a Hugging Face ``datasets``
    directory whose ``train`` split has a ``text`` column (quantize.py reads it with
    ``load_dataset(dir, split="train")["text"]``). Uses the model's ``credentialsSecret``."""
    samples: int | None = Field(default=None, ge=1, le=65536)
    """Samples to calibrate on (``--calib_size``); unset: the tool's default (512; AWQ uses at
    most 32)."""


class Quantization(KilnModel):
    """How weights, activations and the KV cache are quantized."""

    algo: QuantAlgo = "none"
    """Weight/activation quantization: ``none``, ``fp8`` (8.9+), ``int8_sq`` (SmoothQuant),
    ``int4_awq``, ``w4a8_awq`` (8.9+), ``int8_wo`` / ``int4_wo`` (weight-only) or ``nvfp4``
    (10.0+). Whether a target GPU can run it is checked against kiln's catalogue."""
    kv_cache: KvCacheQuant = "none"
    """KV cache quantization: ``none``, ``fp8`` or ``int8``. With backend ``pytorch`` and
    ``algo: none``, ``fp8`` is a runtime setting (no calibration)."""
    calibration: Calibration | None = None
    """Calibration data (backend ``tensorrt`` only: the PyTorch backend's ModelOpt scripts take
    only ModelOpt's named Hub datasets); unset: the tool's default, Hugging Face's
    ``cnn_dailymail``, which needs access to the Hub from the build pod."""


class Parallelism(KilnModel):
    """How the model is split across GPUs; the build and each serving pod use tensor * pipeline
    GPUs on one node."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel(f"self.tensor * self.pipeline <= {MAX_GPUS_PER_BUILD}",
            f"tensor * pipeline must be at most {MAX_GPUS_PER_BUILD} (the GPUs of one node)"),
    ))

    tensor: int = Field(default=1, ge=1, le=MAX_GPUS_PER_BUILD, json_schema_extra=rules(
        cel("self in [1, 2, 4, 8]", "must be a power of two: 1, 2, 4 or 8")))
    """Tensor-parallel ranks (a power of two)."""
    pipeline: int = Field(default=1, ge=1, le=MAX_GPUS_PER_BUILD)
    """Pipeline-parallel stages."""


INFLIGHT_BATCHING = (
    "both servers run the engine with in-flight batching, which refuses it at start "
    "(kiln.trtllm.runtime inflight_batching: 'TrtGptModelInflightBatching requires GPT "
    "attention/Mamba Conv 1d plugin with packed input and paged KV cache.')")
"""Why the in-flight batching plugins cannot be switched off."""
DRAFT_EXTERNAL = "--speculative_decoding_mode=draft_tokens_external"
GemmPlugin = Literal["auto", "float16", "bfloat16", "float32", "fp8", "nvfp4", "disable"]


class Plugins(KilnModel):
    """TensorRT-LLM plugins and kernels (``tensorrt`` backend only)."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("self.contextFmha || !self.pagedContextFmha",
            "pagedContextFmha needs contextFmha", ".pagedContextFmha"),
        cel("self.pagedKvCache || !self.pagedContextFmha",
            "pagedContextFmha needs pagedKvCache", ".pagedContextFmha"),
    ))

    gpt_attention: Literal["auto", "float16", "bfloat16", "float32", "disable"] = "auto"
    """``--gpt_attention_plugin``; ``disable`` is refused: in-flight batching, which both
    servers run, needs it."""
    gemm: GemmPlugin | None = None
    """``--gemm_plugin``; ``fp8`` and ``nvfp4`` need the matching quantization. Unset:
    trtllm-build's default (off, except ``nvfp4`` with nvfp4 quantization)."""
    context_fmha: bool = True
    """Fused multi-head attention in the context phase (``--context_fmha``)."""
    paged_kv_cache: bool = True
    """Paged KV cache (``--kv_cache_type paged``); ``false`` is refused: in-flight batching
    needs it."""
    paged_context_fmha: bool = True
    """Chunked/paged context attention (``--use_paged_context_fmha``)."""
    fp8_context_fmha: bool | None = None
    """FP8 context attention (``--use_fp8_context_fmha``). Unset: trtllm-build's default (on;
    kept for fp8, w4a8_awq and nvfp4, off otherwise). ``true`` needs one of those algorithms
    and, with ``pagedContextFmha``, ``kvCache: fp8`` (trtllm-build turns it off otherwise);
    ``false`` cannot be had with ``kvCache: fp8`` and ``pagedContextFmha`` (trtllm-build turns
    it back on for FP8 paged context FMHA)."""
    remove_input_padding: bool = True
    """Packed inputs without padding (``--remove_input_padding``); ``false`` is refused:
    in-flight batching needs it."""
    multiple_profiles: bool = False
    """Several TensorRT optimization profiles (``--multiple_profiles``): faster, slower build."""
    reduce_fusion: bool = False
    """Fuse all-reduce with the following norm (``--reduce_fusion``)."""


class WarmupShape(KilnModel):
    """Requests of one shape sent while warming up."""

    prompt_tokens: int = Field(default=128, ge=1, le=1048576)
    """Prompt length, in tokens (about)."""
    output_tokens: int = Field(default=8, ge=1, le=4096)
    """Tokens generated per request."""
    concurrency: int = Field(default=1, ge=1, le=1024)
    """Requests sent at once, so batched kernels are tuned and compiled too."""


class TorchCompile(KilnModel):
    """torch.compile in the PyTorch backend (the LLM API's ``torch_compile_config``)."""

    inductor: bool = False
    """``enable_inductor``: compile with Inductor (Triton kernels, kept in the artifact set)."""
    piecewise_cuda_graph: bool = False
    """``enable_piecewise_cuda_graph``."""


class Aot(KilnModel):
    """Ahead-of-time artifacts for backend ``pytorch``: the build Job starts the server with
    these options on the target GPU, warms it up, and keeps its kernel tuning and compiler
    caches as files of the engine, so serving pods start warm. Every field shapes kernels, so
    every field is part of the engine key; the serving pods get the same options."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("!has(self.cudaGraphBatchSizes) || self.cudaGraphBatchSizes.all(b, b >= 1)",
            "cudaGraphBatchSizes must be positive", ".cudaGraphBatchSizes"),
    ))

    enabled: bool = True
    """Make the artifact set (ignored by backend ``tensorrt``, whose engine is compiled)."""
    cuda_graph_batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        default=None, max_length=64)
    """``cuda_graph_config.batch_sizes``; unset: the runtime's own list."""
    cuda_graph_padding: bool = False
    """``cuda_graph_config.enable_padding``: round batches up to a captured size."""
    torch_compile: TorchCompile | None = None
    """Unset: no torch.compile (the runtime's default)."""
    attention_backend: Literal["TRTLLM", "FLASHINFER"] = "TRTLLM"
    """``attn_backend``."""
    autotuner: bool = True
    """``enable_autotuner``: tune kernels at start (the tuning is what the set keeps)."""
    warmup: list[WarmupShape] = Field(default_factory=lambda: [WarmupShape()], min_length=1,
                                      max_length=16)
    """The shapes to warm up with: tuning and compilation follow what the server sees."""


FP8_FMHA_ALGOS = ("fp8", "w4a8_awq", "nvfp4")
"""Algorithms trtllm-build keeps FP8 context FMHA for (kiln.trtllm.refusals)."""
CALIBRATED = ("fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4")
"""Algorithms that calibrate with ModelOpt."""
FP8_FMHA_CEL = "[" + ", ".join(q(a) for a in FP8_FMHA_ALGOS) + "]"
CALIBRATED_CEL = "[" + ", ".join(q(a) for a in CALIBRATED) + "]"


class BuildSpec(KilnModel):
    """What to build: backend, precision, parallelism and the engine's limits."""

    model_config = ConfigDict(json_schema_extra=rules(
        # the engine's plugins (backend tensorrt; the pytorch backend ignores them)
        cel("self.backend != 'tensorrt' || self.plugins.gptAttention != 'disable'",
            "gptAttention disable: " + INFLIGHT_BATCHING, ".plugins.gptAttention"),
        cel("self.backend != 'tensorrt' || self.plugins.removeInputPadding",
            "removeInputPadding false: " + INFLIGHT_BATCHING, ".plugins.removeInputPadding"),
        cel("self.backend != 'tensorrt' || self.plugins.pagedKvCache",
            "pagedKvCache false: " + INFLIGHT_BATCHING, ".plugins.pagedKvCache"),
        cel("!has(self.maxSeqLen) || self.maxSeqLen >= self.maxInputLen",
            "maxSeqLen must be at least maxInputLen", ".maxSeqLen"),
        cel("self.backend != 'pytorch' || size(self.extraArgs) == 0",
            "extraArgs are trtllm-build flags; backend pytorch takes none", ".extraArgs"),
        cel("!has(self.plugins.gemm) || self.plugins.gemm != 'fp8' || "
            "self.quantization.algo == 'fp8'",
            "plugins.gemm fp8 needs quantization.algo fp8", ".plugins.gemm"),
        cel("!has(self.plugins.gemm) || self.plugins.gemm != 'nvfp4' || "
            "self.quantization.algo == 'nvfp4'",
            "plugins.gemm nvfp4 needs quantization.algo nvfp4", ".plugins.gemm"),
        cel("!has(self.plugins.fp8ContextFmha) || !self.plugins.fp8ContextFmha || "
            f"self.quantization.algo in {FP8_FMHA_CEL}",
            "plugins.fp8ContextFmha true needs quantization.algo fp8, w4a8_awq or nvfp4 "
            "(trtllm-build turns it off otherwise)", ".plugins.fp8ContextFmha"),
        cel("!has(self.plugins.fp8ContextFmha) || self.plugins.fp8ContextFmha || "
            "!(self.quantization.kvCache == 'fp8' && self.plugins.pagedContextFmha && "
            f"self.quantization.algo in {FP8_FMHA_CEL})",
            "plugins.fp8ContextFmha false with kvCache fp8 and pagedContextFmha: trtllm-build "
            "turns FP8 context FMHA back on to support FP8 paged context FMHA; set "
            "pagedContextFmha false too, or leave fp8ContextFmha unset",
            ".plugins.fp8ContextFmha"),
        cel("!has(self.plugins.fp8ContextFmha) || !self.plugins.fp8ContextFmha || "
            "!self.plugins.pagedContextFmha || self.quantization.kvCache == 'fp8'",
            "plugins.fp8ContextFmha true with pagedContextFmha needs quantization.kvCache fp8 "
            "(trtllm-build turns FP8 context FMHA off otherwise: 'FP8 Paged Context FMHA is "
            "disabled because it must be used together with fp8 KV Cache.'); set kvCache fp8, "
            "pagedContextFmha false, or leave fp8ContextFmha unset", ".plugins.fp8ContextFmha"),
        cel(f"!self.extraArgs.exists(a, a == {q(DRAFT_EXTERNAL)}) || "
            "(self.plugins.pagedContextFmha && self.quantization.kvCache != 'int8' && "
            f"(self.quantization.kvCache != 'fp8' || self.quantization.algo in {FP8_FMHA_CEL}))",
            f"extraArgs {DRAFT_EXTERNAL} needs plugins.pagedContextFmha true, and a kvCache "
            "other than int8, or fp8 only with algo fp8, w4a8_awq or nvfp4 (trtllm-build turns "
            "paged context FMHA off otherwise): without it "
            "the runtime turns KV cache block reuse off, and a draft_tokens_external target "
            "model then fails at start (kiln.trtllm.runtime draft_external_needs_reuse: 'KV "
            "cache block reuse must be enabled for speculative decoding target model')",
            ".plugins.pagedContextFmha"),
        cel("!has(self.quantization.calibration) || self.backend != 'pytorch'",
            "quantization.calibration cannot be used with backend pytorch: its ModelOpt "
            "HF-export scripts calibrate only on ModelOpt's named Hub datasets "
            "(SUPPORTED_DATASET_CONFIG, e.g. cnn_dailymail), not on a directory; remove it "
            "(the default needs Hub access) or use backend tensorrt",
            ".quantization.calibration"),
        cel("!has(self.quantization.calibration) || self.backend != 'tensorrt' || "
            f"self.quantization.algo in {CALIBRATED_CEL} || self.quantization.kvCache != 'none'",
            "quantization.calibration is only used when the build calibrates: backend "
            "tensorrt with algo fp8, int8_sq, int4_awq, w4a8_awq, nvfp4 or a kvCache",
            ".quantization.calibration"),
    ))

    backend: Backend = "tensorrt"
    """``tensorrt``: compile engines with trtllm-build; ``pytorch``: prepare the checkpoint for
    TensorRT-LLM's PyTorch backend (no compile)."""
    dtype: Dtype = "auto"
    """Activation/weight dtype of the unquantized parts; ``auto`` takes the checkpoint's."""
    quantization: Quantization = Field(default_factory=Quantization)
    """Quantization of weights, activations and KV cache."""
    parallelism: Parallelism = Field(default_factory=Parallelism)
    """Tensor and pipeline parallelism."""
    max_batch_size: int = Field(default=2048, ge=1, le=65536)
    """Most requests in one batch (``--max_batch_size``)."""
    max_input_len: int = Field(default=1024, ge=1, le=1048576)
    """Longest prompt in tokens (``--max_input_len``)."""
    max_seq_len: int | None = Field(default=None, ge=1, le=1048576)
    """Longest prompt plus output in tokens (``--max_seq_len``); unset: the model's context
    length."""
    max_num_tokens: int = Field(default=8192, ge=1, le=1048576)
    """Most tokens in one batch after padding removal (``--max_num_tokens``)."""
    plugins: Plugins = Field(default_factory=Plugins)
    """Plugins and kernels (ignored by the pytorch backend)."""
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=32)
    """More trtllm-build flags, each ``--flag`` or ``--flag=value``, from an allow-list (no
    flag that names a path or that a field above sets)."""
    aot: Aot = Field(default_factory=Aot)
    """Ahead-of-time kernel tuning and compilation for backend ``pytorch`` (an artifact set
    per engine, checked against the node and image before it is loaded)."""


class Toolchain(KilnModel):
    """The builder image (TensorRT-LLM ≤ 1.2.x, which still has trtllm-build)."""

    image: str | None = Field(default=None, min_length=1, max_length=512, pattern=(
        r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([-a-z0-9._]*[a-z0-9])?)*"
        r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?(@sha256:[a-f0-9]{64})?$"))
    """Builder image reference (pin a digest for reproducible keys); unset: the operator's
    default. Part of the engine key."""


class Output(KilnModel):
    """Where engines are stored."""

    store: StoreUri | None = None
    """``s3://bucket/prefix/`` or ``pvc://claim/path``; engines go to ``<store>/engines/<key>/``.
    Unset: the operator's default store."""


class Rebuild(KilnModel):
    """When to rebuild without a change to this object."""

    on_weight_change: bool = True
    """Rebuild when the weights change (new S3 object versions/ETags, a new HF commit)."""
    poll_interval: Duration = "1h"
    """How often to re-read the weights' identity, e.g. ``30m`` or ``1h`` (at least ``1m``)."""
    settle: Grace | None = None
    """Weights must have held still this long before they are built: an S3 prefix whose
    newest object is younger, or with a multipart upload in progress, is ``WeightsSettling``
    (an upload in progress). Unset: the operator's ``KILN_REBUILD_SETTLE`` (default 1m)."""


class Toleration(KilnModel):
    """A toleration for the build pod, as in a Pod spec."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists", ".value"),
        cel("self.operator == 'Exists' || has(self.key)",
            "an empty key needs operator Exists", ".key"),
        cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies to effect NoExecute only", ".tolerationSeconds"),
    ))

    key: str | None = Field(default=None, min_length=1, max_length=317)
    """The taint key; unset with operator Exists tolerates every taint."""
    operator: Literal["Equal", "Exists"] = "Equal"
    """``Equal`` or ``Exists``."""
    value: str | None = Field(default=None, max_length=63)
    """The taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to tolerate; unset: all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class JobSpec(KilnModel):
    """Settings of the build Job."""

    resources: Resources | None = None
    """CPU and memory of the build container (GPUs come from parallelism); converting a 70B
    model needs a few hundred GiB of host memory."""
    active_deadline_seconds: int = Field(default=21600, ge=60, le=604800)
    """Give up a build attempt after this many seconds."""
    backoff_limit: int = Field(default=2, ge=0, le=10)
    """Retries after transient failures (bad input fails at once)."""
    priority_class_name: Name | None = None
    """PriorityClass of the build pod: one the operator allows (``KILN_ALLOWED_PRIORITY_CLASSES``),
    else the EngineBuild stalls (``PodOverrideNotAllowed``)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    """Tolerations besides the ``nvidia.com/gpu`` one kiln adds."""
    security_context: SecurityContext | None = None
    """Overrides of the build pod's restricted security context, for builder images that
    need more (docs/security.md)."""
    pending_timeout: Grace = "30m"
    """How long the build pod may stay unschedulable (an autoscaler may add a node), or the
    Job queued in Kueue, before the EngineBuild is ``Stalled``; it builds by itself when a
    node comes (or Kueue admits it) later."""
    queue_name: Name | None = None
    """Kueue LocalQueue the build Job joins (label ``kueue.x-k8s.io/queue-name``): the Job is
    created suspended and runs when Kueue admits it. Unset: the operator's default
    (``KILN_BUILD_QUEUE``), if any."""
    workload_priority_class: Name | None = None
    """Kueue WorkloadPriorityClass of the build (label ``kueue.x-k8s.io/priority-class``);
    unset, Kueue takes ``priorityClassName``'s priority."""


class EngineBuildSpec(KilnModel):
    """The desired engines: weights, targets, build settings and builder image."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("self.targets.all(t, !has(t.gpu) || "
            "self.targets.filter(u, has(u.gpu) && u.gpu == t.gpu).size() == 1)",
            "each gpu may be listed once", ".targets"),
    ))

    model: ModelSpec
    """The weights."""
    targets: list[Target] = Field(default_factory=list, max_length=16)
    """GPUs to build for. Empty: those the EngineDeployments referencing this build serve on."""
    build: BuildSpec = Field(default_factory=BuildSpec)
    """Backend, quantization, parallelism and limits."""
    toolchain: Toolchain = Field(default_factory=Toolchain)
    """The builder image."""
    output: Output = Field(default_factory=Output)
    """Where engines are stored."""
    rebuild: Rebuild = Field(default_factory=Rebuild)
    """Automatic rebuilds."""
    job: JobSpec = Field(default_factory=JobSpec)
    """The build Job."""


class Weights(KilnModel):
    """The weights' identity, read without downloading them."""

    identity: str | None = Field(default=None, max_length=1024)
    """Digest of S3 versions/ETags and sizes, the HF commit, or PVC path and revision."""
    checked_at: datetime | None = None
    """When the identity was last read."""
    source: str | None = Field(default=None, max_length=1024)
    """The source (and ``@revision``, if any) the identity was read from: while it is the
    spec's, the identity is kept across operator restarts (with ``onWeightChange: false`` it is
    the pin)."""


class Startup(KilnModel):
    """What the engine's artifact set saves, as the build Job measured it on the target GPU."""

    runtime: str | None = Field(default=None, max_length=64)
    """The server the set was made with."""
    cold_seconds: float | None = Field(default=None, ge=0)
    """Server start to its first token, with no artifacts."""
    warm_seconds: float | None = Field(default=None, ge=0)
    """The same, with the set placed as a serving pod places it."""
    artifact_bytes: int | None = Field(default=None, ge=0)
    """Size of the artifact set."""


class EngineStatus(KilnModel):
    """One engine: one target's build."""

    target: str = Field(max_length=256)
    """The target: a catalogue GPU name, or ``cc<major.minor>`` for a node selector target."""
    gpu_product: str | None = Field(default=None, max_length=128)
    """``nvidia.com/gpu.product`` of the build node."""
    compute_capability: str | None = Field(default=None, max_length=5)
    """Compute capability the engine is built for."""
    key: str | None = Field(default=None, max_length=64)
    """The engine key (sha256 hex)."""
    uri: str | None = Field(default=None, max_length=2048)
    """Where the engine is: ``<store>/engines/<key>/``."""
    upload: str | None = Field(default=None, max_length=64)
    """Which upload of the key the store holds (its manifest's): an engine built again after
    it went missing or was found damaged has a new one, and serving pods roll onto it."""
    state: EngineState = "Building"
    """``Cached`` (found in the store), ``Building``, ``Ready`` (built now) or ``Failed``."""
    job: str | None = Field(default=None, max_length=253)
    """The build Job, while there is one."""
    build_seconds: float | None = Field(default=None, ge=0)
    """How long the build took."""
    size_bytes: int | None = Field(default=None, ge=0)
    """Total size of the engine files."""
    trtllm_version: str | None = Field(default=None, max_length=64)
    """TensorRT-LLM version the builder ran."""
    tensorrt_version: str | None = Field(default=None, max_length=64)
    """TensorRT version the builder ran."""
    message: str | None = Field(default=None, max_length=32768)
    """What went wrong, for a Failed engine; for a built one, what trtllm-build changed from
    the spec."""
    plugins: dict[str, bool] | None = Field(default=None, max_length=16)
    """The plugin features the engine really has (``plugins`` field names), read from its
    ``build_config.plugin_config``: trtllm-build turns some off silently (paged context FMHA
    with an int8 KV cache, for one)."""
    previous_key: str | None = Field(default=None, max_length=64)
    """While ``key`` is not ready yet: the engine this target had before, which serving
    keeps using until the new one is ready."""
    previous_uri: str | None = Field(default=None, max_length=2048)
    """Where ``previousKey`` is stored."""
    startup: Startup | None = None
    """For an engine with an artifact set (backend ``pytorch``): its cold and warm start."""


class EngineBuildStatus(KilnModel):
    """What kiln observed and did; written by kiln only."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this status describes."""
    phase: BuildPhase | None = None
    """``Pending``, ``Building``, ``Ready`` (every target has an engine) or ``Failed``."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, json_schema_extra=CONDITIONS_EXTRA)
    """kstatus conditions: ``Ready``, ``Reconciling``, ``Stalled``."""
    weights: Weights | None = None
    """The weights' identity."""
    auto_targets: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=32)
    """GPU products added as targets because EngineDeployments with ``gpu: auto`` serve on
    them (the spec is never edited)."""
    engines: list[EngineStatus] = Field(default_factory=list, max_length=48)
    """One entry per effective target."""
    gpus: str | None = Field(default=None, max_length=512)
    """The targets' GPUs, comma-separated (for ``kubectl get``)."""
    engine_keys: str | None = Field(default=None, max_length=512)
    """The first 12 characters of each engine key, comma-separated (for ``kubectl get``)."""


class EngineBuild(KilnModel):
    """Builds TensorRT-LLM engines of one model for a set of GPUs, stores them by content key,
    and rebuilds them when the weights change."""

    api_version: Literal["kiln.dev/v1alpha1"] = API_VERSION
    """``kiln.dev/v1alpha1``."""
    kind: Literal["EngineBuild"] = "EngineBuild"
    """``EngineBuild``."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""
    spec: EngineBuildSpec
    """What to build."""
    status: EngineBuildStatus | None = None
    """What kiln observed."""


__all__ = [
    "CALIBRATED",
    "COMPUTE_CAPABILITY",
    "DRAFT_EXTERNAL",
    "EXTRA_ARGS",
    "EXTRA_ARGS_ALLOWED",
    "FP8_FMHA_ALGOS",
    "INFLIGHT_BATCHING",
    "MAX_GPUS_PER_BUILD",
    "MIN_COMPUTE_CAPABILITY",
    "NAME_SCHEMA",
    "SM100_PLUGIN_ARGS",
    "Backend",
    "BuildPhase",
    "BuildSpec",
    "Calibration",
    "Dtype",
    "EngineBuild",
    "EngineBuildSpec",
    "EngineBuildStatus",
    "EngineState",
    "EngineStatus",
    "JobSpec",
    "KvCacheQuant",
    "ModelSpec",
    "Output",
    "Parallelism",
    "Plugins",
    "QuantAlgo",
    "Quantization",
    "Rebuild",
    "Target",
    "Toleration",
    "Toolchain",
    "Weights",
]
