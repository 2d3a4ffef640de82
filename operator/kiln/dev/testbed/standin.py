"""A stand-in for trtllm-serve in the test bed: a small OpenAI-compatible server.

The local-process runner starts it for a serving pod whose engine directory holds
``standin.json`` (the test puts that file in the checkpoint; the pytorch backend copies it into
the engine). The file sets how the "engine" behaves, so a test can make one slower, faster,
wrong or crashing::

    {"ttftMs": 20, "itlMs": 2, "answer": "hello world", "answers": {"prompt": "text"},
     "errorRate": 0.0, "crash": false}

``ttftMs``: delay before the first token; ``itlMs``: delay between tokens; ``answer``: the
words every prompt is answered with (cycled up to ``max_tokens``), unless ``answers`` names
the prompt (the last user message, for chat); ``errorRate``: the share of requests answered
500 (every n-th, deterministic); ``crash``: exit 1 at start, as a server that crash-loops.

Serves ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and ``POST
/v1/chat/completions``, plain or streamed (server-sent events, ``stream: true``). Standard
library only; asyncio, HTTP/1.1 with keep-alive. Development and test use only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE = "standin.json"
"""The file in an engine directory that asks for the stand-in and sets its behaviour."""
DEFAULT_ANSWER = "hello world"
DEFAULT_TOKENS = 16


@dataclass
class Behaviour:
    """How the stand-in answers."""

    ttft: float = 0.02
    itl: float = 0.002
    answer: str = DEFAULT_ANSWER
    answers: dict[str, str] = field(default_factory=dict)
    error_rate: float = 0.0
    crash: bool = False

    @classmethod
    def read(cls, path: Path) -> Behaviour:
        raw = json.loads(path.read_text()) if path.is_file() else {}
        return cls(ttft=float(raw.get("ttftMs", 20)) / 1000,
                   itl=float(raw.get("itlMs", 2)) / 1000,
                   answer=str(raw.get("answer") or DEFAULT_ANSWER),
                   answers={str(k): str(v) for k, v in (raw.get("answers") or {}).items()},
                   error_rate=float(raw.get("errorRate", 0.0)), crash=bool(raw.get("crash")))

    def tokens(self, prompt: str, limit: int) -> list[str]:
        """The answer's words for ``prompt``, cycled or cut to ``limit``."""
        words = (self.answers.get(prompt) or self.answer).split() or ["."]
        return [words[i % len(words)] for i in range(max(1, limit))]


def _prompt(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt", "")
        return str(prompt[0] if isinstance(prompt, list) and prompt else prompt)
    messages = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = messages[-1].get("content", "") if messages else ""
    if isinstance(content, list):  # parts: the text ones
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class StandIn:
    """The server; ``served`` counts the completions answered."""

    def __init__(self, behaviour: Behaviour, model: str) -> None:
        self.behaviour = behaviour
        self.model = model
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length") or 0)
        raw = await reader.readexactly(length) if length else b""
        path = path.split("?", 1)[0]
        if method == "GET" and path in ("/health", "/v1/health"):
            await _send(writer, 200, b"")
        elif method == "GET" and path == "/v1/models":
            await _send_json(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "kiln-testbed"}]})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                await _send_json(writer, 400, {"error": {"message": "invalid JSON"}})
                return True
            await self._complete(writer, body, chat=path.endswith("chat/completions"))
        else:
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        return headers.get("connection", "").lower() != "close"

    def _failing(self) -> bool:
        rate = self.behaviour.error_rate
        return rate > 0 and int(self.served * rate) != int((self.served - 1) * rate)

    async def _complete(self, writer: asyncio.StreamWriter, body: dict[str, Any],
                        chat: bool) -> None:
        self.served += 1
        if self._failing():
            await _send_json(writer, 500, {"error": {"message": "stand-in: injected error"}})
            return
        limit = int(body.get("max_completion_tokens") or body.get("max_tokens")
                    or DEFAULT_TOKENS)
        prompt = _prompt(body, chat)
        tokens = self.behaviour.tokens(prompt, limit)
        ident, created = f"cmpl-{self.served}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens),
                 "total_tokens": len(prompt.split()) + len(tokens)}
        if not body.get("stream"):
            await asyncio.sleep(self.behaviour.ttft + self.behaviour.itl * (len(tokens) - 1))
            text = " ".join(tokens)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "length"} if chat else
                {"index": 0, "text": text, "finish_reason": "length"})
            await _send_json(writer, 200, {"id": ident, "object": kind, "created": created,
                                           "model": self.model, "choices": [choice],
                                           "usage": usage})
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, token in enumerate(tokens):
            await asyncio.sleep(self.behaviour.ttft if i == 0 else self.behaviour.itl)
            text = token if i == 0 else " " + token
            last = i == len(tokens) - 1
            delta: dict[str, Any] = (
                {"index": 0, "delta": {"content": text, **({"role": "assistant"} if i == 0
                                                           else {})},
                 "finish_reason": "length" if last else None} if chat else
                {"index": 0, "text": text, "finish_reason": "length" if last else None})
            await _chunk(writer, {"id": ident, "object": chunk_kind, "created": created,
                                  "model": self.model, "choices": [delta]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await _chunk(writer, {"id": ident, "object": chunk_kind, "created": created,
                                  "model": self.model, "choices": [], "usage": usage})
        writer.write(_framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()


def _framed(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _chunk(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    writer.write(_framed(b"data: " + json.dumps(event).encode() + b"\n\n"))
    await writer.drain()


async def _send(writer: asyncio.StreamWriter, code: int, body: bytes,
                kind: str = "text/plain") -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
              500: "Internal Server Error"}.get(code, "")
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, code: int, obj: Any) -> None:
    await _send(writer, code, json.dumps(obj).encode(), "application/json")


async def serve(behaviour: Behaviour, host: str, port: int, model: str,
                ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled."""
    server = await asyncio.start_server(StandIn(behaviour, model).handle, host, port)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-standin", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", type=Path, required=True,
                        help=f"the engine directory ({FILE} in it sets the behaviour)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="engine")
    args = parser.parse_args(argv)
    behaviour = Behaviour.read(args.engine / FILE)
    if behaviour.crash:
        print("stand-in: crash asked for by standin.json", file=sys.stderr)
        return 1
    print(f"stand-in: serving on {args.host}:{args.port}", flush=True)
    asyncio.run(serve(behaviour, args.host, args.port, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
