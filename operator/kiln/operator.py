"""``kiln run``: the operator process (Kopf underneath)."""

from __future__ import annotations

import logging
import os


def run(*, namespaces: list[str], liveness: str | None, verbose: bool,
        leader_elect: bool = False) -> int:
    """Run every kiln handler until SIGTERM; watch ``namespaces`` or the whole cluster. With
    ``leader_elect``, reconcile only while holding the Lease (replicas stand by)."""
    if leader_elect:
        os.environ["KILN_LEADER_ELECTION"] = "true"
    import kopf

    import kiln.handlers  # noqa: F401 - importing registers the handlers
    from kiln import metrics

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    for noisy in ("kubernetes", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics.serve()  # KILN_METRICS_PORT (default 8081; 0: off)
    # Standalone for Kopf: kiln's own Lease (kiln.leader) decides who reconciles, not Kopf's
    # peering, and Kopf itself writes nothing to the objects.
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0
