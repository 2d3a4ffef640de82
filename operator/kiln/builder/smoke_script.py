"""A one-prompt generation with TensorRT-LLM, run by the toolchain's Python on a GPU.

Standalone on purpose (only the standard library and tensorrt_llm): kiln itself may live in
another Python environment. Usage: ``smoke_script.py BACKEND MODEL_DIR TP PP``.
"""

from __future__ import annotations

import importlib
import os
import sys


def main() -> int:
    backend, model, tp, pp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    trtllm = importlib.import_module("tensorrt_llm")
    if backend == "tensorrt":
        engine_llm = importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
        tokenizer = os.path.join(model, "tokenizer")  # kiln.contract.manifest.TOKENIZER_SUBDIR
        llm = engine_llm(model=model, tokenizer=tokenizer if os.path.isdir(tokenizer) else model)
    else:
        llm = trtllm.LLM(model=model, tensor_parallel_size=tp, pipeline_parallel_size=pp)
    outputs = llm.generate(["Hello"], trtllm.SamplingParams(max_tokens=4))
    tokens = list(outputs[0].outputs[0].token_ids)
    print(f"kiln-builder: phase=smoke generated={len(tokens)} tokens={tokens}", flush=True)
    return 0 if tokens else 1


if __name__ == "__main__":
    sys.exit(main())
