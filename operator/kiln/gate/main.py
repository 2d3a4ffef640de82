"""``kiln gate``: measure a canary and the key serving now with the same load.

Asks both endpoints the golden prompts greedily and compares the answers, then runs AIPerf
against the stable key and the canary in turn (same prompts, concurrency and token lengths),
and writes both keys' figures to the termination log (:mod:`kiln.contract.gate`). It judges
nothing: the operator holds the figures against ``spec.rollout.gate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.contract import gate, termination
from kiln.contract.gate import Figures, GateReport
from kiln.errors import InvalidInput, KilnError, ToolFailed, Unavailable
from kiln.gate import aiperf

READY_SECONDS = 120


def _call(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read() or b"null")


def model_of(url: str) -> str:
    """The model the endpoint serves (the first of ``/v1/models``), once it answers."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            listed = _call(f"{url}/v1/models", timeout=5)
            return str(listed["data"][0]["id"])
        except (OSError, ValueError, KeyError, IndexError) as error:
            if time.monotonic() > deadline:
                raise Unavailable(f"{url} does not answer /v1/models: {error}") from error
            time.sleep(1)


def answer(url: str, model: str, prompt: str) -> str:
    reply = _call(f"{url}/v1/completions", {"model": model, "prompt": prompt,
                                            "max_tokens": gate.GOLDEN_TOKENS,
                                            "temperature": 0, "top_p": 1, "seed": 0})
    return str(reply["choices"][0]["text"])


def golden(canary: str, stable: str) -> tuple[int, list[str]]:
    """Mismatches of the golden prompts' greedy answers, and examples of them."""
    models = model_of(canary), model_of(stable)
    examples = []
    for prompt in gate.GOLDEN_PROMPTS:
        new, old = answer(canary, models[0], prompt), answer(stable, models[1], prompt)
        if new.strip() != old.strip():
            examples.append(f"{prompt!r}: {old.strip()[:60]!r} -> {new.strip()[:60]!r}")
    return len(examples), examples


def measure(program: str, url: str, *, tokenizer: str, requests: int, concurrency: int,
            input_tokens: int, output_tokens: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="kiln-gate-") as scratch:
        artifacts = Path(scratch)
        argv = aiperf.profile_command(
            program, url=url, model=model_of(url), tokenizer=tokenizer, requests=requests,
            concurrency=concurrency, input_tokens=input_tokens, output_tokens=output_tokens,
            artifacts=artifacts)
        print("kiln gate: " + " ".join(argv), flush=True)
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)
        export = artifacts / aiperf.EXPORT_JSON
        if not export.is_file():
            raise ToolFailed(f"aiperf against {url} wrote no {aiperf.EXPORT_JSON} (exit "
                            f"{done.returncode}): {done.stdout[-800:]}")
        return aiperf.figures(export)


def run(*, canary: str, stable: str, tokenizer: str, requests: int, concurrency: int,
        input_tokens: int, output_tokens: int, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        if not canary or not stable:
            raise InvalidInput("kiln gate needs --canary and --stable URLs")
        mismatches, examples = golden(canary, stable)
        program = env.get(gate.AIPERF) or "aiperf"
        before, after = (measure(program, url, tokenizer=tokenizer, requests=requests,
                                 concurrency=concurrency, input_tokens=input_tokens,
                                 output_tokens=output_tokens) for url in (stable, canary))
    except (KilnError, OSError) as error:
        return termination.fail(error, env)
    report = GateReport(canary=after, stable=before, golden_prompts=len(gate.GOLDEN_PROMPTS),
                        golden_mismatches=mismatches, examples=examples)
    print(f"kiln gate: {report}", flush=True)
    termination.write(termination.termination_path(env), report.message())
    return 0
