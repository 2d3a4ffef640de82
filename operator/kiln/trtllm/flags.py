"""Command-line flags of the TensorRT-LLM 1.2.x tools, and ``check_command`` to test an argv.

``Flag.nargs``: ``"0"`` a switch (argparse ``store_true`` / click ``is_flag``), ``"1"`` one value,
``"?"`` an optional value, ``"+"`` one or more values up to the next flag. ``--flag=value``
passes exactly one value, so a ``"+"`` flag gets one value that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

Nargs = Literal["0", "1", "+", "?"]
ArgType = Literal["str", "int", "float", "path"]

BUILD_PY = "tensorrt_llm/commands/build.py@65f1d1536e18aea3380e6e270e00895a709333eb"
PLUGIN_PY = "tensorrt_llm/plugin/plugin.py@c20322ffd3dc0740ca530c9fad989b22e64f6e06"
LLAMA_CONVERT = ("examples/models/core/llama/convert_checkpoint.py"
                 "@368f8f2ade001e8fcb955be39e4812f918d7fb92")
QUANTIZE_PY = "examples/quantization/quantize.py@c8c6df08bd0ead54cd47f7973e1e425c28a174cd"
SERVE_PY = "tensorrt_llm/commands/serve.py@index-id:4219957788"
"""The index gave this serve.py by file id only (no commit): the newest pre-removal version."""
LOG_LEVELS = ("internal_error", "error", "warning", "info", "verbose", "debug", "trace")
"""``severity_map.keys()`` of ``tensorrt_llm/logger.py``, as ``trtllm-build -h`` prints them
(nvidia.github.io/TensorRT-LLM/commands/trtllm-build.html)."""


_NARGS: dict[str, Nargs] = {"0": "0", "1": "1", "+": "+", "?": "?"}
_TYPES: dict[str, ArgType] = {"str": "str", "int": "int", "float": "float", "path": "path"}


@dataclass(frozen=True)
class Flag:
    """One option: its spelling (with dashes), arity, value type, choices and source."""

    name: str
    nargs: Nargs
    type: ArgType = "str"
    choices: tuple[str, ...] | None = None
    source: str = ""
    default: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Command:
    """A tool: its flags and the positional arguments it takes (by name)."""

    program: str
    flags: tuple[Flag, ...]
    positionals: tuple[str, ...] = ()
    source: str = ""

    def flag(self, name: str) -> Flag | None:
        return next((f for f in self.flags if f.name == name), None)


def _table(program: str, source: str, rows: str, *, extra: tuple[Flag, ...] = (),
           positionals: tuple[str, ...] = ()) -> Command:
    """Rows are ``name nargs type`` (whitespace separated), one a line."""
    flags = [Flag(n, _NARGS[a], _TYPES[t], source=source)
             for n, a, t in (line.split() for line in rows.splitlines() if line.strip())]
    return Command(program, (*flags, *extra), positionals, source)


def _choice(name: str, choices: tuple[str, ...], source: str, default: str | None = None,
            note: str = "", nargs: Nargs = "1", kind: ArgType = "str") -> Flag:
    return Flag(name, nargs, kind, choices, source, default, note)


DTYPE_PLUGIN = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
"""``DefaultPluginDtype`` choices (``None`` spelled ``disable``)."""
SWITCH = ("enable", "disable")
_PLUGIN_DTYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "bert_attention_plugin": (DTYPE_PLUGIN, "auto"),
    "gpt_attention_plugin": (DTYPE_PLUGIN, "auto"),
    "gemm_plugin": (("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4",
                     "disable"), "None (off)"),
    "gemm_swiglu_plugin": (("fp8", "disable"), "disable"),
    "fp8_rowwise_gemm_plugin": (DTYPE_PLUGIN, "disable"),
    "lora_plugin": (DTYPE_PLUGIN, "disable"),
    "moe_plugin": (DTYPE_PLUGIN, "auto"),
    "mamba_conv1d_plugin": (DTYPE_PLUGIN, "auto"),
    "nccl_plugin": (DTYPE_PLUGIN, "auto"),
    "low_latency_gemm_plugin": (("fp8", "disable"), "disable"),
    "low_latency_gemm_swiglu_plugin": (("fp8", "disable"), "disable"),
    "gemm_allreduce_plugin": (("float16", "bfloat16", "disable"), "disable"),
}
_PLUGIN_SWITCHES: dict[str, str] = {
    "dora_plugin": "disable", "context_fmha": "enable", "bert_context_fmha_fp32_acc": "disable",
    "remove_input_padding": "enable", "use_paged_context_fmha": "enable",
    "use_fp8_context_fmha": "enable", "fuse_fp4_quant": "disable",
    "multiple_profiles": "disable", "paged_state": "enable", "streamingllm": "disable",
    "norm_quant_fusion": "disable", "reduce_fusion": "disable", "user_buffer": "disable",
    "use_fused_mlp": "enable", "pp_reduce_scatter": "disable",
}
_SWITCH_NOTES = {
    "streamingllm": "accepted by argparse, but build.py asserts it off: 'StreamingLLM is no "
                    "longer supported because attention sink cannot work with the non-cyclic "
                    "kv cache kernel & runtime changes.'",
    "pp_reduce_scatter": "build.py asserts the architecture is MixtralForCausalLM",
}
PLUGIN_FLAGS: tuple[Flag, ...] = (
    *(_choice(f"--{n}", c, PLUGIN_PY, d) for n, (c, d) in _PLUGIN_DTYPES.items()),
    *(_choice(f"--{n}", SWITCH, PLUGIN_PY, d, _SWITCH_NOTES.get(n, ""))
      for n, d in _PLUGIN_SWITCHES.items()),
    Flag("--tokens_per_block", "1", "int", None, PLUGIN_PY, "32"),
)
"""``cli_plugin_args`` of plugin.py, as ``add_plugin_argument`` exposes them."""

TRTLLM_BUILD = _table("trtllm-build", BUILD_PY, """
--checkpoint_dir 1 path
--model_config 1 path
--build_config 1 path
--model_cls_file 1 path
--model_cls_name 1 str
--output_dir 1 path
--max_batch_size 1 int
--max_input_len 1 int
--max_seq_len 1 int
--max_decoder_seq_len 1 int
--max_beam_width 1 int
--max_num_tokens 1 int
--opt_num_tokens 1 int
--max_encoder_input_len 1 int
--max_prompt_embedding_table_size 1 int
--max_multimodal_len 1 int
--paged_kv_cache 1 str
--input_timing_cache 1 path
--output_timing_cache 1 path
--strip_plan 0 str
--weight_sparsity 0 str
--weight_streaming 0 str
--fast_build 0 str
--workers 1 int
--enable_debug_output 0 str
--visualize_network 1 path
--dry_run 0 str
--monitor_memory 0 str
--gather_context_logits 0 str
--gather_all_token_logits 0 str
--lora_dir + path
--max_lora_rank 1 int
--max_draft_len 1 int
""", extra=(
    _choice("--kv_cache_type", ("continuous", "paged", "disabled"), BUILD_PY,
            note="parsed by KVCacheType.from_string (bindings, not read); values from --help"),
    _choice("--profiling_verbosity", ("layer_names_only", "detailed", "none"), BUILD_PY),
    _choice("--log_level", LOG_LEVELS, BUILD_PY, "info"),
    _choice("--logits_dtype", ("float16", "float32"), BUILD_PY),
    Flag("--gather_generation_logits", "0", source=BUILD_PY,
         note="main() always logs it is deprecated (use --output_generation_logits at run time)"),
    _choice("--lora_ckpt_source", ("hf", "nemo"), BUILD_PY, "hf"),
    Flag("--lora_target_modules", "+", source=BUILD_PY,
         note="choices are LoraManager.LORA_MODULE_IDS keys (lora_manager.py, not read)"),
    _choice("--speculative_decoding_mode", ("draft_tokens_external", "lookahead_decoding",
                                            "medusa", "explicit_draft_tokens", "eagle"), BUILD_PY),
    *PLUGIN_FLAGS,
))
"""Every flag of ``trtllm-build`` (no ``--strongly_typed``, ``--builder_opt``, ``--tp_size``,
``--auto_parallel``, ``--cluster_key``: gone before 1.2)."""

CONVERT_CHECKPOINT_LLAMA = _table("convert_checkpoint.py", LLAMA_CONVERT, """
--model_dir 1 path
--meta_ckpt_dir 1 path
--tp_size 1 int
--pp_size 1 int
--moe_tp_size 1 int
--cp_size 1 int
--moe_ep_size 1 int
--vocab_size 1 int
--n_positions 1 int
--n_layer 1 int
--n_head 1 int
--n_kv_head 1 int
--n_embd 1 int
--inter_size 1 int
--multiple_of 1 int
--ffn_dim_multiplier 1 float
--rms_norm_eps 1 float
--use_weight_only 0 str
--disable_weight_only_quant_plugin 0 str
--calib_dataset 1 str
--calib_size 1 int
--calib_max_seq_length 1 int
--smoothquant 1 float
-sq 1 float
--use_qserve 0 str
--per_channel 0 str
--per_token 0 str
--int8_kv_cache 0 str
--fp8_kv_cache 0 str
--quant_ckpt_path 1 path
--use_fp8 0 str
--use_nvfp4 0 str
--use_fp8_rowwise 0 str
--use_meta_fp8_rowwise_recipe 0 str
--per_group 0 str
--load_by_shard 0 str
--hidden_act 1 str
--rotary_base 1 float
--group_size 1 int
--load_model_on_cpu 0 str
--use_parallel_embedding 0 str
--output_dir 1 path
--workers 1 int
--moe_num_experts 1 int
--moe_top_k 1 int
--moe_renorm_mode 1 int
--save_config_only 0 str
--remove_duplicated_kv_heads 0 str
--log_level 1 str
""", extra=(
    _choice("--dtype", ("auto", "float16", "bfloat16", "float32"), LLAMA_CONVERT, "auto"),
    _choice("--weight_only_precision", ("int8", "int4", "int8_gptq", "int4_gptq", "int4_awq"),
            LLAMA_CONVERT, "int8", nargs="?"),
    _choice("--embedding_sharding_dim", ("0", "1"), LLAMA_CONVERT, "0", kind="int"),
))
"""Read at a main commit that already calls ``emit_engine_arch_deprecation`` (PR #11723,
2026-02): newer than release/1.2 unless that PR was back-ported; flags as in 1.2 (unverified)."""

QUANTIZE_HAS_EXPORT_FORMAT = False
"""No ``--export_format`` (nor ``--export_fmt``) in any stored version of quantize.py: it always
writes a TensorRT-LLM checkpoint. ``--export_fmt {tensorrt_llm,hf}`` is ModelOpt's
``examples/llm_ptq/hf_ptq.py``; TensorRT-LLM's HF-format route was a separate script,
``examples/quantization/quantize_hf_to_hf.py`` (``--pyt_ckpt_path``, ``--export_path``,
``--kv_cache_qformat {fp8,nvfp4,none}``), presence at 1.2.x unverified."""
QUANTIZE = _table("quantize.py", QUANTIZE_PY, """
--model_dir 1 path
--nemo_ckpt_path 1 path
--calib_dataset 1 str
--calib_tp_size 1 int
--calib_pp_size 1 int
--seed 1 int
--tokenizer_max_seq_length 1 int
--batch_size 1 int
--calib_size 1 int
--calib_max_seq_length 1 int
--output_dir 1 path
--tp_size 1 int
--pp_size 1 int
--cp_size 1 int
--awq_block_size 1 int
--quantize_lm_head 0 str
--num_medusa_heads 1 int
--num_medusa_layers 1 int
--max_draft_len 1 int
--medusa_hidden_act 1 str
--medusa_model_dir 1 path
--quant_medusa_head 0 str
--autoq_format 1 str
--auto_quantize_bits 1 float
""", extra=(
    _choice("--decoder_type", ("gptnext", "llama"), QUANTIZE_PY, "gptnext"),
    _choice("--device", ("cuda", "cpu"), QUANTIZE_PY, "cuda"),
    _choice("--device_map", ("auto", "sequential", "cpu", "gpu"), QUANTIZE_PY, "auto"),
    _choice("--dtype", ("auto", "float16", "bfloat16", "float32"), QUANTIZE_PY, "auto"),
    _choice("--qformat", ("nvfp4", "fp8", "fp8_pc_pt", "int8_sq", "int4_awq", "w4a8_awq",
                          "int8_wo", "int4_wo", "full_prec"), QUANTIZE_PY, "full_prec"),
    _choice("--kv_cache_dtype", ("int8", "fp8"), QUANTIZE_PY),
))
"""The newest stored quantize.py (has nvfp4); ``--calib_dataset`` defaults to cnn_dailymail."""

QUANTIZE_BY_MODELOPT = ("tensorrt_llm/quantization/quantize_by_modelopt.py"
                        "@585c756579dc4d01f21fc13c2f604cdb461ac4f0")
CALIB_DATASET_FORMS = (
    ("pileval", "a JSON file from the-eye.eu (needs the internet)"),
    ("*scienceqa*|*science_qa*", "a local directory with that name, else the Hub's ScienceQA"),
    ("*cnn_dailymail*", "load_dataset(value, name='3.0.0', split='train')['article']"),
    ("<a directory>", "load_dataset(dir, split='train')['text'][:calib_size]"),
)
"""How ``get_calib_dataloader`` reads ``quantize.py --calib_dataset`` (in this order; anything
else raises NotImplementedError). The default is ``cnn_dailymail`` from the Hub."""
AWQ_MAX_CALIB_SIZE = 32
"""``quantize_and_export`` lowers ``calib_size`` to 32 for AWQ formats."""

_MODELOPT_FLAGS = """
--pyt_ckpt_path 1 path
--device 1 str
--qformat 1 str
--batch_size 1 int
--calib_size 1 int
--export_path 1 path
--dataset 1 str
--inference_tensor_parallel 1 int
--inference_pipeline_parallel 1 int
--awq_block_size 1 int
--auto_quantize_bits 1 float
--vlm 0 str
--trust_remote_code 0 str
"""
"""The flags both ModelOpt example scripts below declare alike (each table names its source)."""

QUANTIZE_HF_TO_HF_PY = ("examples/quantization/quantize_hf_to_hf.py"
                        "@d0973810dd8e2dffee22f8d3bda2a5f988da6346")
QUANTIZE_HF_TO_HF = _table("quantize_hf_to_hf.py", QUANTIZE_HF_TO_HF_PY, _MODELOPT_FLAGS + """
--compress 0 str
--verbose 0 str
--no_verbose 0 str
""", extra=(
    _choice("--sparsity_fmt", ("dense", "sparsegpt"), QUANTIZE_HF_TO_HF_PY, "dense"),
    _choice("--kv_cache_qformat", ("fp8", "nvfp4", "none"), QUANTIZE_HF_TO_HF_PY, "fp8",
            "upstream's default quantizes the KV cache to fp8: kiln always passes it"),
))
"""TensorRT-LLM's HF-to-HF ModelOpt script (``export_hf_checkpoint``, the checkpoint the PyTorch
backend loads). ``--qformat`` has no argparse choices; main() asserts int4_awq, fp8, nvfp4,
nvfp4_awq, w4a8_awq or fp8_pb_wo (or a KV-only format). main() overwrites ``--dataset`` with
cnn_dailymail: it cannot calibrate on local data. Only version stored; presence in the 1.2.x
image unverified, so the builder asks the image (``--help``)."""
QUANTIZE_HF_TO_HF_QFORMATS = ("int4_awq", "fp8", "nvfp4", "nvfp4_awq", "w4a8_awq", "fp8_pb_wo")
QUANTIZE_HF_TO_HF_IGNORES_DATASET = True

QUANTIZE_WITH_MODELOPT_PY = ("examples/quantization/quantize_with_modelopt.py"
                             "@bd102e24caae899b7c4ecf4b0404bd16a93addda")
QUANTIZE_WITH_MODELOPT = _table("quantize_with_modelopt.py", QUANTIZE_WITH_MODELOPT_PY,
                                _MODELOPT_FLAGS + """
