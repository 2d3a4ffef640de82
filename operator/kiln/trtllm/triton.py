"""The Triton inflight-batcher models of TensorRT-LLM 1.2.x: parameters and tensors.

``required`` parameters are indexed directly by ``model.py`` (a missing key raises KeyError) or
mandatory in ``docs/model_config.md`` (the C++ ``tensorrt_llm`` model); optional ones use
``.get``. ``initialize_reads`` are the tensors whose config ``initialize()`` fetches with
``pb_utils.get_{input,output}_config_by_name(...)['data_type']``: a config that does not declare
them fails to load (the lookup returns None).
"""

from __future__ import annotations

from dataclasses import dataclass

_IB = "triton_backend/all_models/inflight_batcher_llm"
PRE_PY = f"{_IB}/preprocessing/1/model.py@beb339f52cd272074176448006a3184f7d18f20b"
PRE_CFG = f"{_IB}/preprocessing/config.pbtxt@808059da341493bbf8deb9380aef745e4f546909"
POST_PY = f"{_IB}/postprocessing/1/model.py@2e2327b93c0a9aa9abbf4c4672f734b03c1e441f"
POST_CFG = f"{_IB}/postprocessing/config.pbtxt@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0"
TRT_CFG = f"{_IB}/tensorrt_llm/config.pbtxt@2a9abd9536aa62ad3e4b9314be9286b1b1be523b"
ENS_CFG = f"{_IB}/ensemble/config.pbtxt@2a9abd9536aa62ad3e4b9314be9286b1b1be523b"
BLS_PY = f"{_IB}/tensorrt_llm_bls/1/model.py@f20d99bd8247d38f7ab1078ac6051395fa80ef84"
DOCS = ("triton-inference-server/tensorrtllm_backend:docs/model_config.md"
        "@8addf2fdc58ac63cc6bfceded34e0960d241791f")
"""The backend commit that pins TensorRT-LLM 1.2.1 (PR #853); the model files live in
NVIDIA/TensorRT-LLM ``triton_backend/`` (commits above, not tied to a release tag)."""


@dataclass(frozen=True)
class Param:
    name: str
    required: bool
    default: str | None = None
    source: str = ""
    note: str = ""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    optional: bool = False


