"""Serving pods' ``kiln fetch-engine`` run as a kubelet would start it: the init container of
the Deployment kiln rendered, with its environment resolved from the cluster (the trust
ConfigMap, Secrets), as a local process against the store."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from kiln.dev.testbed.cluster import Cluster
from kiln.domain.labels import ED_LABEL
from kiln.engine_deployment.render import ENGINE_DIR


@dataclass(frozen=True)
class Fetched:
    code: int
    reason: str
    message: str
    log: str


def serving_deployment(kube: Cluster, namespace: str, owner: str) -> Any | None:
    """The one Deployment of ``owner`` that serves an engine, if there is one."""
    items = client.AppsV1Api(kube.api_client).list_namespaced_deployment(
        namespace, label_selector=f"{ED_LABEL}={owner}").items
    return items[0] if len(items) == 1 else None


def _value(kube: Cluster, namespace: str, var: Any) -> str | None:
    if var.value is not None:
        return str(var.value)
    source = var.value_from
    core = client.CoreV1Api(kube.api_client)
    try:
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            found = (core.read_namespaced_config_map(ref.name, namespace).data or {}).get(ref.key)
            return None if found is None else str(found)
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            raw = (core.read_namespaced_secret(ref.name, namespace).data or {}).get(ref.key)
            return None if raw is None else base64.b64decode(raw).decode()
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return None


def fetch(kube: Cluster, deployment: Any, dest: Path,
          overrides: dict[str, str] | None = None) -> Fetched:
    """Run the Deployment's ``fetch-engine`` init container here; its exit code and the
    termination message's reason and message. ``overrides``: environment set over the
    container's (another store endpoint: a recording proxy)."""
    namespace = deployment.metadata.namespace
    init = next(c for c in deployment.spec.template.spec.init_containers
                if c.name == "fetch-engine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    for var in init.env or []:
        value = _value(kube, namespace, var)
        if value is not None:
            env[var.name] = value
    env.update(overrides or {})
    termination = dest.with_name(dest.name + ".termination")
    env["KILN_TERMINATION_LOG"] = str(termination)
    env["KILN_NVIDIA_SMI"] = str(dest.with_name("no-nvidia-smi"))
    args = [str(dest) if a == ENGINE_DIR else a for a in init.args]
    done = subprocess.run([sys.executable, "-m", "kiln.cli", *init.command[1:], *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    text = termination.read_text() if termination.exists() else "{}"
    data = json.loads(text or "{}")
    return Fetched(done.returncode, str(data.get("reason", "")), str(data.get("message", "")),
                   done.stderr)