""", extra=(
    _choice("--sparsity_fmt", ("dense", "sparsegpt"), QUANTIZE_WITH_MODELOPT_PY, "dense"),
    _choice("--disable_kv_cache_quant", ("True", "False", "true", "false"),
            QUANTIZE_WITH_MODELOPT_PY, note="type=lambda x: x.lower() == 'true'"),
    _choice("--export_fmt", ("tensorrt_llm", "hf"), QUANTIZE_WITH_MODELOPT_PY, "tensorrt_llm",
            "main() calls export_hf_checkpoint whatever the value"),
))
"""The older HF-export script (same ``export_hf_checkpoint`` route): passes ``--dataset`` to
ModelOpt's ``get_dataset_dataloader``, which takes only a name of its
``SUPPORTED_DATASET_CONFIG`` (``MODELOPT_DATASETS_ONLY_NAMED``): not a directory, so kiln never
passes one (admission refuses calibration with backend pytorch); with ``--export_fmt hf`` main()
asserts
int4_awq, fp8, nvfp4, nvfp4_awq or w4a8_awq; KV cache fp8 unless ``--disable_kv_cache_quant``
(never for int8_sq)."""
MODELOPT_DATASET_UTILS = ("NVIDIA/TensorRT-Model-Optimizer modelopt/torch/utils/dataset_utils.py"
                          "@0bf8f025740e5487ad1684ea846984462533fffc")
MODELOPT_DATASETS = ("open_code_reasoning", "open_math_reasoning",
                     "llama-nemotron-post-training-dataset", "nemotron-post-training-dataset-v2",
                     "nemotron-post-training-dataset-v1", "magpie", "cnn_dailymail", "pile",
                     "pg19", "wikipedia", "c4")
"""``SUPPORTED_DATASET_CONFIG`` keys (MODELOPT_DATASET_UTILS): each a Hub dataset."""
MODELOPT_DATASETS_ONLY_NAMED = True
"""``_get_dataset_samples``: ``if dataset_name not in SUPPORTED_DATASET_CONFIG: raise
NotImplementedError(f"dataset {dataset_name} is not supported. ...")`` (MODELOPT_DATASET_UTILS;
the ModelOpt line TensorRT-LLM 1.2 pins reads datasets the same way): a local directory is
refused."""
HF_PTQ_PY = ("NVIDIA/TensorRT-Model-Optimizer examples/llm_ptq/hf_ptq.py"
             "@05ab948420d840fbcaa4b32cb5948d99408ed7a6")
HF_PTQ_DIR = "llm_ptq"
"""Its directory under ModelOpt's ``examples/`` (newer ModelOpt moves it to ``hf_ptq/``)."""
HF_PTQ = _table("hf_ptq.py", HF_PTQ_PY, """
--pyt_ckpt_path 1 path
--device 1 str
--qformat 1 str
--batch_size 1 int
--calib_size 1 str
--export_path 1 path
--dataset 1 str
--inference_tensor_parallel 1 int
--inference_pipeline_parallel 1 int
--awq_block_size 1 int
--auto_quantize_bits 1 float
--trust_remote_code 0 str
--gpu_max_mem_percentage 1 float
--use_seq_device_map 0 str
--verbose 0 str
--no-verbose 0 str
--low_memory_mode 0 str
--attn_implementation 1 str
--lora 0 str
""", extra=(
    _choice("--sparsity_fmt", ("dense", "sparsegpt"), HF_PTQ_PY, "dense"),
    _choice("--kv_cache_qformat", ("none", "fp8", "nvfp4", "nvfp4_affine"), HF_PTQ_PY, "fp8",
            "default fp8: kiln always passes it (newer ModelOpt adds fp8_cast)"),
    _choice("--export_fmt", ("tensorrt_llm", "hf"), HF_PTQ_PY, "hf",
            "deprecated there ('--export_fmt forced to hf'); ModelOpt's README and TensorRT-LLM's "
            "quantization docs give --export_fmt hf"),
))
"""ModelOpt's documented HF export (``examples/llm_ptq/README.md``: ``python hf_ptq.py
--pyt_ckpt_path <model> --qformat fp8 --export_fmt hf --export_path <dir>``): the checkpoint
the PyTorch backend loads (``export_hf_checkpoint``; int8_sq and sparsity would export a
TensorRT-LLM checkpoint instead, neither allowed with backend pytorch). It lives in ModelOpt's
repository, not in the pip package or TensorRT-LLM's image: the builder finds it under
``$KILN_MODELOPT_EXAMPLES``."""
HF_EXPORT_SCRIPTS = (HF_PTQ, QUANTIZE_HF_TO_HF, QUANTIZE_WITH_MODELOPT)
"""Entry points that write the HF-format ModelOpt checkpoint, in the order the builder tries
them: ModelOpt's documented ``hf_ptq.py``, then TensorRT-LLM's own
``examples/quantization/`` scripts, which no upstream doc references (kept for images without
ModelOpt's examples)."""

