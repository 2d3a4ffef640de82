"""What the handlers share: the operator config, the API client, the reconcilers."""

from __future__ import annotations

import functools
from typing import Any, cast

import kopf

from kiln.build.plan import Event
from kiln.build.reconciler import EngineBuildReconciler
from kiln.config import OperatorConfig
from kiln.kube import Kube, load_config


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def kube() -> Kube:
    return Kube(load_config())


def emit(body: dict[str, Any], event: Event) -> None:
    """Post a Kubernetes Event about ``body`` (Kopf sends it from its event loop)."""
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason,
               message=event.message)


@functools.cache
def engine_builds() -> EngineBuildReconciler:
    return EngineBuildReconciler(kube(), config(), emit)
