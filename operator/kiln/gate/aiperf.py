"""How ``kiln gate`` runs AIPerf and reads its export: facts of AIPerf 0.13.0 (PyPI
``aiperf``), each with the source it was read from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.contract.gate import Figures

VERSION = "0.13.0"
"""The AIPerf release these facts were read from (and the test bed's venv installs)."""
EXPORT_JSON = "profile_export_aiperf.json"
"""aiperf/config/artifacts.py: ``PROFILE_EXPORT_AIPERF_JSON_FILE``, in ``--artifact-dir``."""


def profile_command(aiperf: str, *, url: str, model: str, tokenizer: str, requests: int,
                    concurrency: int, input_tokens: int, output_tokens: int,
                    artifacts: Path) -> list[str]:
    """``aiperf profile`` of one endpoint, streamed completions; every flag as
    aiperf/config/flags/cli_config.py spells it (``--url``, ``--model``, ``--endpoint-type``,
    ``--streaming``, ``--request-count``, ``--concurrency``, ``--synthetic-input-tokens-mean``,
    ``--output-tokens-mean``, ``--tokenizer``, ``--artifact-dir``, ``--ui-type``,
    ``--no-gpu-telemetry``, ``--no-server-metrics``, ``--random-seed``,
    ``--warmup-request-count``)."""
    return [aiperf, "profile", "--model", model, "--url", url,
            "--endpoint-type", "completions", "--streaming",
            "--request-count", str(requests), "--warmup-request-count", "1",
            "--concurrency", str(concurrency),
            "--synthetic-input-tokens-mean", str(input_tokens),
            "--output-tokens-mean", str(output_tokens),
            "--tokenizer", tokenizer, "--random-seed", "0",
            "--no-gpu-telemetry", "--no-server-metrics",
            "--artifact-dir", str(artifacts), "--ui-type", "none"]


def _stat(data: dict[str, Any], metric: str, stat: str) -> float | None:
    value = (data.get(metric) or {}).get(stat)
    return float(value) if isinstance(value, int | float) else None


def figures(export: Path) -> Figures:
    """The figures of AIPerf's JSON export: each metric an object with ``unit``, ``avg``,
    ``p50``, ``p99``... (``time_to_first_token``, ``inter_token_latency``,
    ``output_token_throughput``, ``request_count``, ``error_request_count``, as the export of
    0.13.0 names them)."""
    data = json.loads(export.read_text())
    good = _stat(data, "request_count", "avg") or 0.0
    bad = _stat(data, "error_request_count", "avg") or 0.0
    return Figures(ttft_p50_ms=_stat(data, "time_to_first_token", "p50"),
                   ttft_p99_ms=_stat(data, "time_to_first_token", "p99"),
                   itl_ms=_stat(data, "inter_token_latency", "avg"),
                   throughput=_stat(data, "output_token_throughput", "avg"),
                   error_rate=bad / (good + bad) if good + bad else None,
                   requests=int(good + bad))
