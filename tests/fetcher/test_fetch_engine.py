"""``kiln fetch-engine`` as the init container runs it, against moto's S3 over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from kiln.contract import exitcodes, provenance
from kiln.contract.key import key_of
from kiln.contract.manifest import Manifest
from kiln.contract.termination import parse_failure
from kiln.fetcher import main as fetch
from kiln.store import EngineStore, open_store

INPUTS = {"computeCapability": "9.0", "gpuProduct": "NVIDIA-H100-80GB-HBM3",
          "origin": {"namespace": "ns"}}
"""Namespace ``ns``'s engine (``JOB`` ran there)."""
KEY = key_of(INPUTS)
SIGNER = CryptoSigner.generate_ecdsa()
TRUSTED = provenance.public_pem(SIGNER)
JOB = provenance.JobRef("ns", "kiln-build-x", "uid-1")


def sign(store: EngineStore, key: str = KEY, signer: CryptoSigner = SIGNER) -> None:
    """What the operator does after the key's own Job succeeded."""
    data = store.read_manifest_bytes(key)
    assert data is not None
    manifest = Manifest.model_validate_json(data)
    store.write_envelope(key, provenance.sign(data, manifest, JOB, signer))


@pytest.fixture
def stored(bucket: str, s3_endpoint: str, tmp_path: Path) -> str:
    """A signed engine for compute capability 9.0 in a fresh store; the store's URI."""
    src = tmp_path / "engine"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text('{"pretrained_config": {"mapping": {"tp_size": 1}}}')
    (src / "rank0.engine").write_bytes(os.urandom(256 * 1024 + 3))
    (src / "tokenizer" / "tokenizer.json").write_text("{}")
    store = open_store(f"s3://{bucket}/kiln/", endpoint_url=s3_endpoint)
    store.upload(KEY, src, inputs=INPUTS)
    sign(store)
    return f"s3://{bucket}/kiln/"


def run(store: str, dest: Path, s3_endpoint: str, cc: str | None, tmp_path: Path,
        *extra: str, **env: str) -> tuple[int, str, str]:
    """The real command in a child process; (exit code, stderr, termination message)."""
    termination = tmp_path / f"termination-{os.urandom(3).hex()}"
    child_env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint,
                 "KILN_NVIDIA_SMI": str(tmp_path / "no-nvidia-smi"),
                 "KILN_TERMINATION_LOG": str(termination), "KILN_TRUSTED_KEYS": TRUSTED,
                 **env}
    child_env.pop("KILN_GPU_COMPUTE_CAPABILITY", None)
    if cc is not None:
        child_env["KILN_GPU_COMPUTE_CAPABILITY"] = cc
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "fetch-engine", "--store", store, "--key", KEY,
         "--dest", str(dest), *extra], env=child_env, capture_output=True, text=True,
        timeout=120, check=False)
    text = termination.read_text() if termination.exists() else ""
    if done.returncode == exitcodes.OK:
        return done.returncode, done.stderr, json.loads(text)["message"]
    failure = parse_failure(text, done.returncode, "fetcher")
    return done.returncode, done.stderr, f"{failure.reason}: {failure.message}"