TRTLLM_SERVE = _table("trtllm-serve", SERVE_PY, """
--tokenizer 1 str
--host 1 str
--port 1 int
--max_beam_width 1 int
--max_batch_size 1 int
--max_num_tokens 1 int
--max_seq_len 1 int
--tensor_parallel_size 1 int
--tp_size 1 int
--pipeline_parallel_size 1 int
--pp_size 1 int
--context_parallel_size 1 int
--cp_size 1 int
--moe_expert_parallel_size 1 int
--ep_size 1 int
--moe_cluster_parallel_size 1 int
--cluster_size 1 int
--gpus_per_node 1 int
--free_gpu_memory_fraction 1 float
--kv_cache_free_gpu_memory_fraction 1 float
--num_postprocess_workers 1 int
--trust_remote_code 0 str
--revision 1 str
--config 1 path
--extra_llm_api_options 1 path
--metadata_server_config_file 1 path
--server_role 1 str
--fail_fast_on_attention_window_too_large 0 str
--otlp_traces_endpoint 1 str
--disagg_cluster_uri 1 str
--enable_chunked_prefill 0 str
--media_io_kwargs 1 str
--chat_template 1 str
""", positionals=("MODEL",), extra=(
    _choice("--backend", ("pytorch", "tensorrt", "_autodeploy", "trt"), SERVE_PY, "pytorch",
            "ChoiceWithAlias: trt is an alias of tensorrt"),
    _choice("--log_level", LOG_LEVELS, SERVE_PY, "info"),
    Flag("--custom_tokenizer", "1", source=SERVE_PY, note="may post-date 1.2.x"),
    Flag("--custom_module_dirs", "1", "path", source=SERVE_PY,
         note="click multiple=True, path must exist"),
    Flag("--reasoning_parser", "1", source=SERVE_PY,
         note="choices ReasoningParserFactory.parsers keys (not read)"),
    Flag("--tool_parser", "1", source=SERVE_PY,
         note="choices ToolParserFactory.parsers keys (not read)"),
    Flag("--grpc", "0", source=SERVE_PY,
         note="PR #11037 (main, 2026-01-28): likely absent from release/1.2"),
))
"""``trtllm-serve`` (the ``serve`` click command); host defaults to localhost, port 8000."""

