"""The engine key: one sha256 over everything that shapes an engine.

``key = sha256(canonical JSON of {schema, weights, origin, build, builderImage, gpuProduct,
computeCapability[, calibration][, warmup]})``, canonical JSON being ``json.dumps(sort_keys=True,
separators=(",", ":"))``. Normal form of ``build``: the ``BuildSpec`` validated again with every
default filled, dumped as JSON with camelCase names. So:

- mapping order never matters (fields, ``quantization``, ``parallelism``, ``plugins``): keys are
  sorted;
- a default written out or left out is the same intent, and the same key;
- ``extraArgs`` keep their order (trtllm-build lets a later flag override an earlier one), so
  reordering them gives another key;
- every other change of any input gives another key.

``weights`` is what the bytes are (the source's content identity); ``origin`` is where they
come from, as far as the EngineBuild's author controls it, and where they are built
(``kiln.sources.origin_of``, computed by the operator): the namespace the build Job runs in
(the EngineBuild's; empty only for a shared build in the platform's build namespace) and the
credentials Secret's name; for ``s3://`` the bucket, the prefix and the ``AWS_ENDPOINT_URL`` of
the credentials Secret if it names one; for ``hf://`` the repo and the Secret's
``HF_ENDPOINT``; for ``pvc://`` the claim and the path. Without it a tenant could have kiln
sign an engine under a key another tenant's EngineBuild computes: a PVC of the same name in
its own namespace, a hub or S3 endpoint of its own answering the same identity, or anything it
does to the build Job and pods of its own namespace. The platform's own endpoints (the
operator's and builders' environment) are not part of it.

The inputs are recorded in the engine's manifest. Bump ``KEY_SCHEMA_VERSION`` whenever the
inputs or their normal form change (every stored engine is then rebuilt); the golden keys in
``tests/unit/test_key.py`` fail until you do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kiln.api import BuildSpec
from kiln.contract.warmup import Warmup
from kiln.errors import InvalidInput

KEY_SCHEMA_VERSION = 6
COMPILED_KEY_SCHEMA_VERSION = 5
"""A compiled engine's (backend tensorrt) inputs are what schema 5 had: nothing of 6 shapes
it, so its keys, and the engines stored under them, stay."""
"""2: upstream plugin defaults (gemm, fp8ContextFmha unset), quantization.calibration.
3: ``origin``, where the weights come from (the namespace of a pvc:// source, the bucket and
prefix of an s3:// one, a tenant-given endpoint): the weights identity alone let a tenant
build an engine under another tenant's key.
4: the origin names the namespace the build runs in for every source, and the credentials
Secret: an engine built in a tenant's namespace is that namespace's alone (the tenant can
touch its Job, pods and Secrets).
5: ``calibration``, the identity and origin of the calibration data (not only its URI): a
dataset that changed, or another namespace's of the same name, gave the same key.
6 (backend pytorch): ``build.aot`` (``{"enabled": false}`` alone when disabled) and
``warmup``, the server run that makes the artifact set, options and command included."""


def key_inputs(*, weights_identity: str, origin: Mapping[str, str], build: BuildSpec,
               builder_image: str, gpu_product: str, compute_capability: str,
               calibration: Mapping[str, Any] | None = None,
               warmup: Warmup | None = None) -> dict[str, Any]:
    """The canonical inputs of a key (also recorded in the engine's manifest).
    ``calibration``: ``{identity, origin}`` of ``build.quantization.calibration``'s data, which
    a build that names one needs; ``warmup``: the run that makes a pytorch engine's artifact
    set."""
    named = {"weights_identity": weights_identity, "origin": origin,
             "builder_image": builder_image,
             "gpu_product": gpu_product, "compute_capability": compute_capability}
    empty = sorted(name for name, value in named.items() if not value)
    if empty:
        raise InvalidInput(f"an engine key needs every input; empty: {', '.join(empty)}")
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in origin.items()):
        raise InvalidInput(f"an engine key's origin maps names to non-empty strings: {origin!r}")
    normalized = BuildSpec.model_validate(build.model_dump(by_alias=True))
    calibrated = _calibration(build, calibration)
    spec = normalized.model_dump(mode="json", by_alias=True)
    inputs = calibrated | {
        "schema": KEY_SCHEMA_VERSION,
        "weights": weights_identity,
        "origin": dict(origin),
        "build": spec,
        "builderImage": builder_image,
        "gpuProduct": gpu_product,
        "computeCapability": compute_capability,
    }
    if normalized.backend != "pytorch":  # compiled: nothing warmed up, schema 5's inputs
        del spec["aot"]
        return inputs | {"schema": COMPILED_KEY_SCHEMA_VERSION}
    if not normalized.aot.enabled:
        spec["aot"] = {"enabled": False}
    elif normalized.aot.cuda_graph_batch_sizes is not None:  # a set: order, repeats no meaning
        spec["aot"]["cudaGraphBatchSizes"] = sorted(set(normalized.aot.cuda_graph_batch_sizes))
    return inputs | {"warmup": warmup.model_dump(
        mode="json", by_alias=True, exclude={"start_timeout_seconds"}) if warmup else None}


def _calibration(build: BuildSpec,
                 calibration: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"calibration": {identity, origin}}`` for a build that calibrates on data of its own;
    ``{}`` for one that does not."""
    if build.quantization.calibration is None:
        if calibration is not None:
            raise InvalidInput("calibration data given for a build that names none")
        return {}
    identity = (calibration or {}).get("identity")
    origin = (calibration or {}).get("origin")
    if not isinstance(identity, str) or not identity or not isinstance(origin, Mapping) \
            or not origin or not all(isinstance(k, str) and isinstance(v, str) and v
                                     for k, v in origin.items()):
        raise InvalidInput("an engine key of a build with calibration data needs the data's "
                           f"identity and origin; got {calibration!r}")
    return {"calibration": {"identity": identity, "origin": dict(origin)}}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_of(inputs: Mapping[str, Any]) -> str:
    """The key of ``key_inputs(...)`` (e.g. as read back from a manifest)."""
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


def engine_key(*, weights_identity: str, origin: Mapping[str, str], build: BuildSpec,
               builder_image: str, gpu_product: str, compute_capability: str,
               calibration: Mapping[str, Any] | None = None,
               warmup: Warmup | None = None) -> str:
    """The engine key (64 lowercase hex characters)."""
    return key_of(key_inputs(weights_identity=weights_identity, origin=origin, build=build,
                             builder_image=builder_image, gpu_product=gpu_product,
                             compute_capability=compute_capability, calibration=calibration,
                             warmup=warmup))


def short_key(key: str) -> str:
    """The first 12 characters, for names (Jobs are named after the key) and tables."""
    return key[:12]
