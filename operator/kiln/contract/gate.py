"""What the gate Job (``kiln gate``) and the operator agree on: the program's flags and
environment, the golden prompts, and its report in the termination message (what AIPerf
measured of each key and how the golden answers compared). The program measures; the operator
judges against ``spec.rollout.gate``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

AIPERF = "KILN_AIPERF"
"""The ``aiperf`` executable the gate runs (its own environment: its pins conflict with
kiln's); default ``aiperf`` on ``PATH``."""

GOLDEN_PROMPTS = (
    "The capital of France is",
    "Translate to German: good morning",
    "2 + 2 =",
    "Write one word that rhymes with cat:",
    "hello world",
)
"""Asked of both keys greedily (temperature 0); an answer that differs counts as a
mismatch."""
GOLDEN_TOKENS = 16


@dataclass(frozen=True)
class Figures:
    """What AIPerf measured of one key."""

    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    itl_ms: float | None = None
    throughput: float | None = None
    """Output tokens per second."""
    error_rate: float | None = None
    requests: int = 0


@dataclass(frozen=True)
class GateReport:
    """The gate's summary, ``{"gate": {...}}`` in the termination message."""

    canary: Figures
    stable: Figures
    golden_prompts: int = 0
    golden_mismatches: int = 0
    examples: list[str] = field(default_factory=list)
    """A few mismatches, ``prompt: stable → canary``."""

    def message(self) -> bytes:
        body = {"gate": {**asdict(self), "examples": [e[:200] for e in self.examples[:3]]}}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()[:4096]


def _figures(raw: Any) -> Figures:
    raw = raw if isinstance(raw, dict) else {}

    def num(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if isinstance(value, int | float) else None

    return Figures(ttft_p50_ms=num("ttft_p50_ms"), ttft_p99_ms=num("ttft_p99_ms"),
                   itl_ms=num("itl_ms"), throughput=num("throughput"),
                   error_rate=num("error_rate"), requests=int(raw.get("requests") or 0))


def parse_report(text: str) -> GateReport | None:
    """The report in a gate pod's termination message, or None (not a gate report)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    gate = data.get("gate") if isinstance(data, dict) else None
    if not isinstance(gate, dict):
        return None
    return GateReport(canary=_figures(gate.get("canary")), stable=_figures(gate.get("stable")),
                      golden_prompts=int(gate.get("golden_prompts") or 0),
                      golden_mismatches=int(gate.get("golden_mismatches") or 0),
                      examples=[str(e) for e in gate.get("examples") or []])
