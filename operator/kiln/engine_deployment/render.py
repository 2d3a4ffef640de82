"""Render an EngineDeployment's children (pure: objects and decisions in, dicts out).

Per GPU product a Deployment pinned to that product, with a ``kiln fetch-engine`` init
container and ``trtllm-serve`` or Triton; one Service over all of them; a
PodDisruptionBudget. Children carry kiln's own labels only (never the owner's: Argo CD
tracks by label) and an owner reference.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from typing import Any

import yaml

from kiln.api import Backend, EngineBuild, EngineDeployment
from kiln.config import OperatorConfig
from kiln.contract import env as names
from kiln.contract import exitcodes, layout
from kiln.contract.manifest import TOKENIZER_SUBDIR
from kiln.contract.pvc import pvc_mounts
from kiln.contract.termination import DEFAULT_PATH as TERMINATION_LOG
from kiln.contract.warmup import PLACED_DIR
from kiln.domain import aot
from kiln.domain.labels import (
    BACKEND_ANNOTATION,
    ED_LABEL,
    GPU_PRODUCT_LABEL,
    HASH_ANNOTATION,
    KEY_ANNOTATION,
    LLM_API_ANNOTATION,
    MODE_ANNOTATION,
    SERVING_PRODUCT_LABEL,
    TEMPLATE_ANNOTATION,
    TRACK_LABEL,
    UPLOAD_ANNOTATION,
    URI_ANNOTATION,
    managed_by,
)
from kiln.domain.pods import PLACE_ARTIFACTS
from kiln.domain.podspec import (
    container_security,
    gpu_resources,
    gpu_tolerations,
    kiln_container_security,
    owner_reference,
    pod_security,
    secret_env,
    spec_hash,
)
from kiln.engine_deployment import triton
from kiln.engine_deployment.plan import Serve
from kiln.trtllm import triton as facts

ENGINE_DIR = "/engine"
TOKENIZER_DIR = f"{ENGINE_DIR}/{TOKENIZER_SUBDIR}"
"""The tokenizer of a tensorrt engine; a PyTorch-backend directory is the checkpoint itself."""
REPO_DIR = "/model-repo"
GUARD_DIR = "/kiln"
LLM_API_DIR = "/kiln-llm-api"
HEALTH = {"trtllm-serve": ("/health", "/health"),
          "triton": ("/v2/health/ready", "/v2/health/live")}
"""Readiness and liveness paths per server kind."""
MANAGED_BY = managed_by("server")
TRUSTED_KEYS_FILE = "trusted-keys.pem"
"""The trust ConfigMap's key: the public keys (PEM) fetch-engine verifies engines with."""


def selector(name: str, product: str | None = None) -> dict[str, str]:
    """Pods of an EngineDeployment, or of one of its products."""
    return {ED_LABEL: name, **({SERVING_PRODUCT_LABEL: product} if product else {})}


def _meta(ed: EngineDeployment, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ed.metadata["namespace"],
            "labels": {**MANAGED_BY, **labels},
            "ownerReferences": [owner_reference("EngineDeployment", ed.metadata["name"],
                                                ed.metadata["uid"], controller=True)]}


