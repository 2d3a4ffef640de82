"""Children kiln creates carry no label or annotation of their owner, so Argo CD's resource
tracking (the ``app.kubernetes.io/instance`` label, or the ``argocd.argoproj.io/tracking-id``
annotation) never claims them: they are neither pruned nor shown OutOfSync.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from kiln.api import EngineBuild
from kiln.config import OperatorConfig
from kiln.domain.labels import KEY_LABEL, managed_by
from kiln.engine_build import render
from kiln.engine_build.plan import Want
from kiln.engine_build.targets import effective

ROOT = Path(__file__).resolve().parents[2]
KEY = "c4" * 32
TRACKED = {
    "app.kubernetes.io/instance": "llm-gitops",          # Argo CD label tracking (legacy default)
    "app.kubernetes.io/name": "llama",
    "team": "ml-platform",
}
TRACKING_ANNOTATIONS = {
    "argocd.argoproj.io/tracking-id": "llm-gitops:kiln.dev/EngineBuild:llm/llama",
    "kubectl.kubernetes.io/last-applied-configuration": "{}",
}


def tracked_engine_build() -> EngineBuild:
    """An EngineBuild as Argo CD applies it: tracking label and annotation on it."""
    return EngineBuild.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
        "metadata": {"name": "llama", "namespace": "llm", "uid": "u-1",
                     "labels": TRACKED, "annotations": TRACKING_ANNOTATIONS},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}]},
    })


def rendered_job(config: OperatorConfig) -> dict[str, Any]:
    eb = tracked_engine_build()
    (target,) = effective(eb.spec, [])
    meta = eb.metadata
    return render.render_job(
        namespace=meta["namespace"], owner_name=meta["name"], owner_uid=meta["uid"],
        spec=eb.spec, want=Want(target, KEY, f"s3://e/engines/{KEY}/"), image="builder:1",
        task_json="{}", config=config)


def test_the_job_has_only_kilns_labels_and_annotations() -> None:
    job = rendered_job(OperatorConfig())
    own = {**managed_by("build"), KEY_LABEL: KEY[:63]}
    assert job["metadata"]["labels"] == own
    assert job["spec"]["template"]["metadata"]["labels"] == own
    assert all(k.startswith("kiln.dev/") for k in job["metadata"]["annotations"])
    assert "annotations" not in job["spec"]["template"]["metadata"]


def test_only_the_operators_configured_pod_labels_are_added() -> None:
    job = rendered_job(OperatorConfig(build_pod_labels={"cost-center": "42"}))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["cost-center"] == "42"
    assert not set(TRACKED) & set(pod_labels) - set(managed_by("build"))
    assert "app.kubernetes.io/instance" not in job["metadata"]["labels"]


def test_the_renderer_is_not_given_the_owners_metadata() -> None:
    """What the renderer is not given it cannot copy: the owner is its name and uid."""
    params = set(inspect.signature(render.render_job).parameters)
    assert {"owner_name", "owner_uid"} <= params
    assert not {"labels", "annotations", "metadata", "body", "owner"} & params


def test_no_child_is_adopted_with_kopf() -> None:
    """``kopf.adopt`` (and ``kopf.label``) copy the owner's labels onto the child, which is
    how operators leak Argo CD's tracking label (argo-cd#8683): kiln sets owner references
    itself."""
    offenders = []
    for path in sorted((ROOT / "operator" / "kiln").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bkopf\.(adopt|label|harmonize_naming)\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