def test_a_good_engine_is_fetched_and_every_file_checked(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    code, err, message = run(stored, dest, s3_endpoint, "9.0", tmp_path)
    assert code == exitcodes.OK, err
    assert (dest / "rank0.engine").stat().st_size == 256 * 1024 + 3
    assert (dest / "tokenizer" / "tokenizer.json").read_text() == "{}"
    assert json.loads((dest / "manifest.json").read_text())["key"] == KEY
    assert "every sha256 checked" in message
    # A restarted init container finds it in place and downloads nothing again.
    code, err, message = run(stored, dest, s3_endpoint, "9.0", tmp_path)
    assert code == exitcodes.OK, err
    assert "already in" in message


def test_a_flipped_byte_fails_with_its_own_code_and_message(
        stored: str, s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    manifest = json.loads(s3_client.get_object(
        Bucket=bucket, Key=f"kiln/engines/{KEY}/manifest.json")["Body"].read())
    key = f"kiln/engines/{KEY}/{manifest['upload']}/rank0.engine"
    data = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[1000] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    code, err, message = run(stored, tmp_path / "dest", s3_endpoint, "9.0", tmp_path)
    assert code == exitcodes.INTEGRITY
    assert message.startswith("IntegrityError: ")
    assert KEY in message
    assert "rank0.engine" in message
    assert "corrupt" in message
    assert "damaged" in err


def test_a_compute_capability_mismatch_is_refused_before_downloading(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    code, _, message = run(stored, dest, s3_endpoint, "8.0", tmp_path)
    assert code == exitcodes.GPU_MISMATCH
    assert message.startswith("GPUMismatch: ")
    assert f"engine {KEY} was built for compute capability 9.0" in message
    assert "this node's GPU has compute capability 8.0" in message
    assert "KILN_GPU_COMPUTE_CAPABILITY" in message
    assert not (dest / "rank0.engine").exists()
    assert code not in (exitcodes.INTEGRITY, exitcodes.NOT_FOUND)


def test_nvidia_smi_wins_over_the_rendered_capability(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 8.9\necho 8.9\n")
    smi.chmod(0o755)
    code, _, message = run(stored, tmp_path / "dest", s3_endpoint, "9.0", tmp_path,
                           KILN_NVIDIA_SMI=str(smi))
    assert code == exitcodes.GPU_MISMATCH
    assert "compute capability 8.9 (from nvidia-smi)" in message


def test_a_missing_engine_and_a_missing_argument_have_their_codes(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    code, _, message = run(stored.replace("/kiln/", "/other/"), tmp_path / "d", s3_endpoint,
                           "9.0", tmp_path)
    assert code == exitcodes.NOT_FOUND
    assert KEY in message
    assert fetch.run(store=None, key=None, source=None, revision=None, dest=tmp_path,
                     model_repo=None, env={}) == exitcodes.INVALID_TASK


def test_checkpoint_and_model_repository(
        s3_client: Any, bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket, Key="llama/config.json", Body=b"{}")
    s3_client.put_object(Bucket=bucket, Key="llama/model.safetensors", Body=b"weights")
    files = {"tensorrt_llm/config.pbtxt": 'name: "tensorrt_llm"\n', "ensemble/1/.keep": ""}
    # the tenant's Secret names its endpoint and its keys: nothing ambient goes there
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "tenant",
           "AWS_SECRET_ACCESS_KEY": "tenant-secret",
           "KILN_MODEL_REPO_FILES": json.dumps(files), "KILN_TERMINATION_LOG": str(tmp_path / "t")}
    code = fetch.run(store=None, key=None, source=f"s3://{bucket}/llama/", revision=None,
                     dest=tmp_path / "ckpt", model_repo=tmp_path / "repo", env=env)
    assert code == exitcodes.OK
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text() == files[
        "tensorrt_llm/config.pbtxt"]
    assert (tmp_path / "repo" / "ensemble" / "1").is_dir()
    bad = {**env, "KILN_MODEL_REPO_FILES": json.dumps({"../x": ""})}
    assert fetch.run(store=None, key=None, source=f"s3://{bucket}/llama/", revision=None,
                     dest=tmp_path / "ckpt2", model_repo=tmp_path / "repo2",
                     env=bad) == exitcodes.INVALID_INPUT


def test_an_unsigned_engine_is_refused_before_anything_is_downloaded(
        stored: str, s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    s3_client.delete_object(Bucket=bucket, Key=f"kiln/engines/{KEY}/{provenance.ENVELOPE}")
    dest = tmp_path / "dest"
    code, _, message = run(stored, dest, s3_endpoint, "9.0", tmp_path)
    assert code == exitcodes.UNTRUSTED
    assert message.startswith("Untrusted: ") and "unsigned" in message
    assert not (dest / "rank0.engine").exists()


def test_only_the_pinned_upload_is_fetched(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store(stored, endpoint_url=s3_endpoint)
    upload = (store.read_manifest(KEY) or Manifest(key=KEY)).upload
    code, _, message = run(stored, tmp_path / "other", s3_endpoint, "9.0", tmp_path,
                           "--upload", "an-older-upload")
    assert code == exitcodes.UNTRUSTED and "pins upload 'an-older-upload'" in message
    assert not (tmp_path / "other" / "rank0.engine").exists()
    code, _, message = run(stored, tmp_path / "pinned", s3_endpoint, "9.0", tmp_path,
                           "--upload", upload)
    assert code == exitcodes.OK, message


def test_an_engine_signed_by_an_untrusted_key_is_refused(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    other = provenance.public_pem(CryptoSigner.generate_ecdsa())
    code, _, message = run(stored, tmp_path / "dest", s3_endpoint, "9.0", tmp_path,
                           KILN_TRUSTED_KEYS=other)
    assert code == exitcodes.UNTRUSTED
    assert "signed by no trusted key" in message
    code, _, message = run(stored, tmp_path / "dest", s3_endpoint, "9.0", tmp_path,
                           KILN_TRUSTED_KEYS="")
    assert (code, "no trusted public keys" in message) == (exitcodes.UNTRUSTED, True)


def test_a_manifest_replaced_after_signing_is_refused(
        stored: str, s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    """A writer with the store's credentials swaps in its own manifest (its own files, their
    true digests) under a signed key: the signature no longer covers it."""
    name = f"kiln/engines/{KEY}/manifest.json"
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=name)["Body"].read())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "tokenizer/tokenizer.json"]
    s3_client.put_object(Bucket=bucket, Key=name, Body=json.dumps(manifest).encode())
    code, _, message = run(stored, tmp_path / "dest", s3_endpoint, "9.0", tmp_path)
    assert code == exitcodes.UNTRUSTED
    assert "not the one that was signed" in message


def test_a_previous_key_counts_while_listed(
        stored: str, s3_endpoint: str, tmp_path: Path) -> None:
    """Rotation: the engine signed with the old key serves while the old public key is in the
    trusted list beside the new one, and not once it is removed."""
    new = provenance.public_pem(CryptoSigner.generate_ecdsa())
    code, err, _ = run(stored, tmp_path / "a", s3_endpoint, "9.0", tmp_path,
                       KILN_TRUSTED_KEYS=new + TRUSTED)
    assert code == exitcodes.OK, err
    code, _, _ = run(stored, tmp_path / "b", s3_endpoint, "9.0", tmp_path,
                     KILN_TRUSTED_KEYS=new)
    assert code == exitcodes.UNTRUSTED


def test_an_engine_counts_only_if_built_in_the_namespace_its_key_names(
        bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    """Issue 24: a signed engine is as trustworthy as the namespace its Job ran in. One whose
    key names namespace ``ns`` but whose Job ran elsewhere is refused; a shared one (no
    namespace in its key) counts only if built in the platform's build namespace."""
    src = tmp_path / "engine"
    src.mkdir()
    (src / "rank0.engine").write_bytes(os.urandom(1024))
    store = open_store(f"s3://{bucket}/kiln/", endpoint_url=s3_endpoint)
    store.upload(KEY, src, inputs=INPUTS)
    data = store.read_manifest_bytes(KEY)
    assert data is not None
    manifest = Manifest.model_validate_json(data)
    elsewhere = provenance.JobRef("tenant-b", "kiln-build-x", "uid-2")
    store.write_envelope(KEY, provenance.sign(data, manifest, elsewhere, SIGNER))
    code, _, message = run(f"s3://{bucket}/kiln/", tmp_path / "a", s3_endpoint, "9.0",
                           tmp_path, KILN_BUILD_NAMESPACE="tenant-b")
    assert (code, message.split(":")[0]) == (exitcodes.UNTRUSTED, "Untrusted"), message
    assert "namespace ns's engine" in message and "tenant-b" in message

    shared = {k: v for k, v in INPUTS.items() if k != "origin"} | {"origin": {"scheme": "s3"}}
    key = key_of(shared)
    store.upload(key, src, inputs=shared)
    data = store.read_manifest_bytes(key)
    assert data is not None
    store.write_envelope(key, provenance.sign(data, Manifest.model_validate_json(data),
                                              provenance.JobRef("kiln-builds", "j", "u"),
                                              SIGNER))
    for builds, wanted in ((None, exitcodes.UNTRUSTED), ("elsewhere", exitcodes.UNTRUSTED),
                           ("kiln-builds", exitcodes.OK)):
        env = {"KILN_BUILD_NAMESPACE": builds} if builds else {}
        done = subprocess.run(
            [sys.executable, "-m", "kiln.cli", "fetch-engine", "--store",
             f"s3://{bucket}/kiln/", "--key", key, "--dest", str(tmp_path / f"s-{builds}")],
            env={**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "KILN_TRUSTED_KEYS": TRUSTED,
                 "KILN_GPU_COMPUTE_CAPABILITY": "9.0",
                 "KILN_NVIDIA_SMI": str(tmp_path / "no-nvidia-smi"),
                 "KILN_TERMINATION_LOG": str(tmp_path / "t"), **env},
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == wanted, (builds, done.stderr)
