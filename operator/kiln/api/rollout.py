"""``spec.rollout`` of an EngineDeployment and what it reports: a new engine key serves a
canary beside the current one first, a benchmark gate compares the two on the same GPU
product, and the key takes the rest only if it holds every threshold (the vocabulary of Argo
Rollouts and Flagger)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from kiln.api.common import Grace, KilnModel

RolloutPhase = Literal["Progressing", "Analyzing", "Promoting", "Promoted", "RolledBack",
                       "Rejected", "Aborted"]
"""``Progressing``: the canary's pods are starting; ``Analyzing``: they are Ready and the gate
runs (or the analysis time passes); ``Promoting``: the key rolls onto the rest;
``Promoted``: it serves every replica; ``RolledBack``: the canary's pods failed and were
removed; ``Rejected``: the gate (or a person) refused the key. Both of these keep the
current key serving, and kiln does not try that key again. ``Aborted``: the rollout ended
undecided (another key superseded it, its GPU product left, ``spec.rollout`` was removed); the
key may be tried again."""

PROMOTE_ANNOTATION = "kiln.dev/promote"
"""On the EngineDeployment: an engine key (or its first 12 characters) a person promotes
without the gate, a rejected one included."""
REJECT_ANNOTATION = "kiln.dev/reject"
"""On the EngineDeployment: an engine key (or its first 12 characters) a person rejects."""


class Canary(KilnModel):
    """How many pods serve a new key first, per GPU product."""

    replicas: int = Field(default=1, ge=1, le=1000)
    """Canary pods (beside ``spec.replicas`` pods of the current key)."""
    percent: int | None = Field(default=None, ge=1, le=100)
    """A share of ``spec.replicas`` instead, rounded up (at least one pod)."""


class Gate(KilnModel):
    """The benchmark both keys must run, and the thresholds the new one must hold."""

    enabled: bool = True
    """``false``: promote once the canary has been Ready for ``analysis``."""
    max_ttft_p99_ratio: float = Field(default=1.2, ge=0.01, le=100)
    """The canary's time-to-first-token p99 may be at most this times the current key's."""
    ttft_p99_floor_ms: float = Field(default=25, ge=0, le=600000)
    """A TTFT p99 increase of at most this many milliseconds is never a regression, whatever
    the ratio (one run's p99 of few requests is noisy; a few ms on a fast key are jitter)."""
    min_throughput_ratio: float = Field(default=0.9, ge=0, le=100)
    """The canary's output throughput (tokens/s) must be at least this times the current
    key's."""
    throughput_floor: float = Field(default=5, ge=0, le=1e9)
    """A throughput drop of at most this many tokens/s is never a regression, whatever the
    ratio."""
    retries: int = Field(default=2, ge=0, le=10)
    """Gate Jobs run again after one that failed for the infrastructure (evicted, its node
    lost, its image not pulled, killed, or the endpoints not answering); past these the
    rollout waits in ``Analyzing`` (``GateUnavailable``) for a person to promote or reject."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """The share of the canary's requests that may fail."""
    golden_tolerance: float = Field(default=0.0, ge=0, le=1)
    """The share of the golden prompts whose greedy answer may differ from the current
    key's."""
    requests: int = Field(default=64, ge=1, le=100000)
    """Requests AIPerf sends to each key."""
    concurrency: int = Field(default=4, ge=1, le=1024)
    """Requests in flight at once."""
    input_tokens: int = Field(default=128, ge=1, le=131072)
    """Mean prompt length of the synthetic prompts (tokens)."""
    output_tokens: int = Field(default=64, ge=1, le=131072)
    """Mean answer length asked for (tokens)."""
    tokenizer: str | None = Field(default=None, max_length=512)
    """What AIPerf counts tokens with (a Hugging Face name or a path in the gate image);
    default the served engine's tokenizer name."""
    image: str | None = Field(default=None, max_length=512)
    """The gate image (kiln with AIPerf in its own environment); default the operator's
    ``KILN_GATE_IMAGE``."""
    timeout: Grace = "15m"
    """How long the gate Job may run (its ``activeDeadlineSeconds``); past it the run counts
    as an infrastructure failure (retried up to ``retries``)."""


class Rollout(KilnModel):
    """Canary and gate for each new engine key (absent: a new key rolls onto every replica
    as soon as it is ready, as before)."""

    canary: Canary = Field(default_factory=Canary)
    """The canary's size."""
    analysis: Grace = "30s"
    """How long the canary must be Ready before the gate runs (or, with the gate off, before
    it is promoted)."""
    gate: Gate = Field(default_factory=Gate)
    """The benchmark gate."""


class GateFigures(KilnModel):
    """What AIPerf measured of one key."""

    ttft_p50_ms: float | None = None
    """Time to first token, median (ms)."""
    ttft_p99_ms: float | None = None
    """Time to first token, 99th percentile (ms)."""
    itl_ms: float | None = None
    """Inter-token latency, mean (ms)."""
    throughput: float | None = None
    """Output tokens per second."""
    error_rate: float | None = None
    """Share of requests that failed."""


class RolloutStatus(KilnModel):
    """A new key's canary on one GPU product."""

    gpu_product: str = Field(max_length=128)
    """``nvidia.com/gpu.product`` of these nodes."""
    phase: RolloutPhase
    """Where the rollout of ``canaryKey`` stands."""
    canary_key: str = Field(max_length=64)
    """The new key."""
    stable_key: str | None = Field(default=None, max_length=64)
    """The key that serves meanwhile."""
    canary_deployment: str | None = Field(default=None, max_length=253)
    """The canary's Deployment."""
    ready_since: datetime | None = None
    """When every canary pod was first seen Ready (the analysis time counts from here)."""
    gate_job: str | None = Field(default=None, max_length=63)
    """The gate's Job."""
    gate_attempts: int | None = Field(default=None, ge=0, le=100)
    """Gate Jobs that failed for the infrastructure and were run again."""
    canary: GateFigures | None = None
    """The gate's figures of the new key."""
    stable: GateFigures | None = None
    """The gate's figures of the current key."""
    golden_prompts: int | None = Field(default=None, ge=0)
    """Golden prompts asked."""
    golden_mismatches: int | None = Field(default=None, ge=0)
    """Golden prompts whose greedy answer differed from the current key's."""
    reason: str | None = Field(default=None, max_length=128)
    """Why it stands there (``GatePassed``, ``TtftRegressed``, ``CrashLoopBackOff``, ...)."""
    message: str | None = Field(default=None, max_length=2048)
    """The figures and the thresholds, in words."""


__all__ = [
    "PROMOTE_ANNOTATION",
    "REJECT_ANNOTATION",
    "Canary",
    "Gate",
    "GateFigures",
    "Rollout",
    "RolloutPhase",
    "RolloutStatus",
]
