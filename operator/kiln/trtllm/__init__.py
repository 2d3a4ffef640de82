"""What TensorRT-LLM 1.2.x accepts, recorded as data with the upstream path beside each fact.

Pure data (no kiln or third-party imports): the flags of ``trtllm-build``,
``convert_checkpoint.py`` (llama), ``quantize.py``, the HF-export ModelOpt scripts
(``quantize_hf_to_hf.py``, ``quantize_with_modelopt.py``), how ``--calib_dataset`` is read,
and ``trtllm-serve`` (:mod:`.flags`), the LLM
API options a ``--extra_llm_api_options`` YAML may set (:mod:`.llm_api`), the Triton
inflight-batcher models' parameters and tensors (:mod:`.triton`) and what ``trtllm-build``
refuses or silently changes per compute capability (:mod:`.refusals`).

Read from the stored index of ``NVIDIA/TensorRT-LLM`` and the
``triton-inference-server/tensorrtllm_backend`` git history. No ``v1.2.x`` tag of TensorRT-LLM
could be read: each table names the commit (or index file id) it was read at, from the 1.2
development window (after the auto-parallel removal, PR #8329, 2025-10) where that could be
told; ``Flag.note`` marks facts that may post-date 1.2.x.
"""

TRTLLM_VERSION = "1.2.x"
"""The release line these tables describe (1.2.1 is the backend's pinned wheel, PR #853)."""
