"""The warm-up: run the server with empty caches, keep what it wrote (kiln.contract.warmup).

Both runs are timed from the server's start to the first token of a one-token request; the
second starts from a copy of the kept set, placed where a serving pod places it, so its time
is what a replica will see.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml

from kiln.builder.progress import say
from kiln.contract import env as names
from kiln.contract import version_guard
from kiln.contract.warmup import CACHE_DIR, REPORT, ArtifactReport, Warmup
from kiln.errors import ToolFailed

_POLL = 0.2
_REQUEST_TIMEOUT = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, object], timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, then SIGKILL to what is left of it (its
    ranks and compile workers hold GPU memory the next start needs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_to_first_token(warmup: Warmup, model: Path, root: Path, workdir: Path,
                         env: Mapping[str, str], *, shapes: bool = True) -> float:
    """Start the server with its caches under ``root``; seconds to the first token; then the
    warm-up shapes (when ``shapes``); then stop it. ToolFailed when it does not serve."""
    port = _free_port()
    options = workdir / "warmup-options.yaml"
    options.write_text(yaml.safe_dump(warmup.options, sort_keys=True))
    argv = [a.format(model=model, port=port, options=options) for a in warmup.command]
    base = f"http://127.0.0.1:{port}"
    log = workdir / "warmup-server.log"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env={**env, **warmup.environment(str(root))},
                                   stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True)
    try:
        deadline = started + warmup.start_timeout_seconds
        while not _healthy(base + warmup.health_path):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                why = (f"exited with {process.returncode}" if process.returncode is not None
                       else f"not healthy after {warmup.start_timeout_seconds}s")
                raise ToolFailed(f"the warm-up server ({warmup.runtime}) {why}: it would not "
                                  f"serve this engine with the serving options either. Its "
                                  f"last output: {tail}")
            time.sleep(_POLL)
        url = base + warmup.completions_path
        try:
            _post(url, {"model": str(model), "prompt": "warm", "max_tokens": 1,
                        "temperature": 0}, _REQUEST_TIMEOUT)
        except (urllib.error.URLError, OSError) as error:
            raise ToolFailed(f"the warm-up server ({warmup.runtime}) failed its first "
                             f"request: {error}") from None
        first = time.monotonic() - started
        for shape in warmup.shapes if shapes else []:
            body = {"model": str(model), "prompt": " ".join(["warm"] * shape.prompt_tokens),
                    "max_tokens": shape.output_tokens, "temperature": 0}
            errors: list[BaseException] = []

            def one(body: dict[str, object] = body, errors: list[BaseException] = errors) -> None:
                try:
                    _post(url, body, _REQUEST_TIMEOUT)
                except (urllib.error.URLError, OSError) as error:
                    errors.append(error)

            threads = [threading.Thread(target=one) for _ in range(shape.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise ToolFailed(f"the warm-up server ({warmup.runtime}) failed a request of "
                                  f"{shape.prompt_tokens} prompt tokens x{shape.concurrency}: "
                                  f"{errors[0]}")
        return first
    finally:
        _stop(process)


def _copy_files(source: Path, dest: Path) -> tuple[int, int]:
    """Regular files only (no links), as a serving pod's placement copies them."""
    count = size = 0
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        count += 1
        size += path.stat().st_size
    return count, size


def runtime_versions(warmup: Warmup, env: Mapping[str, str]) -> dict[str, str]:
    """The versions the runtime runs with, read by the runtime's own Python (the builder's
    differs in the builder image), as the serving pods' check reads them."""
    python = env.get(names.TRTLLM_PYTHON) or "python3"
    try:
        out = subprocess.run([python, version_guard.__file__, "--print-artifact-versions",
                              json.dumps(warmup.versioned)], capture_output=True, text=True,
                             timeout=120, check=True, env=dict(env))
        found = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise ToolFailed(f"cannot read the runtime's versions with {python}: {error}") from None
    return {str(k): str(v) for k, v in found.items()}


def capture(warmup: Warmup, model: Path, engine: Path, workdir: Path,
            env: Mapping[str, str]) -> ArtifactReport:
    """Warm the runtime up on ``model``; the set goes to ``engine/artifacts``."""
    cold_root, warm_root = workdir / "aot-cold", workdir / "aot-warm"
    for d in (cold_root, warm_root, engine / CACHE_DIR):
        shutil.rmtree(d, ignore_errors=True)
    cold_root.mkdir(parents=True)
    say(f"starting {warmup.runtime} with empty caches", phase="warmup")
    cold = start_to_first_token(warmup, model, cold_root, workdir, env)
    files, size = _copy_files(cold_root, engine / CACHE_DIR)
    _copy_files(engine / CACHE_DIR, warm_root)
    say(f"first token after {cold:.1f}s cold; {files} artifact file(s), {size} bytes; "
        "starting again on them", phase="warmup")
    warm = start_to_first_token(warmup, model, warm_root, workdir, env, shapes=False)
    for d in (cold_root, warm_root):
        shutil.rmtree(d, ignore_errors=True)
    gpu = version_guard.gpu_facts(env.get(names.NVIDIA_SMI)) or {}
    report = ArtifactReport(
        runtime=warmup.runtime, cache=warmup.cache, cache_root_env=warmup.cache_root_env,
        versioned=warmup.versioned, versions=runtime_versions(warmup, env),
        gpu_name=gpu.get("gpu_name"), compute_capability=gpu.get("compute_capability"),
        driver_version=gpu.get("driver_version"), cold_seconds=round(cold, 3),
        warm_seconds=round(warm, 3), files=files, bytes=size)
    (engine / REPORT).parent.mkdir(parents=True, exist_ok=True)
    (engine / REPORT).write_text(report.model_dump_json(by_alias=True, indent=2))
    say(f"first token after {warm:.1f}s warm ({cold / max(warm, 1e-3):.1f}x sooner)",
        phase="warmup")
    return report
