"""kiln's Argo CD health checks, run by a real Lua 5.1 runtime (lupa) in Argo CD's sandbox,
against status objects of each kind for each of Healthy / Progressing / Degraded.

The objects are JSON files in ``argocd_health/<Kind>/<expected>/``; objects captured from
the real operator's end-to-end runs go there too (``chart.argocd.save_fixture``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from chart import support
from chart.argocd import SCRIPTS, fixtures, health
from kiln.api import EngineBuild, EngineDeployment

MODELS: dict[str, Any] = {"EngineBuild": EngineBuild, "EngineDeployment": EngineDeployment}
FIXTURES = fixtures()


@pytest.mark.parametrize(("kind", "expected", "path"), FIXTURES,
                         ids=[f"{k}-{e}-{p.stem}" for k, e, p in FIXTURES])
def test_health_of_status_object(kind: str, expected: str, path: Path) -> None:
    obj = json.loads(path.read_text())
    assert obj["kind"] == kind
    status, message = health(obj)
    assert (status, bool(message)) == (expected, True), message


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_every_kind_has_objects_for_each_health(kind: str) -> None:
    seen = {expected for k, expected, _ in FIXTURES if k == kind}
    assert {"Healthy", "Progressing", "Degraded"} <= seen


@pytest.mark.parametrize(("kind", "expected", "path"), FIXTURES,
                         ids=[f"{k}-{e}-{p.stem}" for k, e, p in FIXTURES])
def test_status_objects_are_valid_kiln_objects(kind: str, expected: str, path: Path) -> None:
    """The fixtures follow kiln.api, so they stay what the operator could write."""
    obj = json.loads(path.read_text())
    MODELS[kind].model_validate(obj)


def test_healthy_needs_the_current_generation() -> None:
    """Ready from an older generation is not Healthy: the operator may not be running."""
    (path,) = [p for k, e, p in FIXTURES if k == "EngineBuild" and p.stem == "engines-ready"]
    obj = json.loads(path.read_text())
    assert health(obj)[0] == "Healthy"
    obj["metadata"]["generation"] += 1
    status, message = health(obj)
    assert status == "Progressing"
    assert "generation 3 (status is for generation 2)" in message


def test_the_sandbox_is_as_strict_as_argo_cd(tmp_path: Path) -> None:
    """Argo CD closes the string, math, io and os libraries by default."""
    obj = {"kind": "EngineBuild", "metadata": {"generation": 1}}
    for body in ('return {status = string.upper("healthy")}',
                 'return {status = ("Healthy"):lower()}',
                 'return {status = "Healthy", message = tostring(math.floor(1.5))}',
                 'io.write("x"); return {status = "Healthy", message = ""}'):
        script = tmp_path / "bad.lua"
        script.write_text(body)
        with pytest.raises(Exception):  # noqa: B017, PT011 - any Lua error
            health(obj, script)
    script = tmp_path / "ok.lua"
    script.write_text('return {status = "Healthy", message = tostring(obj.metadata.generation)}')
    assert health(obj, script) == ("Healthy", "1")


# -- delivering the scripts into argocd-cm --------------------------------------------------

@pytest.fixture
def argocd_namespace(kube: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube.api_client)
    name = "argocd-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {
        "metadata": {"name": "argocd-cm"},
        "data": {"url": "https://argocd.example.com", "timeout.reconciliation": "180s"}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.mark.cluster
def test_notes_command_merges_the_checks_into_argocd_cm(kube: Any, namespace: str,
                                                        argocd_namespace: str) -> None:
    """``helm install`` with the checks enabled, then the command its NOTES print: argocd-cm
    gains both scripts and keeps what it had."""
    release = "kiln-" + os.urandom(3).hex()
    common = ["--kubeconfig", str(kube.kubeconfig), "--namespace", namespace]
    installed = support.helm("install", release, str(support.CHART), *common, "--skip-crds",
                             "--set", "argocd.healthChecks.enabled=true")
    try:
        command = _patch_command(installed.stdout.split("NOTES:", 1)[1])
        kubectl = (f"{shlex.quote(str(support.binaries()['kubectl']))} "
                   f"--kubeconfig={shlex.quote(str(kube.kubeconfig))}")
        command = command.replace("kubectl ", kubectl + " ").replace(
            "-n argocd ", f"-n {argocd_namespace} ")
        subprocess.run(["bash", "-c", command], check=True, capture_output=True, text=True)
    finally:
        support.helm("uninstall", release, *common)
    cm = client.CoreV1Api(kube.api_client).read_namespaced_config_map("argocd-cm",
                                                                      argocd_namespace)
    assert cm.data["url"] == "https://argocd.example.com"
    for kind, script in SCRIPTS.items():
        assert cm.data[f"resource.customizations.health.kiln.dev_{kind}"].strip() == \
            script.read_text().strip()


def _patch_command(notes: str) -> str:
    lines = notes.splitlines()
    start = next(i for i, line in enumerate(lines) if "patch configmap argocd-cm" in line)
    command = lines[start].strip()
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + " " + lines[start].strip()
    return command
