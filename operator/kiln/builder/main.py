"""``kiln-builder``: the command line of the build Job.

Exit codes are in :mod:`kiln.contract.exitcodes`; the termination log gets a JSON summary or
``{reason, message, retryable, exitCode, key}`` (:mod:`kiln.contract.termination`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from kiln.builder.commands import DEFAULT_EXAMPLES
from kiln.builder.progress import say
from kiln.contract import exitcodes, termination
from kiln.contract.env import CALIB_DATASET, MIN_FREE_BYTES, TASK, TRTLLM_EXAMPLES, WORKDIR
from kiln.contract.task import BuildTask
from kiln.errors import InvalidTask

DEFAULT_WORKDIR = "/work"


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="kiln-builder",
        description="Build one TensorRT-LLM engine (or prepare a PyTorch-backend checkpoint) "
                    f"and commit it to kiln's store. The task comes from --task-file or "
                    f"${TASK}.")
    p.add_argument("--task-file", type=Path, help=f"the task as JSON (default: ${TASK})")
    p.add_argument("--workdir", type=Path, default=Path(env.get(WORKDIR) or DEFAULT_WORKDIR),
                   help=f"scratch space for weights and results (${WORKDIR}, "
                        f"default {DEFAULT_WORKDIR})")
    p.add_argument("--min-free-bytes", type=int, default=int(env.get(MIN_FREE_BYTES) or 1 << 30),
                   help="free space to keep beyond what the build is expected to write "
                        f"(${MIN_FREE_BYTES}, default 1GiB)")
    p.add_argument("--examples", type=Path,
                   default=Path(env.get(TRTLLM_EXAMPLES) or DEFAULT_EXAMPLES),
                   help=f"TensorRT-LLM's examples directory (${TRTLLM_EXAMPLES})")
    p.add_argument("--calib-dataset", default=env.get(CALIB_DATASET) or None,
                   help=f"calibration dataset for quantize.py, e.g. a local directory "
                        f"(${CALIB_DATASET}; default: quantize.py's own)")
    p.add_argument("--no-smoke", action="store_true",
                   help="skip the one-prompt generation on a GPU")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = dict(os.environ)
    key: str | None = None
    try:
        try:
            task = BuildTask.load(args.task_file)
        except (OSError, ValueError, ValidationError) as e:
            raise InvalidTask(f"cannot read the build task: {e}") from None
        key = task.key
        from kiln.builder.run import Options, build

        summary = build(task, Options(
            workdir=args.workdir, min_free_bytes=args.min_free_bytes, examples=args.examples,
            calib_dataset=args.calib_dataset, smoke=not args.no_smoke,
            progress_interval=args.progress_interval))
    except Exception as error:  # every failure leaves a reason, a message and an exit code
        code, failure = termination.failure_of(error)
        if code == exitcodes.INTERNAL:
            traceback.print_exc()
        say(failure.message, out=sys.stderr, phase="failed", reason=failure.reason, exit=code)
        return termination.fail(error, env, key)
    return termination.succeed(summary, env)


if __name__ == "__main__":
    sys.exit(main())
