"""``kiln-builder``: the command line of the build Job.

Exit codes are in :mod:`kiln.builder.exitcodes`; the termination log gets a JSON summary or
``{reason, message, retryable, exitCode}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from kiln.builder import exitcodes, report
from kiln.builder.commands import DEFAULT_EXAMPLES
from kiln.builder.failures import InvalidTask
from kiln.builder.progress import say
from kiln.builder.toolchain import EXAMPLES_ENV
from kiln.errors import KilnError
from kiln.task import TASK_ENV, BuildTask

WORKDIR_ENV = "KILN_WORKDIR"
MIN_FREE_ENV = "KILN_MIN_FREE_BYTES"
CALIB_ENV = "KILN_CALIB_DATASET"
DEFAULT_WORKDIR = "/work"


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="kiln-builder",
        description="Build one TensorRT-LLM engine (or prepare a PyTorch-backend checkpoint) "
                    f"and commit it to kiln's store. The task comes from --task-file or "
                    f"${TASK_ENV}.")
    p.add_argument("--task-file", type=Path, help=f"the task as JSON (default: ${TASK_ENV})")
    p.add_argument("--workdir", type=Path, default=Path(env.get(WORKDIR_ENV) or DEFAULT_WORKDIR),
                   help=f"scratch space for weights and results (${WORKDIR_ENV}, "
                        f"default {DEFAULT_WORKDIR})")
    p.add_argument("--min-free-bytes", type=int, default=int(env.get(MIN_FREE_ENV) or 1 << 30),
                   help="free space to keep beyond what the build is expected to write "
                        f"(${MIN_FREE_ENV}, default 1GiB)")
    p.add_argument("--examples", type=Path,
                   default=Path(env.get(EXAMPLES_ENV) or DEFAULT_EXAMPLES),
                   help=f"TensorRT-LLM's examples directory (${EXAMPLES_ENV})")
    p.add_argument("--calib-dataset", default=env.get(CALIB_ENV) or None,
                   help=f"calibration dataset for quantize.py, e.g. a local directory "
                        f"(${CALIB_ENV}; default: quantize.py's own)")
    p.add_argument("--no-smoke", action="store_true",
                   help="skip the one-prompt generation on a GPU")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    termination = report.termination_path()
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
        code = exitcodes.exit_code(error)
        known = exitcodes.BY_CODE[code]
        retryable = known.action != "FailJob"  # whether running this task again can help
        if isinstance(error, KilnError):
            reason, message = error.reason, error.message
        else:
            reason, message = known.reason, f"{type(error).__name__}: {error}"
            if code == exitcodes.INTERNAL:
                traceback.print_exc()
        say(message, out=sys.stderr, phase="failed", reason=reason, exit=code)
        report.write(termination, report.error_message(reason, message, retryable, code, key))
        return code
    report.write(termination, report.summary_message(summary))
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