COMMANDS = (TRTLLM_BUILD, CONVERT_CHECKPOINT_LLAMA, QUANTIZE, HF_PTQ, QUANTIZE_HF_TO_HF,
            QUANTIZE_WITH_MODELOPT, TRTLLM_SERVE)
_NUMBER = re.compile(r"-[0-9]+(\.[0-9]+)?")


def _is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.fullmatch(token)


def _strip_program(argv: list[str], program: str) -> list[str]:
    """Drop a leading ``python3 .../script.py`` or the program itself."""
    rest = list(argv)
    if rest and PurePath(rest[0]).name.startswith("python") and len(rest) > 1 \
            and rest[1].endswith(".py"):
        rest = rest[1:]
    if rest and PurePath(rest[0]).name == program:
        rest = rest[1:]
    return rest


def _check_value(flag: Flag, value: str) -> None:
    if flag.choices is not None and value not in flag.choices:
        raise ValueError(f"{flag.name}: {value!r} is not one of {', '.join(flag.choices)}")
    if flag.type == "int":
        try:
            int(value)
        except ValueError:
            raise ValueError(f"{flag.name}: {value!r} is not an integer") from None
    elif flag.type == "float":
        try:
            float(value)
        except ValueError:
            raise ValueError(f"{flag.name}: {value!r} is not a number") from None
    elif flag.type == "path" and not value:
        raise ValueError(f"{flag.name}: empty path")