def _fetch(ed: EngineDeployment, eb: EngineBuild, serve: Serve, gpus: int,
           config: OperatorConfig, repo: dict[str, str] | None) -> tuple[dict[str, Any], str]:
    """The init container, and the URI whose PVC (if any) it needs."""
    env: list[dict[str, Any]] = [{"name": names.GPU_COMPUTE_CAPABILITY,
                                  "value": serve.compute_capability},
                                 *({"name": k, "value": v}
                                   for k, v in sorted(config.serve_env.items()))]
    if serve.engine_key and serve.engine_uri:
        uri = layout.store_of(serve.engine_uri, serve.engine_key)
        args = ["--store", uri, "--key", serve.engine_key, "--dest", ENGINE_DIR]
        if serve.engine_upload:  # the upload the operator verified: no other is fetched
            args += ["--upload", serve.engine_upload]
        env.append({"name": names.TRUSTED_KEYS, "valueFrom": {"configMapKeyRef": {
            "name": trust_name(ed), "key": TRUSTED_KEYS_FILE, "optional": True}}})
        if config.build_namespace:
            env.append({"name": names.BUILD_NAMESPACE, "value": config.build_namespace})
        if secret := config.serve_store_secret or config.store_secret:
            env += secret_env(secret, names.STORE_KEYS, names.STORE_PREFIX)
    else:
        uri = eb.spec.model.source
        args = ["--source", uri, "--dest", ENGINE_DIR]
        if eb.spec.model.revision:
            args += ["--revision", eb.spec.model.revision]
        if eb.spec.model.credentials_secret:
            env += secret_env(eb.spec.model.credentials_secret, names.CREDENTIAL_KEYS)
    mounts: list[dict[str, Any]] = [{"name": "engine", "mountPath": ENGINE_DIR},
                                    {"name": "kiln-guard", "mountPath": GUARD_DIR}]
    args += ["--guard-dir", GUARD_DIR]
    if repo is not None:
        args += ["--model-repo", REPO_DIR]
        env.append({"name": names.MODEL_REPO_FILES, "value": json.dumps(repo, sort_keys=True)})
        mounts.append({"name": "model-repo", "mountPath": REPO_DIR})
    mounts += pvc_mounts({uri: False})[0]
    return {
        "name": "fetch-engine",
        "image": config.fetch_image,
        "command": ["kiln", "fetch-engine"],
        "args": args,
        "env": env,
        # The GPUs, so that nvidia-smi sees them; the server container reuses them.
        "resources": gpu_resources(None, gpus),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # kiln's program: restricted whatever spec.server.securityContext gives the pod.
        "securityContext": kiln_container_security(),
    }, uri


def _probes(path: str, live: str) -> dict[str, Any]:
    def get(p: str) -> dict[str, Any]:
        return {"path": p, "port": "http"}

    return {
        "startupProbe": {"httpGet": get(path), "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {"httpGet": get(path), "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get(live), "periodSeconds": 30, "failureThreshold": 5,
                          "timeoutSeconds": 10},
    }


def guard_command() -> str:
    """The shell line that runs the version guard (its names from kiln.contract)."""
    return shlex.join(["python3", f"{GUARD_DIR}/version_guard.py", ENGINE_DIR,
                       "--exit-code", str(exitcodes.VERSION_MISMATCH),
                       "--reason", exitcodes.BY_CODE[exitcodes.VERSION_MISMATCH].reason,
                       "--termination-log", TERMINATION_LOG])


def _guarded(prefix: str = "") -> list[str]:
    """``sh -c``: the version guard, then ``prefix``, then ``exec "$@"`` (the server)."""
    steps = "; ".join(["set -e", guard_command(), *([prefix] if prefix else [])])
    return ["/bin/sh", "-c", f'{steps}; exec "$@"', "--"]


_CLI_OF = {"max_batch_size": ("max_batch_size",), "max_num_tokens": ("max_num_tokens",),
           "max_seq_len": ("max_seq_len",), "enable_chunked_prefill": ("enable_chunked_prefill",),
           "free_gpu_memory_fraction": ("free_gpu_memory_fraction",
                                        "kv_cache_free_gpu_memory_fraction")}
"""Options ``server.args`` may also set as trtllm-serve flags; the YAML would override those
(``update_llm_args_with_extra_dict``), so kiln leaves them out when the args have them."""


def _arg_value(args: list[str], names: tuple[str, ...]) -> str | None:
    """The last value ``args`` give any of ``names`` (``--name=v`` or ``--name v``)."""
    found = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name[2:] in names and name.startswith("--"):
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def llm_api_options(ed: EngineDeployment, eb: EngineBuild, backend: Backend) -> dict[str, Any]:
    """The ``--extra_llm_api_options`` YAML's content (keys of ``kiln.trtllm.llm_api``)."""
    r, build = ed.spec.server.runtime, eb.spec.build
    given = {a[2:].partition("=")[0] for a in ed.spec.server.args if a.startswith("--")}

    def free(option: str) -> bool:
        return not given.intersection(_CLI_OF.get(option, ()))

    options: dict[str, Any] = {}
    for option, value in (("max_batch_size", r.max_batch_size or build.max_batch_size),
                          ("max_num_tokens", r.max_num_tokens or build.max_num_tokens),
                          ("max_seq_len", r.max_seq_len or build.max_seq_len),
                          ("enable_chunked_prefill", r.enable_chunked_prefill)):
        if value is not None and free(option):
            options[option] = value
    kv: dict[str, Any] = {}
    dtype = r.kv_cache_dtype or ("fp8" if build.quantization.kv_cache == "fp8" else None)
    if dtype and backend == "pytorch":
        kv["dtype"] = dtype
    if r.free_gpu_memory_fraction is not None and free("free_gpu_memory_fraction"):
        kv["free_gpu_memory_fraction"] = r.free_gpu_memory_fraction
    if r.enable_block_reuse is not None:
        kv["enable_block_reuse"] = r.enable_block_reuse
    given_fraction = _arg_value(ed.spec.server.args, _CLI_OF["free_gpu_memory_fraction"])
    if kv and given_fraction is not None:
        # trtllm-serve merges the YAML shallowly (llm_args | yaml): this kv_cache_config
        # replaces the one its flag built, so the flag's fraction is carried into it.
        with contextlib.suppress(ValueError):  # else trtllm-serve's flag parsing refuses it
            kv["free_gpu_memory_fraction"] = float(given_fraction)
    if kv:
        options["kv_cache_config"] = kv
    if backend == "pytorch" and build.backend == "pytorch" and build.aot.enabled:
        # the kernel-shaping options the artifact set was made with; the spec's own win (and
        # then the set is not placed: kiln.domain.aot.mismatched)
        shaping = {k: v for k, v in aot.shaping_options(build).items() if free(k)}
        options = {**shaping, **options,
                   **({"kv_cache_config": {**shaping["kv_cache_config"], **kv}}
                      if "kv_cache_config" in shaping else {})}
    return options


