"""kiln: a Kubernetes operator that owns the life of TensorRT-LLM engines."""

__version__ = "0.1.0"
GROUP = "kiln.dev"
VERSION = "v1alpha1"
EB_PLURAL = "enginebuilds"
ED_PLURAL = "enginedeployments"