def check_command(argv: list[str], table: Command) -> None:
    """Raise ValueError naming the flag if ``argv`` is not accepted by ``table``'s tool.

    Checks unknown flags, arity (``--flag value`` and ``--flag=value``; ``+`` consumes values
    up to the next flag), choices and numeric values, and positionals beyond the table's.
    """
    args = _strip_program(argv, table.program)
    positionals = 0
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not _is_flag(token):
            positionals += 1
            if positionals > len(table.positionals):
                raise ValueError(f"{table.program}: unexpected positional argument {token!r}")
            continue
        name, eq, inline = token.partition("=")
        flag = table.flag(name)
        if flag is None:
            raise ValueError(f"{table.program}: unknown flag {name}")
        values: list[str] = [inline] if eq else []
        if flag.nargs == "0":
            if eq:
                raise ValueError(f"{name} takes no value (got {inline!r})")
            continue
        if not eq:
            limit = 1 if flag.nargs in ("1", "?") else len(args)
            while i < len(args) and len(values) < limit and not _is_flag(args[i]):
                values.append(args[i])
                i += 1
        if not values and flag.nargs in ("1", "+"):
            raise ValueError(f"{name} expects {'a value' if flag.nargs == '1' else 'values'}")
        for value in values:
            _check_value(flag, value)
