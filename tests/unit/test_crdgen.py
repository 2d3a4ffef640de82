"""The CRD generator: structural schemas, stable output, what the catalogue adds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.api import BuildSpec, EngineBuildSpec, EngineDeploymentSpec
from kiln.domain import catalogue
from kiln.gen import crds

CRDS = Path(__file__).parents[2] / "crds"


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(crd["spec"]["names"]["kind"], crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            for crd in crds.crd_manifests()]


def test_committed_crds_match_the_models(tmp_path: Path) -> None:
    """Drift: `kiln crds` must have been run after the last change to kiln.api/catalogue."""
    written = crds.write_crds(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in CRDS.glob("*.yaml"))
    for path in written:
        committed = (CRDS / path.name).read_text()
        assert path.read_text() == committed, f"crds/{path.name} is stale: run `kiln crds`"


def test_output_is_deterministic() -> None:
    assert [crds.render(c) for c in crds.crd_manifests()] == [
        crds.render(c) for c in crds.crd_manifests()]


def test_rendered_yaml_parses_back_to_the_manifest() -> None:
    for crd in crds.crd_manifests():
        assert yaml.safe_load(crds.render(crd)) == crd


@pytest.mark.parametrize(("kind", "schema"), schemas(), ids=["EngineBuild", "EngineDeployment"])
def test_schema_is_structural(kind: str, schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        assert "title" not in node, path
        for keyword in ("$ref", "$defs", "allOf", "oneOf", "nullable", "const",
                        "exclusiveMinimum", "propertyNames"):
            assert keyword not in node, (path, keyword)
        if "anyOf" in node:  # only int-or-string
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert node.get("type") in {"object", "array", "string", "integer", "number",
                                        "boolean"}, path
        assert node.get("additionalProperties") is not False, path


@pytest.mark.parametrize(("kind", "schema"), schemas(), ids=["EngineBuild", "EngineDeployment"])
def test_spec_strings_lists_and_maps_are_bounded(kind: str, schema: dict[str, Any]) -> None:
    """CEL cost estimation needs maxLength/maxItems/maxProperties (or enums) everywhere."""
    for path, node in nodes(schema["properties"]["spec"], ".spec"):
        kind_ = node.get("type")
        if kind_ == "string":
            assert "maxLength" in node or "enum" in node, path
        elif kind_ == "array":
            assert "maxItems" in node, path
        elif kind_ == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


@pytest.mark.parametrize(("kind", "schema"), schemas(), ids=["EngineBuild", "EngineDeployment"])
def test_every_field_is_described(kind: str, schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        if path and not path.endswith(("[]", "{}")) and not path.startswith(".metadata"):
            assert node.get("description"), path


def test_defaults_match_the_models() -> None:
    eb = dict(schemas())["EngineBuild"]["properties"]["spec"]["properties"]
    assert eb["build"]["default"] == BuildSpec().to_dict()
    assert eb["build"]["properties"]["maxInputLen"]["default"] == 1024
    assert "default" not in eb["build"]["properties"]["maxSeqLen"]
    assert eb["targets"]["default"] == []
    ed = dict(schemas())["EngineDeployment"]["properties"]["spec"]["properties"]
    assert ed["strategy"]["default"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert ed["gpu"]["default"] == "auto"
    assert EngineDeploymentSpec.model_fields["replicas"].default == ed["replicas"]["default"]


def test_required_fields() -> None:
    eb = dict(schemas())["EngineBuild"]
    assert eb["required"] == ["spec"]
    assert eb["properties"]["spec"]["required"] == ["model"]
    assert eb["properties"]["spec"]["properties"]["model"]["required"] == ["source"]
    assert dict(schemas())["EngineDeployment"]["properties"]["spec"]["required"] == [
        "engineBuildRef"]


def test_names_columns_and_subresources() -> None:
    eb, ed = crds.crd_manifests()
    assert eb["metadata"]["name"] == "enginebuilds.kiln.dev"
    assert eb["spec"]["names"]["shortNames"] == ["eb"]
    assert ed["spec"]["names"]["shortNames"] == ["ed"]
    for crd in (eb, ed):
        assert crd["spec"]["names"]["categories"] == ["kiln"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert {"Ready", "Key", "Age"} <= set(names)
    assert "scale" not in eb["spec"]["versions"][0]["subresources"]
    assert ed["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.scaleReplicas",
        "labelSelectorPath": ".status.selector"}
    eb_columns = {c["name"]: c for c in eb["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert eb_columns["Phase"]["jsonPath"] == ".status.phase"
    assert eb_columns["GPUs"]["jsonPath"] == ".status.gpus"
    assert eb_columns["Age"]["type"] == "date"


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    for _, schema in schemas():
        conditions = schema["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]


def test_gpu_names_come_from_the_catalogue() -> None:
    eb = dict(schemas())["EngineBuild"]["properties"]["spec"]["properties"]
    assert eb["targets"]["items"]["properties"]["gpu"]["enum"] == catalogue.names()
    ed = dict(schemas())["EngineDeployment"]["properties"]["spec"]["properties"]
    assert ed["gpu"]["enum"] == ["auto", *catalogue.names()]


def test_quantization_rules_come_from_the_catalogue() -> None:
    on_spec, on_build = crds.quantization_rules()
    assert len(on_spec) + len(on_build) == len(catalogue.REQUIREMENTS)
    fp8 = next(r for r in on_spec if "'fp8', 'w4a8_awq'" in r["rule"])
    assert "'A100-80GB'" in fp8["rule"]
    assert "'H100-SXM'" not in fp8["rule"]
    assert "double(t.computeCapability) >= 8.9" in fp8["rule"]
    assert fp8["fieldPath"] == ".build.quantization.algo"
    spec = dict(schemas())["EngineBuild"]["properties"]["spec"]
    assert all(r in spec["x-kubernetes-validations"] for r in on_spec)
    assert all(r in spec["properties"]["build"]["x-kubernetes-validations"] for r in on_build)


def test_every_rule_has_a_message() -> None:
    for _, schema in schemas():
        for path, node in nodes(schema):
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["message"].strip(), (path, rule)


def test_spec_model_schema_has_no_pydantic_leftovers() -> None:
    text = yaml.safe_dump(crds.structural(EngineBuildSpec))
    assert "title:" not in text
    assert "$ref" not in text
    assert "type: 'null'" not in text
