"""docs/argocd.md and its example: links resolve, the argocd-cm keys are the chart's, the
Application is well-formed and stays out of examples/ (which the tests apply as kiln objects).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from chart.support import find, render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "argocd.md"
APPLICATION = ROOT / "docs" / "examples" / "argocd" / "application.yaml"


def test_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", DOC.read_text()):
        if "://" not in target:
            assert (DOC.parent / target).exists(), target


def test_argocd_cm_keys_are_the_charts() -> None:
    data = find(render({"argocd": {"healthChecks": {"enabled": True}}}), "ConfigMap")["data"]
    text = DOC.read_text()
    for key in data:
        assert f"`{key}`" in text
        escaped = key.replace(".", "\\.")
        assert f"configs.cm.{escaped}=" in text
        assert f"{key}=" in text  # the Kustomize generator line


def test_application_example() -> None:
    (app,) = list(yaml.safe_load_all(APPLICATION.read_text()))
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["kind"] == "Application"
    spec = app["spec"]
    assert spec["source"]["repoURL"] and spec["source"]["path"]
    assert spec["destination"]["namespace"]
    options = spec["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in options
    assert "SkipDryRunOnMissingResource=true" in options
    assert "ServerSideDiff=true" in app["metadata"]["annotations"][
        "argocd.argoproj.io/compare-options"]
    assert not list((ROOT / "examples").rglob("*argocd*")), \
        "examples/ is for kiln objects: the tests apply every file there"
