"""Rendering an EngineDeployment's children: pinned Deployments, the Service, the budget, and
the Triton model repository."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kiln.api import EngineBuild, EngineDeployment
from kiln.config import OperatorConfig
from kiln.engine_deployment import triton
from kiln.engine_deployment.deployments import observe
from kiln.engine_deployment.plan import Serve
from kiln.engine_deployment.render import (
    guard_command,
    llm_api_options,
    render_deployment,
    render_llm_api_config,
    render_pdb,
    render_service,
    spec_hash,
)

KEY = "d" * 64
H100 = "NVIDIA-H100-80GB-HBM3"
CONFIG = OperatorConfig(store_secret="engines-s3", serve_env={"AWS_ENDPOINT_URL": "http://s3"},
                        fetch_image="kiln:test", server_image="trtllm:1.2.1")


def ed(**spec: Any) -> EngineDeployment:
    return EngineDeployment.model_validate({
        "metadata": {"name": "llama", "namespace": "ns", "uid": "ed-uid", "generation": 1,
                     "labels": {"app.kubernetes.io/instance": "argo-app", "team": "x"}},
        "spec": {"engineBuildRef": {"name": "llama-eb"}, "gpu": "H100-SXM", "replicas": 3,
                 "pool": {"nodeSelector": {"pool": "serving"}}, **spec},
    })


def eb(tp: int = 2, pp: int = 1, **model: Any) -> EngineBuild:
    return EngineBuild.model_validate({
        "metadata": {"name": "llama-eb", "namespace": "ns", "uid": "eb-uid"},
        "spec": {"model": {"source": "s3://models/llama/", **model},
                 "build": {"parallelism": {"tensor": tp, "pipeline": pp},
                           "maxBatchSize": 64}},
    })


def engine_serve(mode: str = "engine") -> Serve:
    return Serve(product=H100, gpu="H100-SXM", compute_capability="9.0",
                 deployment="llama-h100-80gb-hbm3", mode=mode,  # type: ignore[arg-type]
                 backend="tensorrt", engine_key=KEY,
                 engine_uri=f"s3://engines/team/engines/{KEY}/")


def checkpoint_serve() -> Serve:
    return Serve(product=H100, gpu="H100-SXM", compute_capability="9.0",
                 deployment="llama-h100-80gb-hbm3", mode="fallback", backend="pytorch")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_engine_deployment_is_pinned_annotated_and_fetches_the_engine() -> None:
    dep = render_deployment(ed(), eb(), engine_serve(), CONFIG)
    meta, spec = dep["metadata"], dep["spec"]
    assert meta["name"] == "llama-h100-80gb-hbm3"
    assert meta["namespace"] == "ns"
    # kiln's labels only: never the owner's (Argo CD tracks by label).
    assert "app.kubernetes.io/instance" not in meta["labels"]
    assert "team" not in meta["labels"]
    assert meta["ownerReferences"][0]["uid"] == "ed-uid"
    assert meta["ownerReferences"][0]["controller"] is True
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "serving", "nvidia.com/gpu.product": H100}
    assert {"key": "nvidia.com/gpu", "operator": "Exists",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert spec["template"]["metadata"]["annotations"]["kiln.dev/engine-key"] == KEY
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    (fetch,) = pod["initContainers"]
    assert fetch["image"] == "kiln:test"
    assert fetch["command"] == ["kiln", "fetch-engine"]
    assert fetch["args"] == ["--store", "s3://engines/team/", "--key", KEY, "--dest", "/engine",
                             "--guard-dir", "/kiln"]
    env = env_of(fetch)
    assert env["KILN_GPU_COMPUTE_CAPABILITY"] == "9.0"
    assert env["AWS_ENDPOINT_URL"] == "http://s3"
    assert env["KILN_STORE_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "engines-s3"

    (server,) = pod["containers"]
    assert server["image"] == "trtllm:1.2.1"
    assert server["command"] == ["/bin/sh", "-c", f'set -e; {guard_command()}; exec "$@"', "--"]
    assert server["args"] == ["trtllm-serve", "/engine", "--host", "0.0.0.0", "--port", "8000",
                              "--backend", "tensorrt", "--tp_size", "2", "--pp_size", "1",
                              "--tokenizer", "/engine/tokenizer",
                              "--extra_llm_api_options", "/kiln-llm-api/tensorrt.yaml"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert fetch["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_serving_pods_take_the_read_only_store_credentials_when_set() -> None:
    """fetch-engine only reads the store: with KILN_SERVE_STORE_SECRET it gets those."""
    config = OperatorConfig(store_secret="engines-s3", serve_store_secret="engines-s3-read",
                            fetch_image="kiln:test", server_image="trtllm:1.2.1")
    dep = render_deployment(ed(), eb(), engine_serve(), config)
    (fetch,) = dep["spec"]["template"]["spec"]["initContainers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in fetch["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"engines-s3-read"}


def test_a_new_key_changes_only_the_template_and_the_hash() -> None:
    one = render_deployment(ed(), eb(), engine_serve(), CONFIG)
    other = Serve(**{**engine_serve().__dict__, "engine_key": "e" * 64,
                     "engine_uri": f"s3://engines/team/engines/{'e' * 64}/"})
    two = render_deployment(ed(), eb(), other, CONFIG)
    assert one["spec"]["selector"] == two["spec"]["selector"]
    assert one["metadata"]["annotations"] != two["metadata"]["annotations"]
    assert render_deployment(ed(), eb(), engine_serve(), CONFIG) == one  # deterministic
    assert observe(one).spec_hash == one["metadata"]["annotations"]["kiln.dev/spec-hash"]


def test_checkpoint_fallback_downloads_the_source_and_runs_pytorch() -> None:
    build = eb(credentialsSecret="models-s3")
    dep = render_deployment(ed(server={"args": ["--max_batch_size=8"]}), build,
                            checkpoint_serve(), CONFIG)
    pod = dep["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["args"] == ["--source", "s3://models/llama/", "--dest", "/engine",
                             "--guard-dir", "/kiln"]
    env = env_of(fetch)
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "models-s3"
    assert "KILN_STORE_AWS_ACCESS_KEY_ID" not in env
    args = pod["containers"][0]["args"]
    assert args[args.index("--backend") + 1] == "pytorch"
    assert args[-1] == "--max_batch_size=8"
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    assert notes["kiln.dev/serving-mode"] == "fallback"
    assert "kiln.dev/engine-key" not in notes


def test_pvc_store_is_mounted_read_only_where_the_store_looks() -> None:
    serve = Serve(**{**engine_serve().__dict__,
                     "engine_uri": f"pvc://engines/kiln/engines/{KEY}/"})
    pod = render_deployment(ed(), eb(), serve, CONFIG)["spec"]["template"]["spec"]
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "engines",
                                                       "readOnly": True}} in pod["volumes"]
    mounts = pod["initContainers"][0]["volumeMounts"]
    assert {"name": "pvc-0", "mountPath": "/mnt/kiln/pvc/engines", "readOnly": True} in mounts
    assert pod["initContainers"][0]["args"][:2] == ["--store", "pvc://engines/kiln/"]


def test_triton_gets_a_model_repository_and_its_ports() -> None:
    obj = ed(server={"kind": "triton", "image": "tritonserver:trtllm"})
    dep = render_deployment(obj, eb(tp=2), engine_serve(), CONFIG)
    pod = dep["spec"]["template"]["spec"]
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    assert fetch["args"][-2:] == ["--model-repo", "/model-repo"]
    files = json.loads(env_of(fetch)["KILN_MODEL_REPO_FILES"])
    assert set(files) >= {"ensemble/config.pbtxt", "preprocessing/config.pbtxt",
                          "tensorrt_llm/config.pbtxt", "postprocessing/config.pbtxt",
                          "tensorrt_llm/1/.keep"}
    trtllm = files["tensorrt_llm/config.pbtxt"]
    assert 'backend: "tensorrtllm"' in trtllm
    assert "max_batch_size: 64" in trtllm
    assert 'key: "gpt_model_path" value: { string_value: "/engine" }' in trtllm
    assert 'key: "tokenizer_dir" value: { string_value: "/engine/tokenizer" }' in \
        files["preprocessing/config.pbtxt"]
    assert server["image"] == "tritonserver:trtllm"
    assert server["args"][:2] == ["mpirun", "--allow-run-as-root"]
    assert server["args"].count("tritonserver") == 2
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert [p["containerPort"] for p in server["ports"]] == [8000, 8001, 8002]
    service = render_service(obj)
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "grpc", "metrics"]


def test_triton_serves_a_pytorch_engine_through_the_llm_api_model() -> None:
    """After 1.2.x the LLM-API model is Triton's only TensorRT-LLM model: kiln writes its
    arguments (the LLM options trtllm-serve's YAML would carry, and the triton_config its
    model.py indexes) where LLM_CONFIG_PATH points, copies the image's model directory whole,
    runs one tritonserver (the LLM API starts its workers), and places the artifact set as for
    trtllm-serve (the same runtime reads the same caches)."""
    build = EngineBuild.model_validate({**eb(tp=2).model_dump(by_alias=True), "spec": {
        **eb(tp=2).spec.model_dump(by_alias=True, exclude_none=True),
        "build": {"backend": "pytorch", "parallelism": {"tensor": 2, "pipeline": 1},
                  "maxBatchSize": 64, "maxNumTokens": 4096}}})
    serve = Serve(**{**engine_serve().__dict__, "backend": "pytorch"})
    obj = ed(server={"kind": "triton", "image": "tritonserver:trtllm",
                     "runtime": {"freeGpuMemoryFraction": 0.8}})
    pod = render_deployment(obj, build, serve, CONFIG)["spec"]["template"]["spec"]
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    files = json.loads(env_of(fetch)["KILN_MODEL_REPO_FILES"])
    assert set(files) == {"tensorrt_llm/1/kiln-model.yaml"}
    assert env_of(server)["LLM_CONFIG_PATH"] == "/model-repo/tensorrt_llm/1/kiln-model.yaml"
    config = yaml.safe_load(files["tensorrt_llm/1/kiln-model.yaml"])
    assert config["model"] == "/engine" and config["backend"] == "pytorch"
    assert (config["tensor_parallel_size"], config["pipeline_parallel_size"]) == (2, 1)
    assert config["triton_config"] == {"max_batch_size": 0, "decoupled": False}, \
        "the LLM-API model's own default: plain generate calls work"
    assert config["max_num_tokens"] == 4096
    assert config["kv_cache_config"]["free_gpu_memory_fraction"] == 0.8
    options = llm_api_options(obj, build, "pytorch")
    assert {k: v for k, v in config.items() if k in options} == options
    script = server["command"][2]
    assert 'cp -rL "$KILN_TRITON_LLMAPI/." /model-repo/tensorrt_llm/' in script
    assert "model_transaction_policy { decoupled: false }" in script
    assert env_of(server)["KILN_TRITON_LLMAPI"] == CONFIG.triton_llmapi_dir
    assert server["args"].count("tritonserver") == 1 and "mpirun" not in server["args"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-engine", "place-artifacts"]
    assert "TLLM_AUTOTUNER_CACHE_PATH" in env_of(server)
    streaming = ed(server={"kind": "triton", "streaming": True})
    pod = render_deployment(streaming, build, serve, CONFIG)["spec"]["template"]["spec"]
    assert "decoupled: true" in pod["containers"][0]["command"][2]


def test_the_llm_api_assembly_keeps_a_policy_the_image_already_sets(tmp_path: Path) -> None:
    """The copied config.pbtxt gets the transaction policy once: appended when the image's
    leaves it to model.yaml (upstream's comments it out), left alone when it sets one (a
    second would not parse); the copy runs again at every container start."""
    source, repo = tmp_path / "image", tmp_path / "repo"
    (source / "1").mkdir(parents=True)
    (source / "1" / "model.py").write_text("# upstream\n")
    (source / "1" / "helpers.py").write_text("# upstream\n")
    (repo / "tensorrt_llm" / "1").mkdir(parents=True)
    (repo / "tensorrt_llm" / "1" / "kiln-model.yaml").write_text("model: /engine\n")
    script = triton.llmapi_assembly(repo=str(repo), source=str(source), decoupled=True)
    for upstream in ('name: "tensorrt_llm"\n# model_transaction_policy {\n',
                     'name: "tensorrt_llm"\nmodel_transaction_policy { decoupled: false }\n'):
        (source / "config.pbtxt").write_text(upstream)
        for _ in range(2):
            subprocess.run(["/bin/sh", "-c", f"set -e; {script}"], check=True)
        config = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
        assert len(re.findall(r"^model_transaction_policy", config, re.M)) == 1
        assert (repo / "tensorrt_llm" / "1" / "helpers.py").exists()
        assert (repo / "tensorrt_llm" / "1" / "kiln-model.yaml").read_text() == \
            "model: /engine\n"


def test_triton_ensemble_wires_every_step_to_a_declared_tensor() -> None:
    files = triton.model_repository(engine_dir="/e", tokenizer_dir="/e", max_batch_size=8)
    ensemble = files["ensemble/config.pbtxt"]
    for model in ("preprocessing", "tensorrt_llm", "postprocessing"):
        config = files[f"{model}/config.pbtxt"]
        step = ensemble.split(f'model_name: "{model}"')[1].split("}\n  }")[0]
        for key in [line.split('key: "')[1].split('"')[0] for line in step.splitlines()
                    if "_map" in line]:
            assert f'name: "{key}"' in config, (model, key)
    assert triton.launch_command(repo="/r", world_size=1, http_port=1, grpc_port=2,
                                 metrics_port=3)[0] == "tritonserver"


def test_service_and_budget_select_every_product() -> None:
    service, pdb = render_service(ed()), render_pdb(ed())
    assert service["metadata"]["name"] == "llama"
    assert service["spec"]["selector"] == {"kiln.dev/engine-deployment": "llama"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http",
                                         "protocol": "TCP"}]
    assert pdb["spec"] == {"maxUnavailable": 1,
                           "selector": {"matchLabels": {"kiln.dev/engine-deployment": "llama"},
                                        "matchExpressions": [{"key": "kiln.dev/track",
                                                              "operator": "DoesNotExist"}]}}
    assert "team" not in service["metadata"]["labels"]
    assert spec_hash(service) == spec_hash(render_service(ed()))


def test_runtime_options_default_from_the_build_and_go_to_a_config_map() -> None:
    build = EngineBuild.model_validate({
        "metadata": {"name": "llama-eb", "namespace": "ns", "uid": "eb-uid"},
        "spec": {"model": {"source": "s3://models/llama/"},
                 "build": {"backend": "pytorch", "maxBatchSize": 32, "maxNumTokens": 4096,
                           "maxSeqLen": 8192, "quantization": {"kvCache": "fp8"}}}})
    plain = ed()
    shaping = {"attn_backend": "TRTLLM", "enable_autotuner": True}  # the artifact set's
    assert llm_api_options(plain, build, "pytorch") == {
        "max_batch_size": 32, "max_num_tokens": 4096, "max_seq_len": 8192,
        "kv_cache_config": {"dtype": "fp8"}, **shaping}
    assert llm_api_options(plain, build, "tensorrt") == {
        "max_batch_size": 32, "max_num_tokens": 4096, "max_seq_len": 8192}
    tuned = ed(server={"runtime": {"maxBatchSize": 8, "kvCacheDtype": "auto",
                                   "freeGpuMemoryFraction": 0.8, "enableChunkedPrefill": True,
                                   "enableBlockReuse": False}})
    assert llm_api_options(tuned, build, "pytorch") == {
        "max_batch_size": 8, "max_num_tokens": 4096, "max_seq_len": 8192,
        "enable_chunked_prefill": True, **shaping,
        "kv_cache_config": {"dtype": "auto", "free_gpu_memory_fraction": 0.8,
                            "enable_block_reuse": False}}
    config = render_llm_api_config(tuned, build)
    assert config["kind"] == "ConfigMap" and config["metadata"]["name"] == "llama-llm-api"
    assert set(config["data"]) == {"pytorch.yaml", "tensorrt.yaml"}
    one = render_deployment(plain, build, checkpoint_serve(), CONFIG)
    two = render_deployment(tuned, build, checkpoint_serve(), CONFIG)
    pod = one["spec"]["template"]["spec"]
    assert {"name": "llm-api", "configMap": {"name": "llama-llm-api"}} in pod["volumes"]
    assert pod["containers"][0]["args"][-2:] == ["--extra_llm_api_options",
                                                 "/kiln-llm-api/pytorch.yaml"]
    notes = [d["spec"]["template"]["metadata"]["annotations"]["kiln.dev/llm-api-options"]
             for d in (one, two)]
    assert notes[0] != notes[1], "other options roll the pods"


def test_the_version_guard_runs_before_the_server_in_both_kinds() -> None:
    for server in ({}, {"kind": "triton"}):
        dep = render_deployment(ed(server=server), eb(), engine_serve(), CONFIG)
        pod = dep["spec"]["template"]["spec"]
        command = pod["containers"][0]["command"]
        assert command[:2] == ["/bin/sh", "-c"]
        assert command[2].startswith(f"set -e; {guard_command()}; ")
        assert command[2].endswith('; exec "$@"')
        assert {"name": "kiln-guard", "mountPath": "/kiln"} in pod["initContainers"][0][
            "volumeMounts"]
    assert "--exit-code 9 --reason VersionMismatch --termination-log /dev/termination-log" \
        in guard_command()


def test_server_args_win_over_the_defaulted_options() -> None:
    """The YAML overrides trtllm-serve's flags: kiln leaves out what server.args set."""
    obj = ed(server={"args": ["--max_batch_size=8", "--kv_cache_free_gpu_memory_fraction",
                              "0.5"], "runtime": {"freeGpuMemoryFraction": 0.8}})
    assert llm_api_options(obj, eb(), "tensorrt") == {"max_num_tokens": 8192}