def artifacts_placed(ed: EngineDeployment, eb: EngineBuild, serve: Serve,
                     config: OperatorConfig) -> bool:
    """Whether this product's pods check and place the engine's artifact set: a ``pytorch``
    engine made with one, served with the options it was made for (by trtllm-serve or by
    Triton's LLM-API model: the same runtime, the same caches)."""
    build = eb.spec.build
    return (serve.engine_key is not None and serve.backend == "pytorch"
            and aot.warmup_for(build, config.warmup_runtime) is not None
            and not aot.mismatched(ed.spec.server, build))


def _place(image: str, gpus: int) -> dict[str, Any]:
    """The init container that checks the artifact set against this node's GPU and driver and
    this server image's versions, and places it only when they match (in the server image:
    the versions are the image's; kiln.contract.version_guard)."""
    return {
        "name": PLACE_ARTIFACTS,
        "image": image,
        "command": ["python3", f"{GUARD_DIR}/version_guard.py", ENGINE_DIR,
                    "--place-artifacts", PLACED_DIR, "--nvidia-smi-from", names.NVIDIA_SMI,
                    "--termination-log", TERMINATION_LOG,
                    "--termination-log-from", names.TERMINATION_LOG],
        "resources": gpu_resources(None, gpus),
        "volumeMounts": [{"name": "engine", "mountPath": ENGINE_DIR, "readOnly": True},
                         {"name": "kiln-guard", "mountPath": GUARD_DIR, "readOnly": True},
                         {"name": "kiln-artifacts", "mountPath": PLACED_DIR}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": kiln_container_security(),
    }


def artifact_env(eb: EngineBuild, config: OperatorConfig) -> list[dict[str, Any]]:
    """The server's cache variables, pointing at the placed set (empty when it was not
    placed: the runtime then tunes and compiles as it would without kiln)."""
    runtime = config.warmup_runtime
    if runtime is None:
        return []
    env = {c.name: f"{PLACED_DIR}/{c.path}" for c in runtime.cache}
    if runtime.cache_root_env:
        env[runtime.cache_root_env] = PLACED_DIR
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def llm_api_name(ed: EngineDeployment) -> str:
    return f"{ed.metadata['name']}-llm-api"


def render_llm_api_config(ed: EngineDeployment, eb: EngineBuild) -> dict[str, Any]:
    """The ConfigMap with one ``<backend>.yaml`` per backend (the Deployment picks its own)."""
    data = {f"{b}.yaml": yaml.safe_dump(llm_api_options(ed, eb, b), sort_keys=True)
            for b in ("pytorch", "tensorrt")}
    name = str(ed.metadata["name"])
    return _hashed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": _meta(ed, llm_api_name(ed), selector(name)), "data": data})


def _trtllm_serve(ed: EngineDeployment, eb: EngineBuild, serve: Serve) -> dict[str, Any]:
    p = eb.spec.build.parallelism
    engine = serve.backend == "tensorrt"
    return {
        "command": _guarded(),
        "args": ["trtllm-serve", ENGINE_DIR, "--host", "0.0.0.0",
                 "--port", str(ed.spec.server.port), "--backend", serve.backend,
                 "--tp_size", str(p.tensor), "--pp_size", str(p.pipeline),
                 "--tokenizer", TOKENIZER_DIR if engine else ENGINE_DIR,
                 "--extra_llm_api_options", f"{LLM_API_DIR}/{serve.backend}.yaml",
                 *ed.spec.server.args],
        "ports": [{"name": "http", "containerPort": ed.spec.server.port}],
    }


def _triton(ed: EngineDeployment, eb: EngineBuild, serve: Serve,
            config: OperatorConfig) -> dict[str, Any]:
    port = ed.spec.server.port
    p = eb.spec.build.parallelism
    env: list[dict[str, Any]]
    if serve.backend == "pytorch":  # the LLM-API model starts its own workers
        world_size = facts.LLMAPI_WORLD_SIZE
        copy = triton.llmapi_assembly(repo=REPO_DIR, source="$KILN_TRITON_LLMAPI",
                                      decoupled=decoupled(ed, serve))
        env = [{"name": "KILN_TRITON_LLMAPI", "value": config.triton_llmapi_dir},
               {"name": facts.LLMAPI_CONFIG_ENV, "value": triton.llmapi_config_path(REPO_DIR)}]
    else:
        world_size = p.tensor * p.pipeline
        copy = " && ".join(f'cp "$KILN_TRITON_MODELS/{m}/1/model.py" {REPO_DIR}/{m}/1/'
                           for m in triton.PYTHON_MODELS)
        env = [{"name": "KILN_TRITON_MODELS", "value": config.triton_models_dir}]
    launch = triton.launch_command(repo=REPO_DIR, world_size=world_size,
                                   http_port=port, grpc_port=port + 1, metrics_port=port + 2)
    return {
        "command": _guarded(copy),
        "args": [*launch, *ed.spec.server.args],
        "env": env,
        "ports": [{"name": "http", "containerPort": port},
                  {"name": "grpc", "containerPort": port + 1},
                  {"name": "metrics", "containerPort": port + 2}],
    }


def decoupled(ed: EngineDeployment, serve: Serve) -> bool:
    """Triton's transaction policy: ``server.streaming``, else each model's default."""
    if ed.spec.server.streaming is not None:
        return ed.spec.server.streaming
    return facts.LLMAPI_DECOUPLED_DEFAULT if serve.backend == "pytorch" else True


def triton_repository(ed: EngineDeployment, eb: EngineBuild, serve: Serve) -> dict[str, str]:
    """The files kiln writes into the model repository: the LLM-API model's arguments for a
    ``pytorch`` engine, the inflight-batcher configs for ``tensorrt``."""
    if serve.backend == "pytorch":
        p = eb.spec.build.parallelism
        return triton.llmapi_repository(model_dir=ENGINE_DIR, tensor=p.tensor,
                                        pipeline=p.pipeline,
                                        options=llm_api_options(ed, eb, "pytorch"),
                                        decoupled=decoupled(ed, serve))
    return triton.model_repository(engine_dir=ENGINE_DIR, tokenizer_dir=TOKENIZER_DIR,
                                   max_batch_size=eb.spec.build.max_batch_size,
                                   decoupled=decoupled(ed, serve))


def render_deployment(ed: EngineDeployment, eb: EngineBuild, serve: Serve,
                      config: OperatorConfig) -> dict[str, Any]:
    """The Deployment serving ``serve`` on its GPU product; annotated with its spec hash."""
    name = str(ed.metadata["name"])
    spec, p = ed.spec, eb.spec.build.parallelism
    gpus = p.tensor * p.pipeline
    is_triton = spec.server.kind == "triton"
    repo = triton_repository(ed, eb, serve) if is_triton else None
    fetch, fetched_from = _fetch(ed, eb, serve, gpus, config, repo)
    placed = artifacts_placed(ed, eb, serve, config)
    overrides = (spec.server.security_context.to_dict() if spec.server.security_context
                 else None)
    image = spec.server.image or (config.triton_image if is_triton else config.server_image)
    server: dict[str, Any] = {
        "name": "server",
        "image": image,
        **(_triton(ed, eb, serve, config) if is_triton else _trtllm_serve(ed, eb, serve)),
        **_probes(*HEALTH[spec.server.kind]),
        "resources": gpu_resources(spec.server.resources.to_dict()
                                   if spec.server.resources else None, gpus),
        "securityContext": container_security(overrides),
        "volumeMounts": [{"name": "engine", "mountPath": ENGINE_DIR, "readOnly": True},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         {"name": "kiln-guard", "mountPath": GUARD_DIR, "readOnly": True},
                         *([{"name": "model-repo", "mountPath": REPO_DIR}] if repo else []),
                         *([] if is_triton else
                           [{"name": "llm-api", "mountPath": LLM_API_DIR, "readOnly": True}])],
    }
    if placed:
        server["env"] = [*server.get("env", []), *artifact_env(eb, config)]
        server["volumeMounts"].append({"name": "kiln-artifacts", "mountPath": PLACED_DIR})
    volumes: list[dict[str, Any]] = [{"name": "engine", "emptyDir": {}},
                                     {"name": "shm", "emptyDir": {"medium": "Memory"}},
                                     {"name": "kiln-guard", "emptyDir": {}}]
    if not is_triton:
        volumes.append({"name": "llm-api", "configMap": {"name": llm_api_name(ed)}})
    if repo is not None:
        volumes.append({"name": "model-repo", "emptyDir": {}})
    if placed:
        volumes.append({"name": "kiln-artifacts", "emptyDir": {}})
    volumes += pvc_mounts({fetched_from: False})[1]
    labels = selector(name, serve.product)
    notes: dict[str, str] = {MODE_ANNOTATION: serve.mode, BACKEND_ANNOTATION: serve.backend}
    if not is_triton:  # a changed YAML rolls the pods (a mounted ConfigMap is not re-read)
        notes[LLM_API_ANNOTATION] = spec_hash(llm_api_options(ed, eb, serve.backend))
    if serve.engine_key and serve.engine_uri:
        notes |= {KEY_ANNOTATION: serve.engine_key, URI_ANNOTATION: serve.engine_uri}
    if serve.engine_upload:
        notes[UPLOAD_ANNOTATION] = serve.engine_upload
    strategy = spec.strategy
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ed, serve.deployment, labels),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": strategy.max_surge, "maxUnavailable": strategy.max_unavailable}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 3600,
            "template": {
                "metadata": {"labels": {**config.serving_pod_labels, **MANAGED_BY, **labels},
                             "annotations": notes},
                "spec": {
                    "nodeSelector": {**(spec.pool.node_selector or {}),
                                     GPU_PRODUCT_LABEL: serve.product},
                    "tolerations": gpu_tolerations(),
                    "initContainers": [fetch, *([_place(str(image), gpus)] if placed else [])],
                    "containers": [server],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 60,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(overrides),
                },
            },
        },
    }
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"][TEMPLATE_ANNOTATION] = spec_hash(template)
    return _hashed(deployment)


