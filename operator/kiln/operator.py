"""``kiln run``: the operator process (Kopf underneath)."""

from __future__ import annotations

import logging
import sys


def run(*, namespaces: list[str], liveness: str | None, verbose: bool) -> int:
    """Run every kiln handler until SIGTERM; watch ``namespaces`` or the whole cluster."""
    # Kopf imports the ``kubernetes`` client when it is installed, only to recognise its
    # models in what handlers return; kiln returns dicts and talks through ``kiln.kubeapi``.
    # Not importing it saves ~40 MiB (Kopf then logs in by itself, as without it).
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf

    import kiln.handlers  # noqa: F401 - importing registers the handlers
    from kiln import metrics

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    for noisy in ("kubernetes", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics.serve()  # KILN_METRICS_PORT (default 8081; 0: off)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0
