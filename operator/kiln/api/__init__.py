"""kiln's API (``kiln.dev/v1alpha1``): pydantic models, the single source of the CRDs.

Dump a model for Kubernetes with ``model.to_dict()`` (camelCase, unset fields left out);
parse one with ``EngineBuild.model_validate(obj)``.
"""

from __future__ import annotations

from kiln.api.common import (
    API_VERSION,
    Condition,
    ConditionStatus,
    KilnModel,
    Resources,
    SecurityContext,
    parse_duration,
)
from kiln.api.engine_build import (
    EXTRA_ARGS,
    EXTRA_ARGS_ALLOWED,
    MAX_GPUS_PER_BUILD,
    Backend,
    BuildPhase,
    BuildSpec,
    Calibration,
    Dtype,
    EngineBuild,
    EngineBuildSpec,
    EngineBuildStatus,
    EngineState,
    EngineStatus,
    JobSpec,
    KvCacheQuant,
    ModelSpec,
    Output,
    Parallelism,
    Plugins,
    QuantAlgo,
    Quantization,
    Rebuild,
    Target,
    Toleration,
    Toolchain,
    Weights,
)
from kiln.api.engine_deployment import (
    AUTO_GPU,
    EngineBuildRef,
    EngineDeployment,
    EngineDeploymentSpec,
    EngineDeploymentStatus,
    Fallback,
    Pool,
    ProductStatus,
    Runtime,
    Server,
    ServerKind,
    ServingMode,
    Strategy,
)

__all__ = [
    "API_VERSION", "AUTO_GPU", "EXTRA_ARGS", "EXTRA_ARGS_ALLOWED", "MAX_GPUS_PER_BUILD",
    "Backend", "BuildPhase", "BuildSpec", "Calibration", "Condition", "ConditionStatus",
    "Dtype", "EngineBuild", "EngineBuildRef", "EngineBuildSpec", "EngineBuildStatus",
    "EngineDeployment", "EngineDeploymentSpec", "EngineDeploymentStatus", "EngineState",
    "EngineStatus", "Fallback", "JobSpec", "KilnModel", "KvCacheQuant", "ModelSpec", "Output",
    "Parallelism", "Plugins", "Pool", "ProductStatus", "QuantAlgo", "Quantization", "Rebuild",
    "Resources", "Runtime", "SecurityContext", "Server", "ServerKind", "ServingMode",
    "Strategy", "Target", "Toleration", "Toolchain", "Weights",
    "parse_duration",
]