def render_service(ed: EngineDeployment) -> dict[str, Any]:
    """One Service over every product's pods."""
    name = str(ed.metadata["name"])
    port = ed.spec.server.port
    ports = [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]
    if ed.spec.server.kind == "triton":
        ports += [{"name": "grpc", "port": port + 1, "targetPort": "grpc", "protocol": "TCP"},
                  {"name": "metrics", "port": port + 2, "targetPort": "metrics",
                   "protocol": "TCP"}]
    return _hashed({"apiVersion": "v1", "kind": "Service",
                    "metadata": _meta(ed, name, selector(name)),
                    "spec": {"type": "ClusterIP", "selector": selector(name), "ports": ports}})


def render_pdb(ed: EngineDeployment) -> dict[str, Any]:
    """Voluntary disruptions (drains) take one serving pod at a time (of the products' own
    Deployments: a canary's pods are not counted, nor budgeted)."""
    name = str(ed.metadata["name"])
    return _hashed({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": _meta(ed, name, selector(name)),
                    "spec": {"maxUnavailable": 1, "selector": {
                        "matchLabels": selector(name),
                        "matchExpressions": [{"key": TRACK_LABEL, "operator": "DoesNotExist"}],
                    }}})


def _hashed(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` annotated with the digest of what kiln rendered (read back to skip writes)."""
    obj["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(obj)}
    return obj


def trust_name(ed: EngineDeployment) -> str:
    """The ConfigMap of public keys the serving pods verify engines with."""
    return f"{ed.metadata['name']}-kiln-trust"


def render_trust(ed: EngineDeployment, bundle: str) -> dict[str, Any]:
    """That ConfigMap: the operator's trusted public keys (a PEM bundle)."""
    return _hashed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": _meta(ed, trust_name(ed), selector(str(ed.metadata["name"]))),
                    "data": {TRUSTED_KEYS_FILE: bundle}})
