"""``kiln-builder`` run as the console script, end to end on the CPU, against moto's S3."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from securesystemslib.signer import CryptoSigner

from builder.faults import OnFirstDownload, Outage, S3Proxy
from builder.support import Bed, failed
from kiln.contract import exitcodes, provenance
from kiln.contract.manifest import Manifest
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.store import open_store


def test_pytorch_build_lands_in_the_store_with_a_matching_manifest(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri, dtype="bfloat16", parallelism={"tensor": 2})
    run = bed.run(task)
    assert run.code == 0, run.log
    assert "kiln-builder: phase=download bytes=" in run.log
    assert "phase=upload" in run.log

    prefix = f"engines/{task.key}/"
    stored = bed.keys(prefix)
    manifest = json.loads(bed.s3.get_object(Bucket=bed.store_bucket,
                                            Key=prefix + "manifest.json")["Body"].read())
    files = {f["path"]: f for f in manifest["files"]}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "generation_config.json"}
    assert set(files) == expected
    upload = f"{prefix}{manifest['upload']}/"
    assert sorted([prefix + "manifest.json", *(upload + p for p in files)]) == stored
    for path, entry in files.items():
        body = bed.s3.get_object(Bucket=bed.store_bucket, Key=upload + path)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], path
        assert len(body) == entry["size"]
    local = checkpoints.write(bed.tmp / "again")
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(
        (local / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["key"] == task.key

    summary = run.termination
    assert summary["key"] == task.key
    assert summary["uri"] == f"s3://{bed.store_bucket}/engines/{task.key}/"
    assert summary["cached"] is False
    assert summary["sizeBytes"] == sum(f["size"] for f in files.values())
    assert summary["versions"]["kiln"]
    assert set(summary["seconds"]) >= {"download", "build", "upload", "total"}

    assert summary["upload"] == manifest["upload"]
    assert summary["manifestSha256"] == hashlib.sha256(
        bed.s3.get_object(Bucket=bed.store_bucket, Key=prefix + "manifest.json")["Body"]
        .read()).hexdigest()

    # Unsigned, the engine does not count: a second run builds it again, and replaces it.
    again = bed.run(task)
    assert again.code == 0, again.log
    assert again.termination["cached"] is False
    assert "does not count: engine" in again.log
    # Signed by the operator (with a key the builder trusts), it is found and not rebuilt.
    store = open_store(f"s3://{bed.store_bucket}/", endpoint_url=bed.endpoint)
    data = store.read_manifest_bytes(task.key)
    assert data is not None
    signer = CryptoSigner.generate_ecdsa()
    store.write_envelope(task.key, provenance.sign(
        data, Manifest.model_validate_json(data), provenance.JobRef("ns", "job", "uid"), signer))
    cached = bed.run(task, KILN_TRUSTED_KEYS=provenance.public_pem(signer))
    assert cached.code == 0, cached.log
    assert cached.termination["cached"] is True
    assert "manifestSha256" not in cached.termination


def test_unreadable_source(bed: Bed) -> None:
    uri = "s3://no-such-bucket-kiln/llama/"
    message = failed(bed.run(bed.task(uri, identity="sha256:" + "0" * 64)),
                     "NotFound", exitcodes.NOT_FOUND)
    assert "no-such-bucket-kiln" in message


def test_no_config_json(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    bed.s3.delete_object(Bucket=bucket, Key="llama/config.json")
    message = failed(bed.run(bed.task(uri)), "InvalidInput", exitcodes.INVALID_INPUT)
    assert "config.json" in message


def test_unsupported_architecture(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket, architectures=["GPT2LMHeadModel"])
    message = failed(bed.run(bed.task(uri)), "Unsupported", exitcodes.UNSUPPORTED)
    assert "GPT2LMHeadModel" in message
    assert "LlamaForCausalLM" in message, "the message lists what is supported"


def test_weights_changed_while_downloading(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri)

    def replace() -> None:
        bed.s3.put_object(Bucket=bucket, Key="llama/tokenizer_config.json", Body=b"{}")

    change = OnFirstDownload(replace)
    with S3Proxy(bed.endpoint, change) as proxy:
        run = bed.run(task, AWS_ENDPOINT_URL=proxy.url, KILN_STORE_AWS_ENDPOINT_URL=bed.endpoint)
    assert change.done, "the builder read the weights through the proxy"
    failed(run, "WeightsChanged", exitcodes.WEIGHTS_CHANGED)
    assert bed.keys(f"engines/{task.key}/") == []


def test_weights_changed_after_the_key_was_made(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri)
    bed.s3.put_object(Bucket=bucket, Key="llama/tokenizer_config.json", Body=b"{}")
    failed(bed.run(task), "WeightsChanged", exitcodes.WEIGHTS_CHANGED)
    assert bed.keys(f"engines/{task.key}/") == []


def test_store_outage_mid_upload_leaves_no_manifest(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    task = bed.task(uri)
    outage = Outage(puts=2)
    with S3Proxy(bed.endpoint, outage) as proxy:
        run = bed.run(task, KILN_STORE_AWS_ENDPOINT_URL=proxy.url)
    failed(run, "Unavailable", exitcodes.UNAVAILABLE)
    assert outage.puts == 2
    assert proxy.refused > 0
    stored = bed.keys(f"engines/{task.key}/")
    assert stored, "the upload got part way"
    assert f"engines/{task.key}/manifest.json" not in stored


def test_out_of_disk(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    message = failed(bed.run(bed.task(uri), "--min-free-bytes", str(1 << 60)),
                     "OutOfDisk", exitcodes.OUT_OF_DISK)
    assert "free" in message
    assert not (bed.tmp / "work" / "weights").exists(), "checked before downloading"


def test_quantized_pytorch_build_needs_an_hf_export_script(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    examples = bed.tmp / "examples"
    message = failed(bed.run(bed.task(uri, quantization={"algo": "fp8"}),
                             "--examples", str(examples)),
                     "Unsupported", exitcodes.UNSUPPORTED)
    assert "hf_ptq.py: KILN_MODELOPT_EXAMPLES is not set" in message
    assert "quantize_hf_to_hf.py is missing" in message
    assert "quantize_with_modelopt.py is missing" in message


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here")
def test_quantized_pytorch_build_asks_the_script_then_needs_a_gpu(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    examples = bed.tmp / "examples"
    script = examples / "quantization" / "quantize_hf_to_hf.py"
    script.parent.mkdir(parents=True)
    script.write_text("import sys\nprint('usage: --pyt_ckpt_path --export_path')\n")
    message = failed(bed.run(bed.task(uri, quantization={"algo": "fp8"}),
                             "--examples", str(examples)), "Unsupported", exitcodes.UNSUPPORTED)
    assert "quantize_hf_to_hf.py lacks --kv_cache_qformat, --qformat" in message
    script.write_text("print('--pyt_ckpt_path --export_path --qformat --kv_cache_qformat')\n")
    message = failed(bed.run(bed.task(uri, quantization={"algo": "fp8"}),
                             "--examples", str(examples)),
                     "GPUUnavailable", exitcodes.GPU_UNAVAILABLE)
    assert "fp8" in message


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here")
def test_quantized_pytorch_build_takes_modelopts_documented_hf_ptq_first(
        bed: Bed, bucket: str) -> None:
    """ModelOpt's examples/llm_ptq/hf_ptq.py under KILN_MODELOPT_EXAMPLES, asked with --help:
    one lacking a flag kiln passes is named; one that has them is chosen over TensorRT-LLM's
    scripts (which are absent here), and the build then needs a GPU."""
    uri = bed.weights(bucket)
    modelopt = bed.tmp / "modelopt-examples"
    script = modelopt / "llm_ptq" / "hf_ptq.py"
    script.parent.mkdir(parents=True)
    script.write_text("print('--pyt_ckpt_path --export_path --qformat --kv_cache_qformat')\n")
    task = bed.task(uri, quantization={"algo": "fp8"})
    message = failed(bed.run(task, "--examples", str(bed.tmp / "none"),
                             KILN_MODELOPT_EXAMPLES=str(modelopt)),
                     "Unsupported", exitcodes.UNSUPPORTED)
    assert "hf_ptq.py lacks --export_fmt" in message
    script.write_text("print('--pyt_ckpt_path --export_path --qformat --kv_cache_qformat "
                      "--export_fmt')\n")
    message = failed(bed.run(task, "--examples", str(bed.tmp / "none"),
                             KILN_MODELOPT_EXAMPLES=str(modelopt)),
                     "GPUUnavailable", exitcodes.GPU_UNAVAILABLE)
    assert "fp8" in message


def test_pytorch_kv_cache_fp8_alone_is_a_runtime_option(bed: Bed, bucket: str) -> None:
    """No calibration, no GPU: the checkpoint is served as it is, kv_cache_config.dtype fp8."""
    uri = bed.weights(bucket)
    run = bed.run(bed.task(uri, quantization={"kvCache": "fp8"}), "--examples",
                  str(bed.tmp / "none"))
    assert run.code == 0, run.log
    assert "phase=quantize" not in run.log


def test_invalid_task(bed: Bed) -> None:
    failed(bed.run('{"key": "nope"}'), "InvalidTask", exitcodes.INVALID_TASK)


@pytest.mark.skipif(shutil.which("trtllm-build") is not None, reason="trtllm-build is here")
def test_tensorrt_on_an_image_without_trtllm_build(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket)
    message = failed(bed.run(bed.task(uri, backend="tensorrt")), "Unsupported",
                     exitcodes.UNSUPPORTED)
    assert "trtllm-build" in message


def test_tensorrt_refuses_an_architecture_it_cannot_convert(bed: Bed, bucket: str) -> None:
    uri = bed.weights(bucket, architectures=["Gemma3ForCausalLM"])
    message = failed(bed.run(bed.task(uri, backend="tensorrt")), "Unsupported",
                     exitcodes.UNSUPPORTED)
    assert "Gemma3ForCausalLM" in message


def test_an_endpoint_other_than_the_tasks_is_refused_before_anything_is_read(
        bed: Bed, bucket: str) -> None:
    """The operator binds the endpoints by value in the task; a build pod whose environment
    names another (a credentials Secret edited after the render) builds nothing (issue 24)."""
    task = bed.task(bed.weights(bucket))
    task.source.endpoints = {"AWS_ENDPOINT_URL": bed.endpoint + "/", "HF_ENDPOINT": ""}
    assert bed.run(task).code == exitcodes.OK
    task.source.endpoints = {"AWS_ENDPOINT_URL": "http://elsewhere.example:9000"}
    message = failed(bed.run(task), "EndpointMismatch", exitcodes.INVALID_INPUT)
    assert "AWS_ENDPOINT_URL" in message and "elsewhere.example" in message
