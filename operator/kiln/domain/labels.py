"""The labels and annotations kiln reads (GPU Feature Discovery's) and writes (its own)."""

from __future__ import annotations

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""GPU Feature Discovery: the node's GPU product, e.g. ``NVIDIA-H100-80GB-HBM3``."""
CC_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
CC_MINOR_LABEL = "nvidia.com/gpu.compute.minor"

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Kueue: the LocalQueue a Job joins (sigs.k8s.io/kueue pkg/controller/constants: QueueLabel)."""
WORKLOAD_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
"""Kueue: the WorkloadPriorityClass of a Job's Workload (``WorkloadPriorityClassLabel``)."""

KEY_LABEL = "kiln.dev/engine-key"
"""On build Jobs and pods: the first 63 characters of the engine key (see :func:`key_label`)."""
KEY_ANNOTATION = "kiln.dev/engine-key"
"""On build Jobs and serving pod templates: the whole engine key (a new key is a rollout)."""
TARGET_ANNOTATION = "kiln.dev/target"
"""On build Jobs: the target's name."""
ED_LABEL = "kiln.dev/engine-deployment"
"""On serving Deployments and pods: the EngineDeployment's name."""
SERVING_PRODUCT_LABEL = "kiln.dev/gpu-product"
"""On serving Deployments and pods: the ``nvidia.com/gpu.product`` they serve on."""
TRACK_LABEL = "kiln.dev/track"
"""On a canary's Deployment and pods: ``canary`` (a new engine key beside the current one)."""
URI_ANNOTATION = "kiln.dev/engine-uri"
UPLOAD_ANNOTATION = "kiln.dev/engine-upload"
"""On serving pod templates: which upload of the key the pods fetch; an engine built again
(it went missing, or was found damaged) has a new one, a rollout."""
MODE_ANNOTATION = "kiln.dev/serving-mode"
BACKEND_ANNOTATION = "kiln.dev/backend"
HASH_ANNOTATION = "kiln.dev/spec-hash"
TEMPLATE_ANNOTATION = "kiln.dev/template-hash"
"""On a serving pod template: the digest of the template (its pods tell which Deployment
revision made them, whatever their ReplicaSet's name)."""
LLM_API_ANNOTATION = "kiln.dev/llm-api-options"
"""Digest of the trtllm-serve LLM API options a serving pod was started with."""
"""On serving Deployments: a digest of what kiln rendered, to skip writes that change nothing."""


def managed_by(component: str) -> dict[str, str]:
    """kiln's labels on its children (never the owner's: Argo CD tracks by label)."""
    return {"app.kubernetes.io/managed-by": "kiln", "app.kubernetes.io/component": component}


def key_label(key: str) -> str:
    """An engine key as a label value (at most 63 characters)."""
    return key[:63]
