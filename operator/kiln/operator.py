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
    _signing_key_from_secret()
    import kopf

    import kiln.handlers  # noqa: F401 - importing registers the handlers
    from kiln import metrics
    from kiln.handlers.relists import relists

    relists.clusterwide = not namespaces

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    for noisy in ("kubernetes", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # "Handler ... succeeded" per handler and event: 3 lines per event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics.serve()  # KILN_METRICS_PORT (default 8081; 0: off)
    # Standalone for Kopf: kiln's own Lease (kiln.kube.lease) decides who reconciles, not Kopf's
    # peering, and Kopf itself writes nothing to the objects.
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0


def _signing_key_from_secret() -> None:
    """With ``KILN_SIGNING_SECRET`` (the chart's default) and no key file: the key from that
    Secret in the operator's namespace, which kiln creates once if it does not exist
    (``kiln.trust.secret``), before anything reads the settings."""
    name = os.environ.get("KILN_SIGNING_SECRET")
    if not name or os.environ.get("KILN_SIGNING_KEY_FILE"):
        return
    from kiln.config import OperatorConfig
    from kiln.kube.auth import Credentials
    from kiln.kube.client import Client, Kube
    from kiln.trust import secret

    config = OperatorConfig.from_env()
    namespace = config.namespace or config.lease_namespace
    # No fence: creating a Secret that does not exist replaces nothing, whoever leads.
    path = secret.provide(Kube(Client(Credentials())), namespace, name)
    os.environ["KILN_SIGNING_KEY_FILE"] = str(path)
