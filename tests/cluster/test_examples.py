"""Every manifest in examples/ is accepted by the real apiserver as it stands, and what the
apiserver stores (its defaults applied) is exactly what kiln.api makes of the file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kiln import GROUP
from kiln.api import EngineBuild, EngineDeployment

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODELS: dict[str, Any] = {"EngineBuild": EngineBuild, "EngineDeployment": EngineDeployment}

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def examples_namespace(kube: Any) -> Iterator[str]:
    """The CRDs installed (server-side apply, Established), and a namespace to create in."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 f"crd/enginebuilds.{GROUP}", f"crd/enginedeployments.{GROUP}")
    core = client.CoreV1Api(kube.api_client)
    name = "examples-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_there_are_examples_of_each_kind() -> None:
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES]
    assert kinds.count("EngineBuild") >= 3
    assert kinds.count("EngineDeployment") >= 1
    assert kinds.count("HorizontalPodAutoscaler") == 1
    for path in EXAMPLES:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert len(docs) == 1, path.name
        assert "namespace" not in docs[0]["metadata"], path.name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(kube: Any, examples_namespace: str, path: Path) -> None:
    created = kube.kubectl("create", "-n", examples_namespace, "-f", str(path), "-o", "yaml")
    stored = yaml.safe_load(created.stdout)
    doc = yaml.safe_load(path.read_text())
    if doc["kind"] == "HorizontalPodAutoscaler":  # it targets an example EngineDeployment
        target = doc["spec"]["scaleTargetRef"]
        named = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
        assert any(d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
                   for d in named), target
        assert stored["spec"]["scaleTargetRef"] == target
        return
    model = MODELS[doc["kind"]].model_validate(doc)
    assert stored["spec"] == model.to_dict()["spec"]
    assert MODELS[doc["kind"]].model_validate(stored).spec == model.spec
