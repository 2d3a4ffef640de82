"""The API reference generator: no drift from the models, every field and rule shown."""

from __future__ import annotations

import re
from pathlib import Path

from kiln import cli
from kiln.api import EngineBuild, EngineDeployment, EngineStatus, Resources
from kiln.domain import catalogue
from kiln.gen import apidocs, crds

API_MD = Path(__file__).parents[2] / "docs" / "api.md"


def test_committed_reference_matches_the_models(tmp_path: Path) -> None:
    """Drift: `kiln docs` must have been run after the last change to kiln.api/catalogue."""
    out = tmp_path / "api.md"
    assert cli.main(["docs", "--out", str(out)]) == 0
    assert out.read_text() == API_MD.read_text(), "docs/api.md is stale: run `kiln docs`"


def test_output_is_deterministic() -> None:
    assert apidocs.render() == apidocs.render()


def _section(text: str, title: str) -> str:
    start = text.index(f"\n### {title}\n")
    end = text.find("\n## ", start + 1)
    following = text.find("\n### ", start + 1)
    ends = [i for i in (end, following) if i != -1]
    return text[start:min(ends) if ends else len(text)]


def test_one_section_per_kind_and_per_model() -> None:
    text = apidocs.render()
    for kind in ("EngineBuild", "EngineDeployment"):
        assert f"\n## {kind}\n" in text
    for title in ("EngineBuildSpec", "BuildSpec", "Quantization", "EngineStatus", "Server",
                  "Strategy", "Resources", "Condition"):
        assert text.count(f"\n### {title}\n") == 1, title
    resources = _section(text, "Resources")
    assert "EngineBuild `.spec.job.resources`" in resources
    assert "EngineDeployment `.spec.server.resources`" in resources


def test_every_model_field_has_a_row() -> None:
    text = apidocs.render()
    for model, title in ((EngineStatus, "EngineStatus"), (Resources, "Resources")):
        section = _section(text, title)
        for name, info in model.model_fields.items():
            assert f"| `{info.alias or name}`" in section, (title, name)
    for kind in (EngineBuild, EngineDeployment):
        for name in kind.model_fields:
            assert f"| `{kind.model_fields[name].alias or name}`" in text


def test_defaults_enums_and_required_come_from_the_crd() -> None:
    build = _section(apidocs.render(), "BuildSpec")
    assert "| `maxInputLen` | integer | `1024` |" in build
    assert "| `backend` | string | `tensorrt` |" in build
    assert "One of `tensorrt`, `pytorch`." in build
    assert "`source` (required)" in _section(apidocs.render(), "ModelSpec")
    target = _section(apidocs.render(), "Target")
    assert all(f"`{name}`" in target for name in catalogue.names())


def test_every_cel_message_is_shown() -> None:
    text = apidocs.render().replace("\\|", "|")
    for crd in crds.crd_manifests():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        stack = [schema]
        while stack:
            node = stack.pop()
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["message"] in text, rule
            stack += list(node.get("properties", {}).values())
            stack += [node[k] for k in ("items", "additionalProperties")
                      if isinstance(node.get(k), dict)]


def test_links_point_at_headings() -> None:
    text = apidocs.render()
    anchors = {"-".join(h.lower().split()) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, target


def test_every_table_row_has_as_many_cells_as_its_header() -> None:
    """An unescaped '|' in a description would split a cell."""
    width = 0
    for line in apidocs.render().splitlines():
        if not line.startswith("|"):
            width = 0
            continue
        cells = len(re.split(r"(?<!\\)\|", line)) - 2
        if width == 0:
            width = cells
        assert cells == width, line
