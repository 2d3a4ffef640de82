"""Calibration data from moto's S3 reaches quantize.py as a local directory.

The download is real (kiln-builder against moto); the GPU and TensorRT-LLM are stand-ins on
PATH: ``nvidia-smi`` reports an H100, ``trtllm-build`` exists, and ``quantize.py`` records the
command line it got (then fails, as there is nothing to quantize with).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

from builder.support import Bed, failed
from kiln.contract import exitcodes
from kiln.trtllm.flags import QUANTIZE, check_command

ROWS = [{"text": f"calibration sample {i}"} for i in range(4)]


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_calibration_from_s3_reaches_quantize_as_a_local_directory(bed: Bed, bucket: str) -> None:
    weights = bed.weights(bucket)
    body = "\n".join(json.dumps(r) for r in ROWS).encode()
    bed.s3.put_object(Bucket=bucket, Key="calib/train.jsonl", Body=body)
    bins, examples, record = bed.tmp / "bin", bed.tmp / "examples", bed.tmp / "argv.json"
    _executable(bins / "nvidia-smi", "#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0, 550.54'\n")
    _executable(bins / "trtllm-build", "#!/bin/sh\nexit 0\n")
    _executable(examples / "quantization" / "quantize.py",
                f"import json, sys\njson.dump(sys.argv, open({str(record)!r}, 'w'))\n"
                "sys.exit(3)\n")
    task = bed.task(weights, backend="tensorrt", dtype="bfloat16",
                    quantization={"algo": "fp8", "kvCache": "fp8",
                                  "calibration": {"dataset": f"s3://{bucket}/calib/",
                                                  "samples": 4}})
    run = bed.run(task, "--examples", str(examples), "--no-smoke",
                  PATH=f"{bins}{os.pathsep}{os.environ['PATH']}", KILN_TRTLLM_PYTHON=sys.executable)
    failed(run, "ToolFailed", exitcodes.TOOL_FAILED)
    work = bed.tmp / "work"
    argv = json.loads(record.read_text())
    script = examples / "quantization" / "quantize.py"
    assert shlex.join(argv) == (
        f"{script} --model_dir {work}/weights --output_dir {work}/checkpoint "
        "--dtype bfloat16 --qformat fp8 --kv_cache_dtype fp8 --tp_size 1 --pp_size 1 "
        f"--calib_dataset {work}/calibration --calib_size 4")
    check_command(["python3", *argv], QUANTIZE)
    assert (work / "calibration" / "train.jsonl").read_bytes() == body
    assert "phase=calibration" in run.log