SERVE_MERGE = ("tensorrt_llm/llmapi/llm_args.py update_llm_args_with_extra_dict and "
               "tensorrt_llm/commands/serve.py get_llm_args (1.2 line)", '''
    kv_cache_config = KvCacheConfig(
        free_gpu_memory_fraction=free_gpu_memory_fraction)
    llm_args = {
        "kv_cache_config": kv_cache_config,
    }
    llm_args = llm_args | llm_args_dict
''')
"""Upstream text (excerpts, verbatim): the flag's fraction lives in the CLI-built
``kv_cache_config``; the YAML's mapping replaces it whole (a shallow ``|``)."""


def _trtllm_serve_merge(args: list[str], yaml_options: dict[str, Any]) -> dict[str, Any]:
    """What trtllm-serve ends with: the CLI-built arguments ``|`` the YAML (SERVE_MERGE)."""
    assert "llm_args = llm_args | llm_args_dict" in SERVE_MERGE[1]
    fraction = 0.9
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if name in ("--kv_cache_free_gpu_memory_fraction", "--free_gpu_memory_fraction"):
            fraction = float(value if eq else args[i + 1])
    cli = {"kv_cache_config": {"free_gpu_memory_fraction": fraction}}
    return cli | yaml_options


def test_a_fraction_given_on_the_command_line_survives_the_shallow_merge() -> None:
    """``--kv_cache_free_gpu_memory_fraction 0.5`` in server.args, the KV cache dtype (and
    block reuse) in the YAML: the YAML's kv_cache_config replaces the CLI's whole, so kiln
    writes the fraction into it."""
    build = EngineBuild.model_validate({
        "metadata": {"name": "llama-eb", "namespace": "ns", "uid": "eb-uid"},
        "spec": {"model": {"source": "s3://models/llama/"},
                 "build": {"backend": "pytorch", "quantization": {"kvCache": "fp8"}}}})
    for args in (["--kv_cache_free_gpu_memory_fraction", "0.5"],
                 ["--kv_cache_free_gpu_memory_fraction=0.5"]):
        obj = ed(server={"args": args, "runtime": {"freeGpuMemoryFraction": 0.8}})
        options = llm_api_options(obj, build, "pytorch")
        merged = _trtllm_serve_merge(args, options)
        assert merged["kv_cache_config"] == {"dtype": "fp8", "free_gpu_memory_fraction": 0.5}
        reuse = ed(server={"args": args, "runtime": {"enableBlockReuse": False}})
        merged = _trtllm_serve_merge(args, llm_api_options(reuse, eb(), "tensorrt"))
        assert merged["kv_cache_config"]["free_gpu_memory_fraction"] == 0.5


def test_triton_streaming_is_a_choice_decoupled_by_default() -> None:
    """``server.streaming`` (Triton): true (the default) makes the tensorrt_llm model decoupled,
    which streaming requests need (docs/model_config.md: decoupled_mode "Must be set to true for
    requests setting the stream tensor to true"); false serves plain infer/generate calls."""
    def trtllm_config(server: dict[str, Any]) -> str:
        dep = render_deployment(ed(server={"kind": "triton", **server}), eb(), engine_serve(),
                                CONFIG)
        fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
        return str(json.loads(env_of(fetch)["KILN_MODEL_REPO_FILES"])[
            "tensorrt_llm/config.pbtxt"])

    assert "model_transaction_policy { decoupled: true }" in trtllm_config({})
    assert "model_transaction_policy { decoupled: true }" in trtllm_config({"streaming": True})
    plain = trtllm_config({"streaming": False})
    assert "model_transaction_policy { decoupled: false }" in plain
    assert "decoupled: true" not in plain
