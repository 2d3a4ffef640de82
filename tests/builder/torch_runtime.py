"""A runtime that runs here and on a real GPU: a small Llama under torch.compile, served over
the OpenAI-compatible routes kiln's warm-up contract uses (kiln.contract.warmup).

At start it builds the model from the engine's ``config.json`` (weights from a fixed seed: no
download), compiles its forward pass with Inductor (``max-autotune-no-cudagraphs``, so GEMM
tuning and Triton kernel compilation both happen), runs it once, and then answers
``/health`` and ``/v1/completions`` (greedy, one forward pass per token). Inductor and Triton
keep what they made under ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``: what the
build Job's capture keeps and a serving pod's placement restores. Test use only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SEQ = 64
"""Prompts are padded or cut to this length: one compiled shape."""


def load(engine: Path) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**json.loads((engine / "config.json").read_text()))
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    forward = torch.compile(lambda ids: model(input_ids=ids, use_cache=False).logits,
                            mode="max-autotune-no-cudagraphs", dynamic=False)

    def next_token(ids: list[int]) -> int:
        padded = ([0] * SEQ + ids)[-SEQ:]
        with torch.inference_mode():
            logits = forward(torch.tensor([padded], device="cuda"))
        return int(logits[0, -1].argmax())

    next_token([1, 2, 3])  # compile (or load from the caches) before saying healthy
    torch.cuda.synchronize()
    return next_token


def serve(next_token: Any, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ids = [ord(c) % 1000 for c in str(body.get("prompt", ""))] or [1]
            out = []
            for _ in range(int(body.get("max_tokens", 1))):
                out.append(next_token(ids + out))
            self._send(200, {"choices": [{"text": " ".join(map(str, out)), "index": 0}]})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    started = time.monotonic()
    next_token = load(args.engine)
    print(f"torch runtime: ready after {time.monotonic() - started:.1f}s", flush=True)
    serve(next_token, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
