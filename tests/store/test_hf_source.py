"""The Hugging Face source against a tiny hub on loopback (real HTTP through huggingface_hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import AccessDenied, InvalidInput, NotFound, Unavailable
from kiln.sources import open_source
from store.conftest import FakeHub

FILES = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
         "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "}


def test_identity_is_the_commit_sha_of_the_revision(fake_hub: FakeHub) -> None:
    sha = fake_hub.add("acme/llama", FILES, revisions=("main", "v1"))
    main = open_source("hf://acme/llama@main").identity()
    assert main.kind == "hf"
    assert main.details == {"repo": "acme/llama", "revision": "main", "sha": sha}
    assert open_source("hf://acme/llama").identity() == main  # no revision means main
    assert open_source("hf://acme/llama@v1").identity().digest == main.digest  # same commit
    assert open_source(f"hf://acme/llama@{sha}").identity().digest == main.digest
    asked = {path for _, path, _ in fake_hub.requests if path.startswith("/api/models/")}
    assert asked == {f"/api/models/acme/llama/revision/{r}" for r in ("main", "v1", sha)}


def test_a_new_commit_changes_the_identity(fake_hub: FakeHub) -> None:
    fake_hub.add("acme/llama", FILES)
    before = open_source("hf://acme/llama@main").identity()
    fake_hub.add("acme/llama", FILES | {"config.json": b"{}"})  # main moves on
    after = open_source("hf://acme/llama@main").identity()
    assert after.digest != before.digest
    assert after.details["sha"] != before.details["sha"]


def test_token_from_the_credentials_is_sent(fake_hub: FakeHub) -> None:
    fake_hub.add("acme/private", FILES)
    fake_hub.private["acme/private"] = "hf_right"
    with pytest.raises(NotFound, match="set HF_TOKEN if it is private"):
        open_source("hf://acme/private").identity()
    with pytest.raises(NotFound, match="check the token"):
        open_source("hf://acme/private", credentials={"HF_TOKEN": "hf_wrong"}).identity()
    identity = open_source("hf://acme/private", credentials={"HF_TOKEN": "hf_right"}).identity()
    assert identity.details["repo"] == "acme/private"
    assert fake_hub.requests[-1][2] == "Bearer hf_right"


def test_typed_errors(fake_hub: FakeHub) -> None:
    fake_hub.add("acme/llama", FILES)
    fake_hub.gated.add("acme/gated")
    with pytest.raises(NotFound, match=r"hf://acme/llama@nope: revision 'nope' does not exist"):
        open_source("hf://acme/llama@nope").identity()
    with pytest.raises(NotFound, match="repository acme/missing not found"):
        open_source("hf://acme/missing").identity()
    with pytest.raises(AccessDenied, match="gated"):
        open_source("hf://acme/gated").identity()
    with pytest.raises(InvalidInput, match="not a Hugging Face URI"):
        open_source("hf://no-name@main")
    fake_hub.down = True
    with pytest.raises(Unavailable, match="hf://acme/llama") as caught:
        open_source("hf://acme/llama").identity()
    assert caught.value.retryable


def test_hub_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from store.conftest import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(Unavailable, match="hf://acme/llama"):
        open_source("hf://acme/llama").identity()


def test_download_fetches_the_commit(fake_hub: FakeHub, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    sha = fake_hub.add("acme/llama", FILES)
    seen: list[tuple[int, int]] = []
    identity = open_source("hf://acme/llama@main").download(
        tmp_path / "w", progress=lambda d, t: seen.append((d, t)))
    assert identity.details["sha"] == sha
    for name, data in FILES.items():
        assert (tmp_path / "w" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(FILES)  # no metadata
    assert seen[-1][0] == seen[-1][1] == sum(map(len, FILES.values()))
    downloads = [path for _, path, _ in fake_hub.requests if "/resolve/" in path]
    assert downloads
    assert all(f"/resolve/{sha}/" in path for path in downloads)  # by sha, never by branch


def test_a_dataset_repository_for_calibration(fake_hub: FakeHub, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``spec.build.quantization.calibration.dataset: hf://...`` names a dataset repository."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    rows = {"train.jsonl": b'{"text": "a sample"}\n'}
    sha = fake_hub.add("acme/calib", rows)
    identity = open_source("hf://acme/calib@main", hf_repo_type="dataset").download(
        tmp_path / "c")
    assert identity.details["sha"] == sha
    assert (tmp_path / "c" / "train.jsonl").read_bytes() == rows["train.jsonl"]
    assert set(fake_hub.kinds) == {"dataset"}
    assert any(p.startswith("/api/datasets/acme/calib") for _, p, _ in fake_hub.requests)
