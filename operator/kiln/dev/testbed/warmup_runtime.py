"""The test bed's warm-up runtime: the stand-in server (kiln.dev.testbed.standin) with a cache.

It does what a real runtime does at start, at a small scale: with an empty cache directory it
"tunes" (sleeps ``TUNE_SECONDS``) and writes what it found; with a cache made for the same
model and options it loads it and starts at once. So the build Job's capture, the serving
pods' placement and the checks of both run for real in the test bed, on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from kiln.contract.warmup import CachePath, WarmupRuntime
from kiln.dev.testbed import standin

CACHE_ENV = "KILN_STANDIN_CACHE_DIR"
TUNE_SECONDS = 1.5
TUNED = "tuned.json"


def runtime(python: str = sys.executable) -> WarmupRuntime:
    """The operator's ``KILN_WARMUP_RUNTIME`` in the test bed."""
    return WarmupRuntime(
        runtime="kiln-standin",
        command=[python, "-m", "kiln.dev.testbed.warmup_runtime", "--engine", "{model}",
                 "--port", "{port}", "--options", "{options}"],
        cache=[CachePath(name=CACHE_ENV, path="standin")], versioned={"kiln": ["kiln"]},
        start_timeout_seconds=60)


def _fingerprint(engine: Path, options: Path | None) -> str:
    digest = hashlib.sha256()
    for path in (engine / "config.json", options):
        if path is not None and path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def tune(engine: Path, options: Path | None, cache: Path | None) -> str:
    """Load the cache when it was made for this engine and these options, else tune and
    write it; says which."""
    fingerprint = _fingerprint(engine, options)
    tuned = cache / TUNED if cache else None
    if tuned is not None and tuned.is_file():
        try:
            if json.loads(tuned.read_text()).get("fingerprint") == fingerprint:
                return "loaded tuned kernels"
        except ValueError:
            pass
    time.sleep(TUNE_SECONDS)
    if tuned is not None:
        tuned.parent.mkdir(parents=True, exist_ok=True)
        tuned.write_text(json.dumps({"fingerprint": fingerprint, "tactics": [1, 2, 3]}))
    return "tuned kernels"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kiln-standin-runtime", description=__doc__.split("\n")[0])
    p.add_argument("--engine", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--options", type=Path, default=None)
    args = p.parse_args(argv)
    cache = os.environ.get(CACHE_ENV)
    print(f"stand-in runtime: {tune(args.engine, args.options, Path(cache) if cache else None)}",
          flush=True)
    # the stand-in's default behaviour: a standin.json asking a serving pod to crash or be
    # slow is for the serving tests, not for this warm-up
    print(f"stand-in runtime: serving on 127.0.0.1:{args.port}", flush=True)
    asyncio.run(standin.serve(standin.Behaviour(), "127.0.0.1", args.port, "engine"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
