"""The engine key: one sha256 over everything that shapes an engine.

``key = sha256(canonical JSON of {schema, weights, build, builderImage, gpuProduct,
computeCapability})``. ``build`` is the validated BuildSpec with defaults filled, so equal
intent gives an equal key; ``extraArgs`` keep their order (later flags win in trtllm-build).
Bump ``KEY_SCHEMA_VERSION`` whenever the inputs or their normal form change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kiln.api import BuildSpec

KEY_SCHEMA_VERSION = 1


def key_inputs(*, weights_identity: str, build: BuildSpec, builder_image: str,
               gpu_product: str, compute_capability: str) -> dict[str, Any]:
    """The canonical inputs of a key (also recorded in the engine's manifest)."""
    normalized = BuildSpec.model_validate(build.model_dump(by_alias=True))
    return {
        "schema": KEY_SCHEMA_VERSION,
        "weights": weights_identity,
        "build": normalized.model_dump(mode="json", by_alias=True),
        "builderImage": builder_image,
        "gpuProduct": gpu_product,
        "computeCapability": compute_capability,
    }


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def engine_key(*, weights_identity: str, build: BuildSpec, builder_image: str,
               gpu_product: str, compute_capability: str) -> str:
    """The engine key (64 hex characters)."""
    inputs = key_inputs(weights_identity=weights_identity, build=build,
                        builder_image=builder_image, gpu_product=gpu_product,
                        compute_capability=compute_capability)
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


def short_key(key: str) -> str:
    """The first 12 characters, for names and tables."""
    return key[:12]
