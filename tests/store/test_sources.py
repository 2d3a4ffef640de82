"""Weight sources: identity without downloading, downloads that notice changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.errors import InvalidInput, NotFound, WeightsChanged
from kiln.sources import open_source
from kiln.sources.base import content_digest


@pytest.fixture
def weights(s3_client: Any, bucket: str) -> str:
    for i in range(1200):  # more than one page of a listing
        s3_client.put_object(Bucket=bucket, Key=f"m/shard-{i:04d}.bin", Body=f"w{i}".encode())
    s3_client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    s3_client.put_object(Bucket=bucket, Key="other/ignored.bin", Body=b"x")
    return f"s3://{bucket}/m/"


def test_s3_identity_is_stable_and_follows_content(
        weights: str, s3_client: Any, bucket: str, s3_endpoint: str) -> None:
    source = open_source(weights, endpoint_url=s3_endpoint)
    first = source.identity()
    assert (first.details["objects"], first.details["bytes"]) == (
        1201, sum(len(f"w{i}") for i in range(1200)) + 2)
    assert first.details["uploading"] == 0 and first.details["newest"] > 0
    s3_client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")  # same bytes again
    assert source.identity().digest == first.digest  # (only when it was written moves)
    s3_client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"a": 1}')
    assert source.identity().digest != first.digest


def test_s3_download_fetches_everything(weights: str, s3_endpoint: str,
                                        tmp_path: Path) -> None:
    source = open_source(weights, endpoint_url=s3_endpoint)
    identity = source.download(tmp_path / "w")
    assert identity.digest == source.identity().digest
    assert (tmp_path / "w" / "shard-0042.bin").read_bytes() == b"w42"
    assert not (tmp_path / "w" / "ignored.bin").exists()
    assert len(content_digest(tmp_path / "w")) == 64


def test_s3_download_notices_weights_that_changed(
        weights: str, s3_client: Any, bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    source = open_source(weights, endpoint_url=s3_endpoint)
    seen: list[int] = []

    def change_once(done: int, total: int) -> None:
        if not seen:
            seen.append(done)
            s3_client.put_object(Bucket=bucket, Key="m/shard-0999.bin", Body=b"new")

    with pytest.raises(WeightsChanged, match="changed while"):
        source.download(tmp_path / "w", progress=change_once)


def test_missing_and_malformed_sources(s3_endpoint: str, bucket: str) -> None:
    with pytest.raises(NotFound, match="no weights under"):
        open_source(f"s3://{bucket}/nothing/", endpoint_url=s3_endpoint).identity()
    with pytest.raises(NotFound, match="NoSuchBucket"):
        open_source("s3://no-such-bucket-x/", endpoint_url=s3_endpoint).identity()
    with pytest.raises(InvalidInput, match="not a weights URI"):
        open_source("ftp://x/")
    with pytest.raises(InvalidInput, match="Hugging Face URI"):
        open_source("hf://only-org")


def test_pvc_identity_is_path_and_revision(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KILN_PVC_ROOT", str(tmp_path))
    (tmp_path / "models" / "llama").mkdir(parents=True)
    (tmp_path / "models" / "llama" / "config.json").write_text("{}")
    a = open_source("pvc://models/llama", revision="r1")
    b = open_source("pvc://models/llama", revision="r2")
    assert a.identity().digest != b.identity().digest
    assert a.identity() == open_source("pvc://models/llama", revision="r1").identity()
    a.download(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
