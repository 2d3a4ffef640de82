"""The test bed's stand-in server speaks the OpenAI-compatible API (plain and streamed) with
the speed and answers its ``standin.json`` sets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from kiln.dev.testbed.standin import Behaviour, StandIn, main


async def _request(port: int, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = json.dumps(body).encode() if body is not None else b""
    method = "POST" if body is not None else "GET"
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


def _run(behaviour: Behaviour, calls: list[tuple[str, dict[str, Any] | None]]
         ) -> list[tuple[int, bytes, float]]:
    async def go() -> list[tuple[int, bytes, float]]:
        server = await asyncio.start_server(StandIn(behaviour, "m").handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        out = []
        async with server:
            for path, body in calls:
                start = time.monotonic()
                code, data = await _request(port, path, body)
                out.append((code, data, time.monotonic() - start))
        return out
    return asyncio.run(go())


def _events(chunked: bytes) -> list[str]:
    """The ``data:`` lines of a chunked SSE body."""
    text = chunked.decode()
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_it_answers_plain_and_streamed_completions_and_chat() -> None:
    behaviour = Behaviour(ttft=0.0, itl=0.0, answers={"hi": "kiln gpu"})
    (health, _, _), (models, listed, _), (plain, body, _), (streamed, sse, _) = _run(
        behaviour, [("/health", None), ("/v1/models", None),
                    ("/v1/completions", {"prompt": "hi", "max_tokens": 3}),
                    ("/v1/chat/completions", {
                        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                        "stream": True, "stream_options": {"include_usage": True}})])
    assert (health, models, plain, streamed) == (200, 200, 200, 200)
    assert json.loads(listed)["data"][0]["id"] == "m"
    reply = json.loads(body)
    assert reply["choices"][0]["text"] == "kiln gpu kiln"
    assert reply["usage"]["completion_tokens"] == 3
    events = _events(sse)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]) == \
        "kiln gpu"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_its_speed_and_errors_follow_the_file(tmp_path: Path) -> None:
    (tmp_path / "standin.json").write_text(json.dumps({"ttftMs": 200, "itlMs": 0,
                                                       "errorRate": 0.5}))
    behaviour = Behaviour.read(tmp_path / "standin.json")
    call = ("/v1/completions", {"prompt": "x", "max_tokens": 1})
    results = _run(behaviour, [call, call, call, call])
    assert [code for code, _, _ in results] == [200, 500, 200, 500]
    assert min(seconds for code, _, seconds in results if code == 200) >= 0.2


def test_a_crashing_engine_exits_at_start(tmp_path: Path) -> None:
    (tmp_path / "standin.json").write_text(json.dumps({"crash": True}))
    assert main(["--engine", str(tmp_path)]) == 1
