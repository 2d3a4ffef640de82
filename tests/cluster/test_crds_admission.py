"""The generated CRDs in the real apiserver: bad input is refused at admission, with a message
naming the field and what is wrong; `kubectl explain` and `kubectl get` show what they should."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kiln import GROUP, VERSION
from kiln.api import BuildSpec
from kiln.gen.crds import _text

CRDS = Path(__file__).parents[2] / "crds"
PLURAL = {"EngineBuild": "enginebuilds", "EngineDeployment": "enginedeployments"}
DELETE = object()

pytestmark = pytest.mark.cluster


def install_crds(kube: Any) -> None:
    """Server-side apply ``crds/`` and wait until both CRDs are Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *(f"crd/{p}.{GROUP}" for p in PLURAL.values()))


@pytest.fixture(scope="module")
def crd_namespace(kube: Any) -> Iterator[str]:
    """The CRDs installed, and a namespace for this module's objects."""
    install_crds(kube)
    core = client.CoreV1Api(kube.api_client)
    name = "crd-admission-" + os.urandom(3).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) ``a.b.0.c`` in ``obj``; numeric parts index lists."""
    *parents, last = path.split(".")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value


def create(kube: Any, namespace: str, body: dict[str, Any], dry_run: bool = True) -> Any:
    api = client.CustomObjectsApi(kube.api_client)
    kwargs = {"dry_run": "All"} if dry_run else {}
    return api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[body["kind"]], body, field_validation="Strict",
        **kwargs)


def refusal(call: Callable[[], Any]) -> list[str]:
    """The apiserver's complaints about a request, one ``field: message`` string each."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status in (400, 422), info.value.body
    body = json.loads(info.value.body)
    causes = body.get("details", {}).get("causes", [])
    return [f"{c.get('field', '')}: {c.get('message', '')}" for c in causes] or [body["message"]]


EB_BASE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineBuild",
    "metadata": {"name": "base"},
    "spec": {
        "model": {"source": "s3://models/llama-3.1-8b/"},
        "targets": [{"gpu": "H100-SXM"}],
        "build": {"quantization": {"algo": "none"}},
    },
}
ED_BASE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "EngineDeployment",
    "metadata": {"name": "base"},
    "spec": {"engineBuildRef": {"name": "llama-3-1-8b"}},
}


@dataclass(frozen=True)
class Case:
    """A valid base manifest with ``changes`` applied; refused on ``field`` with ``why``."""

    id: str
    changes: dict[str, Any]
    field: str
    why: str
    kind: str = "EngineBuild"

    def manifest(self) -> dict[str, Any]:
        body = copy.deepcopy(EB_BASE if self.kind == "EngineBuild" else ED_BASE)
        for path, value in self.changes.items():
            set_path(body, path, value)
        return body


def ed(id_: str, changes: dict[str, Any], field_: str, why: str) -> Case:
    return Case(id_, changes, field_, why, kind="EngineDeployment")