@dataclass(frozen=True)
class Model:
    name: str
    backend: str
    params: tuple[Param, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    initialize_reads: tuple[str, ...]
    source: str


def _tensors(spec: str, optional: bool = False) -> tuple[Tensor, ...]:
    """``NAME:DTYPE`` words; a trailing ``?`` marks an optional tensor."""
    out = []
    for word in spec.split():
        name, dtype = word.rstrip("?").split(":")
        out.append(Tensor(name, dtype, optional or word.endswith("?")))
    return tuple(out)


PREPROCESSING = Model(
    "preprocessing", "python",
    (Param("tokenizer_dir", True, source=PRE_PY),
     Param("multimodal_model_path", True, source=PRE_PY,
           note="indexed directly; '' or the unfilled '${multimodal_model_path}' means none"),
     Param("add_special_tokens", False, "True", PRE_PY),
     Param("max_num_images", False, None, PRE_PY),
     Param("gpt_model_path", False, source=PRE_PY, note="indexed only for multimodal models")),
    _tensors("QUERY:STRING DECODER_QUERY:STRING? IMAGE_BYTES:UINT8? IMAGE_URL:STRING? "
             "IMAGE_SIZES:INT64? VIDEO_BYTES:UINT8? REQUEST_OUTPUT_LEN:INT32 "
             "BAD_WORDS_DICT:STRING? STOP_WORDS_DICT:STRING? EMBEDDING_BIAS_WORDS:STRING? "
             "EMBEDDING_BIAS_WEIGHTS:FP32? END_ID:INT32? PAD_ID:INT32? "
             "PROMPT_TABLE_EXTRA_ID:UINT64?"),
    _tensors("INPUT_ID:INT32 REQUEST_INPUT_LEN:INT32 DECODER_INPUT_ID:INT32 "
             "REQUEST_DECODER_INPUT_LEN:INT32 BAD_WORDS_IDS:INT32 STOP_WORDS_IDS:INT32 "
             "EMBEDDING_BIAS:FP32 REQUEST_OUTPUT_LEN:INT32 OUT_END_ID:INT32 OUT_PAD_ID:INT32 "
             "OUT_PROMPT_TABLE_EXTRA_IDS:UINT64 PIXEL_VALUES:FP16 ASPECT_RATIO_IDS:INT64 "
             "ASPECT_RATIO_MASK:INT64 CROSS_ATTENTION_MASK:INT64 IMAGE_SIZES:INT64 "
             "IS_VIDEO_INPUT:BOOL ATTENTION_MASK:INT64 IMAGE_GRID_THW:INT64 "
             "VISION_INPUT_ID:INT32"),
    ("EMBEDDING_BIAS_WORDS", "EMBEDDING_BIAS_WEIGHTS", "INPUT_ID", "DECODER_INPUT_ID",
     "REQUEST_INPUT_LEN", "REQUEST_DECODER_INPUT_LEN", "BAD_WORDS_IDS", "STOP_WORDS_IDS",
     "OUT_END_ID", "OUT_PAD_ID", "OUT_PROMPT_TABLE_EXTRA_IDS", "PIXEL_VALUES", "IMAGE_SIZES"),
    f"{PRE_PY}; tensors {PRE_CFG}")

POSTPROCESSING = Model(
    "postprocessing", "python",
    (Param("tokenizer_dir", True, source=POST_PY),
     Param("skip_special_tokens", False, "True", POST_PY)),
    _tensors("TOKENS_BATCH:INT32 SEQUENCE_LENGTH:INT32"),
    _tensors("OUTPUT:STRING"),
    ("OUTPUT",),
    f"{POST_PY}; tensors {POST_CFG}")

_TRT_OPTIONAL = (
    "encoder_model_path max_tokens_in_paged_kv_cache max_attention_window_size "
    "sink_token_length batch_scheduler_policy kv_cache_free_gpu_mem_fraction "
    "cross_kv_cache_fraction kv_cache_host_memory_bytes kv_cache_onboard_blocks "
    "exclude_input_in_output cancellation_check_period_ms stats_check_period_ms "
    "iter_stats_max_iterations request_stats_max_iterations enable_kv_cache_reuse "
    "normalize_log_probs enable_chunked_context gpu_device_ids participant_ids num_nodes "
    "lora_cache_optimal_adapter_size lora_cache_max_adapter_size "
    "lora_cache_gpu_memory_fraction lora_cache_host_memory_bytes lora_prefetch_dir "
    "decoding_mode executor_worker_path lookahead_window_size lookahead_ngram_size "
    "lookahead_verification_set_size medusa_choices eagle_choices gpu_weights_percent "
    "enable_context_fmha_fp32_acc multi_block_mode cuda_graph_mode cuda_graph_cache_size "
    "speculative_decoding_fast_logits tokenizer_dir guided_decoding_backend "
    "xgrammar_tokenizer_info_path")
_TRT_DEFAULTS = {
    "batch_scheduler_policy": "guaranteed_no_evict", "kv_cache_free_gpu_mem_fraction": "0.9",
    "exclude_input_in_output": "false", "cancellation_check_period_ms": "100",
    "stats_check_period_ms": "100", "normalize_log_probs": "true",
    "enable_chunked_context": "false", "multi_block_mode": "true", "cuda_graph_mode": "false",
    "gpu_weights_percent": "1.0", "num_nodes": "1", "max_beam_width": "1",
}
TENSORRT_LLM = Model(
    "tensorrt_llm", "tensorrtllm (C++); triton_backend=python uses 1/model.py",
    (Param("gpt_model_path", True, source=TRT_CFG, note="template key engine_dir"),
     Param("gpt_model_type", True, source=TRT_CFG,
           note="template key batching_strategy: inflight_fused_batching or V1"),
     Param("max_beam_width", False, "1", TRT_CFG),
     Param("FORCE_CPU_ONLY_INPUT_TENSORS", False, "no", TRT_CFG),
     *(Param(n, False, _TRT_DEFAULTS.get(n), DOCS) for n in _TRT_OPTIONAL.split())),
    _tensors("input_ids:INT32? encoder_input_features:${encoder_input_features_data_type}? "
             "encoder_output_lengths:INT32? input_lengths:INT32 request_output_len:INT32 "
             "num_return_sequences:INT32? draft_input_ids:INT32? decoder_input_ids:INT32? "
             "decoder_input_lengths:INT32? draft_logits:${logits_datatype}? "
             "draft_acceptance_threshold:FP32? end_id:INT32? pad_id:INT32? "
             "stop_words_list:INT32? bad_words_list:INT32? embedding_bias:FP32? "
             "beam_width:INT32? temperature:FP32? runtime_top_k:INT32? runtime_top_p:FP32? "
             "runtime_top_p_min:FP32? runtime_top_p_decay:FP32? runtime_top_p_reset_ids:INT32? "
             "len_penalty:FP32? early_stopping:BOOL? repetition_penalty:FP32? min_tokens:INT32? "
             "beam_search_diversity_rate:FP32? presence_penalty:FP32? frequency_penalty:FP32? "
             "seed:UINT64? return_log_probs:BOOL? return_context_logits:BOOL? "
             "return_generation_logits:BOOL? return_perf_metrics:BOOL? "
             "return_num_input_tokens:BOOL? return_num_output_tokens:BOOL? "
             "exclude_input_in_output:BOOL? stop:BOOL? streaming:BOOL? "
             "prompt_embedding_table:${prompt_embedding_table_data_type}? "
             "prompt_table_extra_ids:UINT64? prompt_vocab_size:INT32? "
             "cross_attention_mask:BOOL? mrope_rotary_cos_sin:FP32? "
             "mrope_position_deltas:INT64? lora_task_id:UINT64? lora_weights:FP16? "
             "lora_config:INT32? context_phase_params:UINT8? skip_cross_attn_blocks:BOOL? "
             "retention_token_range_starts:INT32? retention_token_range_ends:INT32? "
             "retention_token_range_priorities:INT32? "
             "retention_token_range_durations_ms:INT32? retention_decode_priority:INT32? "
             "retention_decode_duration_ms:INT32? guided_decoding_guide_type:STRING? "
             "guided_decoding_guide:STRING? lookahead_window_size:INT32? "
             "lookahead_ngram_size:INT32? lookahead_verification_set_size:INT32?"),
    _tensors("output_ids:INT32 sequence_length:INT32 cum_log_probs:FP32 output_log_probs:FP32 "
             "context_logits:${logits_datatype} generation_logits:${logits_datatype} "
             "batch_index:INT32 sequence_index:INT32 context_phase_params:UINT8 "
             "kv_cache_alloc_new_blocks:INT32 kv_cache_reused_blocks:INT32 "
             "kv_cache_alloc_total_blocks:INT32 arrival_time_ns:INT64 "
             "first_scheduled_time_ns:INT64 first_token_time_ns:INT64 last_token_time_ns:INT64 "
             "acceptance_rate:FP32 total_accepted_draft_tokens:INT32 total_draft_tokens:INT32 "
             "num_input_tokens:INT32 num_output_tokens:INT32"),
    (), f"{TRT_CFG}; parameters {DOCS} (C++ backend source not read)")

ENSEMBLE = Model(
    "ensemble", "ensemble", (),
    _tensors("text_input:STRING decoder_text_input:STRING? max_tokens:INT32 "
             "num_return_sequences:INT32? bad_words:STRING? stop_words:STRING? "
             "exclude_input_in_output:BOOL? end_id:INT32? pad_id:INT32? top_k:INT32? "
             "top_p:FP32? temperature:FP32? length_penalty:FP32? repetition_penalty:FP32? "
             "min_tokens:INT32? presence_penalty:FP32? frequency_penalty:FP32? seed:UINT64? "
             "return_log_probs:BOOL? return_context_logits:BOOL? "
             "return_generation_logits:BOOL? return_perf_metrics:BOOL? "
             "return_num_input_tokens:BOOL? return_num_output_tokens:BOOL? beam_width:INT32? "
             "stream:BOOL? prompt_embedding_table:FP16? prompt_table_extra_id:UINT64? "
             "prompt_vocab_size:INT32? embedding_bias_words:STRING? "
             "embedding_bias_weights:FP32? lora_task_id:UINT64? lora_weights:FP16? "
             "lora_config:INT32? guided_decoding_guide_type:STRING? "
             "guided_decoding_guide:STRING?"),
    _tensors("text_output:STRING cum_log_probs:FP32 output_log_probs:FP32 "
             "context_logits:${logits_datatype} generation_logits:${logits_datatype} "
             "batch_index:INT32 sequence_index:INT32"),
    (), f"{ENS_CFG} (maps tensorrt_llm.request_output_len from preprocessing's "
        "REQUEST_OUTPUT_LEN output, top_k/top_p to runtime_top_k/runtime_top_p)")

TENSORRT_LLM_BLS = Model(
    "tensorrt_llm_bls", "python",
    (Param("accumulate_tokens", False, "false", BLS_PY),
     Param("tensorrt_llm_model_name", False, "tensorrt_llm", BLS_PY),
     Param("tensorrt_llm_draft_model_name", False, None, BLS_PY),
     Param("multimodal_encoders_name", False, None, BLS_PY)),
    (), (), (), f"{BLS_PY} (its config.pbtxt was not read: tensors not recorded)")

MODELS = (PREPROCESSING, POSTPROCESSING, TENSORRT_LLM, ENSEMBLE, TENSORRT_LLM_BLS)


# -- the LLM-API model: Triton for the PyTorch backend ------------------------------------------
_LLMAPI = "triton_backend/all_models/llmapi/tensorrt_llm"
LLMAPI_PY = f"{_LLMAPI}/1/model.py@b35ac1b64368513d215c57d2ed01d62d910df8da"
LLMAPI_YAML = f"{_LLMAPI}/1/model.yaml@0ebb1536ac12bbe27201185de960df3ab00bcecc"
LLMAPI_CFG = f"{_LLMAPI}/config.pbtxt@0a71057313ec0626527e164a8fc0205c5822e2f5"
LLMAPI_DOCS = "triton-inference-server/tensorrtllm_backend:docs/llmapi.md"
LLMAPI_LAUNCH = ("triton_backend/scripts/launch_triton_server.py"
                 "@0a2e2c1f1268b34586393794045691b666ba28be")
"""Where the facts below were read. After 1.2.x this is the only Triton model left: the C++
inflight batcher and its model templates were removed (PR #15907; ``all_models/llmapi``
stays)."""
LLMAPI_MODEL = "tensorrt_llm"
"""The model's name (``name: "tensorrt_llm"`` in its config.pbtxt; requests go to
``/v2/models/tensorrt_llm/generate``, llmapi.md)."""
LLMAPI_CONFIG_ENV = "LLM_CONFIG_PATH"
"""Where model.py reads the LLM arguments: ``os.path.join(pb_utils.get_model_dir(),
os.environ.get('LLM_CONFIG_PATH', 'model.yaml'))`` (an absolute path is taken as it is).
Every key but ``triton_config`` goes through ``update_llm_args_with_extra_dict`` into
``LLM(**args)``; upstream's model.yaml sets ``model``, ``backend: "pytorch"``,
``tensor_parallel_size`` and ``pipeline_parallel_size``. kiln copies the image's whole model
directory (config.pbtxt, model.py and what it imports, whatever the image's version has) and
points this variable at a file of its own."""
LLMAPI_WORLD_SIZE = 1
"""One tritonserver for any parallelism: "The LLM API launches its own worker processes, so no
extra --world_size argument is needed" (triton-inference-server/server
docs/getting_started/llm.md, Multi-GPU models); llmapi.md launches with the default world
size and sets the parallelism in model.yaml."""
LLMAPI_DECOUPLED_DEFAULT = False
"""model.yaml's ``triton_config.decoupled``; a decoupled model cannot serve the plain HTTP
``generate`` endpoint (llm.md), and 1.2.x's model.py answers a streaming request with one
response anyway."""
LLMAPI_TRITON_KEYS = ("max_batch_size", "decoupled")
"""``triton_config`` keys model.py indexes directly (``auto_complete_config``;
``initialize`` reads ``decoupled``): a model.yaml without them fails to load."""
LLMAPI_MAX_BATCH_SIZE = 0
"""model.yaml: "The current implementation does not support batching" (Triton's batching;
the LLM batches in flight)."""
LLMAPI_TRANSACTION_POLICY_IN_YAML = True
"""config.pbtxt leaves ``max_batch_size`` and ``model_transaction_policy`` to model.yaml, set
by ``auto_complete_config``; ``launch_triton_server.py`` passes
``--disable-auto-complete-config``, under which kiln writes the transaction policy into the
config itself, with the same value as ``triton_config.decoupled``."""
