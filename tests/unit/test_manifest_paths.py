"""A manifest names files inside its engine directory only; a tenant server's words reach
status as a short, plain quote."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kiln.contract.manifest import FileEntry, Manifest
from kiln.errors import quoted
from kiln.sources import tenant_endpoint

SHA = "0" * 64


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.",
                                  "", "a\\..\\b", "a\x00b", "manifest.json", "x" * 1025])
def test_a_path_outside_the_engine_directory_does_not_parse(path: str) -> None:
    with pytest.raises(ValidationError):
        FileEntry(path=path, size=1, sha256=SHA)


@pytest.mark.parametrize("path", ["rank0.engine", "tokenizer/config.json", "a..b/c.d",
                                  "tokenizer/manifest.json"])
def test_a_relative_path_inside_parses(path: str) -> None:
    assert FileEntry(path=path, size=1, sha256=SHA).path == path


@pytest.mark.parametrize("upload", ["..", ".", "a/b", "a b"])
def test_an_upload_is_one_directory_name(upload: str) -> None:
    with pytest.raises(ValidationError):
        Manifest(key="k", upload=upload)


def test_a_quote_is_short_and_plain() -> None:
    said = quoted("<html><script>alert(1)</script>" + "\x1b[31m" + "x" * 1000 + "</html>")
    assert "<" not in said and "\x1b" not in said and len(said) <= 240


def test_the_endpoint_a_tenant_names_is_its_own() -> None:
    assert tenant_endpoint("s3://b/p/", {"AWS_ENDPOINT_URL": "http://minio:9000/"}) == (
        "http://minio:9000")
    assert tenant_endpoint("hf://a/b", {"HF_ENDPOINT": "https://hub.example"}) == (
        "https://hub.example")
    assert tenant_endpoint("s3://b/p/", {"HF_ENDPOINT": "https://hub.example"}) is None
    assert tenant_endpoint("s3://b/p/", None) is None
    assert tenant_endpoint("pvc://c/p", {"AWS_ENDPOINT_URL": "http://minio:9000"}) is None