CASES = [
    # the model
    Case("model-missing", {"spec.model": DELETE}, "spec.model", "Required value"),
    Case("source-missing", {"spec.model.source": DELETE}, "spec.model.source", "Required value"),
    Case("source-no-scheme", {"spec.model.source": "models/llama/"}, "spec.model.source",
         "must start with s3://, hf:// or pvc://"),
    Case("source-https", {"spec.model.source": "https://huggingface.co/org/name"},
         "spec.model.source", "must start with s3://, hf:// or pvc://"),
    Case("source-s3-no-trailing-slash", {"spec.model.source": "s3://models/llama"},
         "spec.model.source", "must look like s3://bucket/prefix/"),
    Case("source-s3-bad-bucket", {"spec.model.source": "s3://Models_1/llama/"},
         "spec.model.source", "must look like s3://bucket/prefix/"),
    Case("source-hf-no-name", {"spec.model.source": "hf://meta-llama"}, "spec.model.source",
         "must look like hf://org/name or hf://org/name@revision"),
    Case("source-hf-empty-revision", {"spec.model.source": "hf://org/name@"},
         "spec.model.source", "must look like hf://org/name or hf://org/name@revision"),
    Case("source-pvc-bad-claim", {"spec.model.source": "pvc://Weights_1/llama"},
         "spec.model.source", "must look like pvc://claim/path"),
    Case("source-dot-dot", {"spec.model.source": "pvc://weights/../secrets"},
         "spec.model.source", "must not contain '..' path segments"),
    Case("revision-on-s3", {"spec.model.revision": "v2"}, "spec.model.revision",
         "revision pins a pvc:// source"),
    Case("credentials-secret-bad-name", {"spec.model.credentialsSecret": "My_Secret"},
         "spec.model.credentialsSecret", "should match"),
    # targets
    Case("target-unknown-gpu", {"spec.targets.0.gpu": "H100"}, "spec.targets[0].gpu",
         'Unsupported value: "H100"'),
    Case("target-gpu-and-selector",
         {"spec.targets.0.nodeSelector": {"pool": "h100"},
          "spec.targets.0.computeCapability": "9.0"},
         "spec.targets[0]", "set either gpu, or nodeSelector with computeCapability, not both"),
    Case("target-selector-without-capability",
         {"spec.targets": [{"nodeSelector": {"pool": "h100"}}]}, "spec.targets[0]",
         "a target needs gpu, or nodeSelector together with computeCapability"),
    Case("target-empty", {"spec.targets": [{}]}, "spec.targets[0]",
         "a target needs gpu, or nodeSelector together with computeCapability"),
    Case("target-capability-format",
         {"spec.targets": [{"nodeSelector": {"pool": "x"}, "computeCapability": "9"}]},
         "spec.targets[0].computeCapability", "must be major.minor"),
    Case("target-capability-too-old",
         {"spec.targets": [{"nodeSelector": {"pool": "t4"}, "computeCapability": "7.5"}]},
         "spec.targets[0].computeCapability", "needs compute capability 8.0 (Ampere) or newer"),
    Case("target-duplicate-gpu", {"spec.targets": [{"gpu": "H100-SXM"}, {"gpu": "H100-SXM"}]},
         "spec.targets", "each gpu may be listed once"),
    Case("target-selector-bad-key",
         {"spec.targets": [{"nodeSelector": {"bad key!": "x"}, "computeCapability": "9.0"}]},
         "spec.targets[0].nodeSelector", "keys must be label keys"),
    Case("target-selector-bad-value",
         {"spec.targets": [{"nodeSelector": {"pool": "not ok!"}, "computeCapability": "9.0"}]},
         "spec.targets[0].nodeSelector.pool", "should match"),
    Case("too-many-targets", {"spec.targets": [{"gpu": "H100-SXM"}] * 17}, "spec.targets",
         "must have at most 16 items"),
    # build: enums and bounds
    Case("backend-unknown", {"spec.build.backend": "onnx"}, "spec.build.backend",
         'Unsupported value: "onnx"'),
    Case("dtype-unknown", {"spec.build.dtype": "int8"}, "spec.build.dtype",
         'Unsupported value: "int8"'),
    Case("algo-unknown", {"spec.build.quantization.algo": "fp4"}, "spec.build.quantization.algo",
         'Unsupported value: "fp4"'),
    Case("kv-cache-unknown", {"spec.build.quantization.kvCache": "int4"},
         "spec.build.quantization.kvCache", 'Unsupported value: "int4"'),
    Case("tensor-not-power-of-two", {"spec.build.parallelism": {"tensor": 3}},
         "spec.build.parallelism.tensor", "must be a power of two: 1, 2, 4 or 8"),
    Case("tensor-too-large", {"spec.build.parallelism": {"tensor": 16}},
         "spec.build.parallelism.tensor", "should be less than or equal to 8"),
    Case("pipeline-zero", {"spec.build.parallelism": {"pipeline": 0}},
         "spec.build.parallelism.pipeline", "should be greater than or equal to 1"),
    Case("tensor-times-pipeline", {"spec.build.parallelism": {"tensor": 4, "pipeline": 4}},
         "spec.build.parallelism", "tensor * pipeline must be at most 8"),
    Case("max-seq-below-input", {"spec.build.maxInputLen": 4096, "spec.build.maxSeqLen": 2048},
         "spec.build.maxSeqLen", "maxSeqLen must be at least maxInputLen"),
    Case("max-batch-zero", {"spec.build.maxBatchSize": 0}, "spec.build.maxBatchSize",
         "should be greater than or equal to 1"),
    Case("max-num-tokens-huge", {"spec.build.maxNumTokens": 2**21}, "spec.build.maxNumTokens",
         "should be less than or equal to 1048576"),
    # build: quantization vs the target GPUs (from the catalogue)
    Case("fp8-on-a100", {"spec.targets.0.gpu": "A100-80GB", "spec.build.quantization.algo": "fp8"},
         "spec.build.quantization.algo", "fp8/w4a8_awq with backend tensorrt needs FP8 math"),
    Case("w4a8-on-a10", {"spec.targets.0.gpu": "A10",
                         "spec.build.quantization.algo": "w4a8_awq"},
         "spec.build.quantization.algo", "cannot include A100-40GB, A100-80GB, A30, A10"),
    Case("fp8-on-cc86-selector",
         {"spec.targets": [{"nodeSelector": {"pool": "a40"}, "computeCapability": "8.6"}],
          "spec.build.quantization.algo": "w4a8_awq"},
         "spec.build.quantization.algo", "w4a8_awq with backend tensorrt needs FP8 math"),
    Case("nvfp4-on-h100", {"spec.build.quantization.algo": "nvfp4"},
         "spec.build.quantization.algo", "nvfp4 with backend tensorrt needs Blackwell"),
    Case("smoothquant-on-b200", {"spec.targets.0.gpu": "B200",
                                 "spec.build.quantization.algo": "int8_sq"},
         "spec.build.quantization.algo",
         "refused by trtllm-build on compute capability 10.0 to below 12.0 (SmoothQuant"),
    Case("int8-kv-on-b200", {"spec.targets.0.gpu": "B200",
                             "spec.build.quantization.kvCache": "int8"},
         "spec.build.quantization.kvCache",
         "refused by trtllm-build on compute capability 10.0 to below 12.0"),
    Case("int4-awq-on-b300", {"spec.targets.0.gpu": "B300",
                              "spec.build.quantization.algo": "int4_awq"},
         "spec.build.quantization.algo", "INT8/INT4 quantization is not supported on SM>=100."),
    Case("int8-wo-on-cc11-selector",
         {"spec.targets": [{"nodeSelector": {"pool": "thor"}, "computeCapability": "11.0"}],
          "spec.build.quantization.algo": "int8_wo"},
         "spec.build.quantization.algo", "a computeCapability that does not meet this"),
    Case("pytorch-weight-only", {"spec.build.backend": "pytorch",
                                 "spec.build.quantization.algo": "int8_wo"},
         "spec.build.quantization.algo", "not available in the PyTorch backend"),
    Case("pytorch-int8-kv", {"spec.build.backend": "pytorch",
                             "spec.build.quantization.kvCache": "int8"},
         "spec.build.quantization.kvCache", "not available in the PyTorch backend"),
    Case("pytorch-w4a8-on-b200", {"spec.targets.0.gpu": "B200", "spec.build.backend": "pytorch",
                                  "spec.build.quantization.algo": "w4a8_awq"},
         "spec.build.quantization.algo", "runs on Ada and Hopper only"),
    # build: plugins and extra args
    Case("gemm-fp8-without-fp8", {"spec.build.plugins": {"gemm": "fp8"}},
         "spec.build.plugins.gemm", "plugins.gemm fp8 needs quantization.algo fp8"),
    Case("fp8-context-fmha-without-fp8", {"spec.build.plugins": {"fp8ContextFmha": True}},
         "spec.build.plugins.fp8ContextFmha", "needs quantization.algo fp8, w4a8_awq or nvfp4"),
    Case("fp8-context-fmha-off-but-forced-on",
         {"spec.build.quantization": {"algo": "fp8", "kvCache": "fp8"},
          "spec.build.plugins": {"fp8ContextFmha": False}},
         "spec.build.plugins.fp8ContextFmha", "turns FP8 context FMHA back on"),
    Case("calibration-without-calibrating",
         {"spec.build.quantization.calibration": {"dataset": "s3://calib/cnn/"}},
         "spec.build.quantization.calibration", "only used when the build calibrates"),
    Case("calibration-with-pytorch",
         {"spec.build.backend": "pytorch",
          "spec.build.quantization": {"algo": "fp8",
                                      "calibration": {"dataset": "s3://calib/cnn/"}}},
         "spec.build.quantization.calibration",
         "quantization.calibration cannot be used with backend pytorch"),
    Case("fp8-context-fmha-on-without-fp8-kv",
         {"spec.build.quantization": {"algo": "fp8"},
          "spec.build.plugins": {"fp8ContextFmha": True}},
         "spec.build.plugins.fp8ContextFmha",
         "plugins.fp8ContextFmha true with pagedContextFmha needs quantization.kvCache fp8"),
    Case("gather-context-logits-with-draft-tokens",
         {"spec.build.extraArgs": ["--gather_context_logits", "--max_draft_len=4"]},
         "spec.build.extraArgs", "Gather context logits is not support with draft len > 0"),
    Case("calibration-bad-uri",
         {"spec.build.quantization": {"algo": "fp8", "calibration": {"dataset": "/data"}}},
         "spec.build.quantization.calibration.dataset", "must start with s3://, hf:// or pvc://"),
    Case("extra-arg-sm100-plugin", {"spec.targets.0.gpu": "GB200",
                                    "spec.build.extraArgs": ["--gemm_swiglu_plugin=fp8"]},
         "spec.build.extraArgs", "the targets cannot include B200, GB200"),
    Case("extra-arg-switch-with-value", {"spec.build.extraArgs": ["--fast_build=true"]},
         "spec.build.extraArgs[0]", "switches take no value (--fast_build"),
    Case("extra-arg-value-missing", {"spec.build.extraArgs": ["--max_beam_width"]},
         "spec.build.extraArgs[0]", "value not accepted by trtllm-build 1.2.x"),
    Case("extra-arg-bad-choice", {"spec.build.extraArgs": ["--log_level=loud"]},
         "spec.build.extraArgs[0]", "value not accepted by trtllm-build 1.2.x"),
    Case("extra-arg-removed-flag", {"spec.build.extraArgs": ["--strongly_typed"]},
         "spec.build.extraArgs[0]", "flag not allowed"),
    Case("paged-context-without-context-fmha", {"spec.build.plugins": {"contextFmha": False}},
         "spec.build.plugins.pagedContextFmha", "pagedContextFmha needs contextFmha"),
    # kiln.trtllm.runtime: what the in-flight batching runtime refuses at start
    Case("inflight-without-attention-plugin", {"spec.build.plugins": {"gptAttention": "disable"}},
         "spec.build.plugins.gptAttention", "TrtGptModelInflightBatching requires GPT attention"),
    Case("inflight-without-packed-input", {"spec.build.plugins": {"removeInputPadding": False}},
         "spec.build.plugins.removeInputPadding",
         "TrtGptModelInflightBatching requires GPT attention"),
    Case("inflight-without-paged-kv", {"spec.build.plugins": {"pagedKvCache": False,
                                                              "pagedContextFmha": False}},
         "spec.build.plugins.pagedKvCache", "TrtGptModelInflightBatching requires GPT attention"),
    Case("draft-external-without-paged-context-fmha",
         {"spec.build.plugins": {"pagedContextFmha": False},
          "spec.build.extraArgs": ["--speculative_decoding_mode=draft_tokens_external"]},
         "spec.build.plugins.pagedContextFmha",
         "KV cache block reuse must be enabled for speculative decoding target model"),
    Case("draft-external-with-int8-kv",
         {"spec.build.quantization.kvCache": "int8",
          "spec.build.extraArgs": ["--speculative_decoding_mode=draft_tokens_external"]},
         "spec.build.plugins.pagedContextFmha", "a kvCache other than int8"),
    Case("draft-external-with-fp8-kv-int8-sq",
         {"spec.build.quantization": {"algo": "int8_sq", "kvCache": "fp8"},
          "spec.build.extraArgs": ["--speculative_decoding_mode=draft_tokens_external"]},
         "spec.build.plugins.pagedContextFmha", "or fp8 only with algo fp8"),
    Case("extra-arg-output-dir", {"spec.build.extraArgs": ["--output_dir=elsewhere"]},
         "spec.build.extraArgs[0]", "flag not allowed; allowed: --bert_attention_plugin"),
    Case("extra-arg-checkpoint-dir", {"spec.build.extraArgs": ["--max_beam_width=2",
                                                               "--checkpoint_dir"]},
         "spec.build.extraArgs[1]", "flag not allowed"),
    Case("extra-arg-path-value", {"spec.build.extraArgs": ["--max_beam_width=/tmp/x"]},
         "spec.build.extraArgs[0]", "no paths"),
    Case("extra-arg-positional", {"spec.build.extraArgs": ["/models/other"]},
         "spec.build.extraArgs[0]", "must be --flag or --flag=value"),
    Case("extra-arg-field-kiln-sets", {"spec.build.extraArgs": ["--max_batch_size=8"]},
         "spec.build.extraArgs[0]", "flag not allowed"),
    Case("extra-args-with-pytorch", {"spec.build.backend": "pytorch",
                                     "spec.build.extraArgs": ["--max_beam_width=2"]},
         "spec.build.extraArgs", "backend pytorch takes none"),
    # toolchain, output, rebuild, job
    Case("toolchain-image-bad", {"spec.toolchain": {"image": "Not An Image"}},
         "spec.toolchain.image", "should match"),
    Case("store-hf", {"spec.output": {"store": "hf://org/engines"}}, "spec.output.store",
         "must start with s3:// or pvc://"),
    Case("store-s3-no-slash", {"spec.output": {"store": "s3://engines"}}, "spec.output.store",
         "must look like s3://bucket/prefix/"),
    Case("poll-interval-format", {"spec.rebuild": {"pollInterval": "1 hour"}},
         "spec.rebuild.pollInterval", "must be a duration such as 30m or 1h30m"),
    Case("poll-interval-days", {"spec.rebuild": {"pollInterval": "1d"}},
         "spec.rebuild.pollInterval", "must be a duration such as 30m or 1h30m"),
    Case("poll-interval-too-short", {"spec.rebuild": {"pollInterval": "10s"}},
         "spec.rebuild.pollInterval", "must be at least 1m"),
    Case("deadline-too-short", {"spec.job": {"activeDeadlineSeconds": 10}},
         "spec.job.activeDeadlineSeconds", "should be greater than or equal to 60"),
    Case("backoff-negative", {"spec.job": {"backoffLimit": -1}}, "spec.job.backoffLimit",
         "should be greater than or equal to 0"),
    Case("job-sets-gpus", {"spec.job": {"resources": {"limits": {"nvidia.com/gpu": 2}}}},
         "spec.job.resources.limits", "nvidia.com/gpu is set by kiln"),
    Case("job-bad-quantity", {"spec.job": {"resources": {"requests": {"memory": "lots"}}}},
         "spec.job.resources.requests.memory", "should match"),
    Case("toleration-exists-with-value",
         {"spec.job": {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}},
         "spec.job.tolerations[0].value", "value must be empty when operator is Exists"),
    Case("toleration-seconds-without-noexecute",
         {"spec.job": {"tolerations": [{"key": "a", "tolerationSeconds": 5}]}},
         "spec.job.tolerations[0].tolerationSeconds", "applies to effect NoExecute only"),
    Case("unknown-field", {"spec.build.maxSeqLength": 4096}, "spec.build.maxSeqLength",
         "unknown field"),
    Case("name-too-long", {"metadata.name": "x" * 64}, "metadata.name",
         "may not be more than 63"),
    # EngineDeployment
    ed("ed-ref-missing", {"spec.engineBuildRef": DELETE}, "spec.engineBuildRef",
       "Required value"),
    ed("ed-ref-bad-name", {"spec.engineBuildRef.name": "Llama_8B"}, "spec.engineBuildRef.name",
       "should match"),
    ed("ed-gpu-unknown", {"spec.gpu": "V100"}, "spec.gpu", 'Unsupported value: "V100"'),
    ed("ed-streaming-with-trtllm-serve", {"spec.server": {"streaming": False}},
       "spec.server.streaming", "streaming chooses Triton's transaction policy"),
    ed("ed-replicas-negative", {"spec.replicas": -1}, "spec.replicas",
       "should be greater than or equal to 0"),
    ed("ed-strategy-both-zero", {"spec.strategy": {"maxSurge": 0, "maxUnavailable": 0}},
       "spec.strategy", "maxSurge and maxUnavailable cannot both be 0"),
    ed("ed-strategy-both-zero-percent", {"spec.strategy": {"maxSurge": "0%"}},
       "spec.strategy", "maxSurge and maxUnavailable cannot both be 0"),
    ed("ed-strategy-bad-percent", {"spec.strategy": {"maxSurge": "150%"}},
       "spec.strategy.maxSurge", "should match"),
    ed("ed-strategy-negative", {"spec.strategy": {"maxUnavailable": -1}},
       "spec.strategy.maxUnavailable", "should be greater than or equal to 0"),
    ed("ed-fallback-unknown", {"spec.fallback": "latest"}, "spec.fallback",
       'Unsupported value: "latest"'),
    ed("ed-fallback-pytorch-with-triton",
       {"spec.fallback": "pytorch", "spec.server": {"kind": "triton"}}, "spec.fallback",
       "under server.kind triton"),
    ed("ed-server-kind-unknown", {"spec.server": {"kind": "vllm"}}, "spec.server.kind",
       'Unsupported value: "vllm"'),
    ed("ed-port-out-of-range", {"spec.server": {"port": 70000}}, "spec.server.port",
       "should be less than or equal to 65535"),
    ed("ed-server-arg-port", {"spec.server": {"args": ["--port=9000"]}}, "spec.server.args[0]",
       "kiln sets --host, --port, --backend, --tp_size, --pp_size"),
    ed("ed-server-arg-tp-alias", {"spec.server": {"args": ["--tensor_parallel_size=4"]}},
       "spec.server.args[0]", "--tensor_parallel_size"),
    ed("ed-runtime-fraction", {"spec.server": {"runtime": {"freeGpuMemoryFraction": 1.5}}},
       "spec.server.runtime.freeGpuMemoryFraction", "should be less than or equal to 1"),
    ed("ed-server-sets-gpus", {"spec.server": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
       "spec.server.resources.limits", "nvidia.com/gpu is set by kiln"),
    ed("ed-pool-bad-key", {"spec.pool": {"nodeSelector": {"-bad": "x"}}},
       "spec.pool.nodeSelector", "keys must be label keys"),
    ed("ed-name-not-dns-1035", {"metadata.name": "8b-llama"}, "metadata.name", "should match"),
    ed("ed-name-too-long", {"metadata.name": "l" * 41}, "metadata.name",
       "may not be more than 40"),
]


def test_the_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_bases_are_accepted(kube: Any, crd_namespace: str) -> None:
    for base in (EB_BASE, ED_BASE):
        assert create(kube, crd_namespace, copy.deepcopy(base))["metadata"]["name"] == "base"


def test_plugins_a_pytorch_build_ignores_are_not_refused(kube: Any,
                                                         crd_namespace: str) -> None:
    """The in-flight batching refusals are about compiled engines: the PyTorch backend
    ignores ``plugins`` (a shared base may carry them)."""
    body = copy.deepcopy(EB_BASE)
    body["metadata"]["name"] = "pytorch-plugins"
    body["spec"]["build"] = {"backend": "pytorch", "plugins": {
        "gptAttention": "disable", "removeInputPadding": False, "pagedKvCache": False,
        "pagedContextFmha": False}}
    assert create(kube, crd_namespace, body)["metadata"]["name"] == "pytorch-plugins"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_manifest_is_refused(kube: Any, crd_namespace: str, case: Case) -> None:
    errors = refusal(lambda: create(kube, crd_namespace, case.manifest()))
    assert any(case.field in e and case.why in e for e in errors), "\n".join(errors)


def test_explain_prints_the_field_descriptions(kube: Any, crd_namespace: str) -> None:
    deadline = time.monotonic() + 60
    while True:  # the OpenAPI document is published a moment after Established
        result = kube.kubectl("explain", "enginebuild.spec.build", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for name, info in BuildSpec.model_fields.items():
        assert info.alias in text, name
        assert " ".join(_text(info.description or "").split()) in text, name


def test_get_shows_columns_and_answers_to_short_names(kube: Any, crd_namespace: str) -> None:
    for base in (EB_BASE, ED_BASE):
        create(kube, crd_namespace, copy.deepcopy(base), dry_run=False)
    out = kube.kubectl("get", "eb", "-n", crd_namespace).stdout
    assert out.split("\n")[0].split() == ["NAME", "PHASE", "GPUS", "KEY", "READY", "AGE"]
    wide = kube.kubectl("get", "ed", "-n", crd_namespace, "-o", "wide").stdout.split("\n")[0]
    for column in ("BUILD", "GPU", "REPLICAS", "AVAILABLE", "KEY", "READY", "FALLBACK"):
        assert column in wide.split()
    both = kube.kubectl("get", "kiln", "-n", crd_namespace, "-o", "name").stdout.split()
    assert sorted(both) == [f"enginebuild.{GROUP}/base", f"enginedeployment.{GROUP}/base"]

    status = {"phase": "Ready", "gpus": "H100-SXM", "engineKeys": "3f2a9c1b7d0e",
              "conditions": [{"type": "Ready", "status": "True", "reason": "Built"}]}
    client.CustomObjectsApi(kube.api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, crd_namespace, "enginebuilds", "base", {"status": status})
    row = kube.kubectl("get", "eb", "base", "-n", crd_namespace, "--no-headers").stdout.split()
    assert row[:5] == ["base", "Ready", "H100-SXM", "3f2a9c1b7d0e", "True"]
