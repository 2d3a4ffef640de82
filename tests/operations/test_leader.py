"""Two replicas, one Lease: exactly one reconciles; SIGKILL the leader during 50 builds and the
standby leads within 30 s (one Job per key, all Ready); a leader stopped with SIGSTOP past its
Lease writes nothing after it resumes, until it wins the Lease again.

Who wrote what comes from the apiserver's audit log: each replica runs as a ServiceAccount of
its own (bound to the release's roles), so every write it makes counts, whoever in the
process (kiln, Kopf, the client) made it and whatever its User-Agent. The Lease is short here
(4 s; renew deadline 3 s, retry 1 s) through the same settings the chart sets.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.support import Operator
from faults.support import TARGETS, all_ready, check_built_once_each, create, engine_build
from kiln.dev.testbed.cluster import Cluster, free_port
from kiln.dev.testbed.localproc import LocalProcessRunner
from operations.conftest import operator_env
from operations.support import ENGINES, OPERATOR_NAMESPACE, error_lines
from waiting import eventually

BUILDS = 50
LEASE = {"KILN_LEASE_DURATION_SECONDS": "4", "KILN_LEASE_RENEW_DEADLINE_SECONDS": "3",
         "KILN_LEASE_RETRY_SECONDS": "1"}


def holder(kube: Cluster, lease: str) -> str | None:
    try:
        found = client.CoordinationV1Api(kube.api_client).read_namespaced_lease(
            lease, OPERATOR_NAMESPACE)
    except client.ApiException:
        return None
    return found.spec.holder_identity or None


def own_account(kube: Cluster, release: str, replica: str) -> Path:
    """A ServiceAccount for one replica, bound wherever the release's account is; a
    kubeconfig acting as it."""
    account = f"{release}-{replica}"
    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    subject = {"kind": "ServiceAccount", "name": account, "namespace": OPERATOR_NAMESPACE}

    def extend(binding: Any) -> dict[str, Any] | None:
        names = [(s.kind, s.name, s.namespace) for s in binding.subjects or []]
        if ("ServiceAccount", release, OPERATOR_NAMESPACE) not in names:
            return None
        return {"subjects": [*(kube.api_client.sanitize_for_serialization(s)
                               for s in binding.subjects), subject]}

    for binding in rbac.list_cluster_role_binding().items:
        if (patch := extend(binding)) is not None:
            rbac.patch_cluster_role_binding(binding.metadata.name, patch)
    for binding in rbac.list_role_binding_for_all_namespaces().items:
        if (patch := extend(binding)) is not None:
            rbac.patch_namespaced_role_binding(binding.metadata.name,
                                               binding.metadata.namespace, patch)
    return kube.kubeconfig_for_service_account(OPERATOR_NAMESPACE, account)


def writes_by(kube: Cluster, account: str, since: float) -> list[str]:
    """Every write the ServiceAccount ``account`` made since ``since`` (epoch seconds), but
    to the Lease."""
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"
    found = []
    for event in kube.audit_events():
        if (event.get("user") or {}).get("username") != user:
            continue
        when = event["requestReceivedTimestamp"].replace("Z", "+00:00")
        from datetime import datetime

        if datetime.fromisoformat(when).timestamp() < since:
            continue
        ref = event.get("objectRef") or {}
        if ref.get("resource") != "leases":
            found.append(f"{event['verb']} {ref.get('resource')} {ref.get('name')}")
    return found


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:  # not listening yet
        return 0, {}


@pytest.mark.timeout(420)
def test_a_hot_standby_takes_over_and_a_stale_leader_never_acts(
        kube: Cluster, release: tuple[Path, str], namespace: str, weights: str,
        builders: LocalProcessRunner, s3_client: Any, s3_endpoint: str,
        tmp_path: Path) -> None:
    lease = release[1]
    ports = {"a": free_port(), "b": free_port()}
    accounts = {name: own_account(kube, lease, name) for name in ("a", "b")}
    replicas = {
        name: Operator(kube, operator_env(
            accounts[name], s3_endpoint, f"s3://{ENGINES}/", POD_NAME=f"replica-{name}",
            KILN_METRICS_PORT=str(free_port()),
            KILN_LEASE_NAME=lease, KILN_LEASE_NAMESPACE=OPERATOR_NAMESPACE, **LEASE),
            tmp_path / f"kiln-{name}.log",
            args=["-n", namespace, "--leader-elect",
                  f"--liveness=http://127.0.0.1:{ports[name]}/healthz"])
        for name in ("a", "b")}
    try:
        for replica in replicas.values():
            replica.start()
        first = eventually(lambda: holder(kube, lease), timeout=30)
        leader = first.split("_")[0].removeprefix("replica-")
        standby = "b" if leader == "a" else "a"
        assert eventually(lambda: health(ports[leader])[1].get("reconciling", {}).get("leading"),
                          timeout=30)
        status, answer = eventually(lambda: (h := health(ports[standby]))[0] and h, timeout=30)
        assert status == 200 and answer["reconciling"]["leading"] is False, answer

        # 50 builds; the leader is SIGKILLed a third of the way in.
        names = [f"b{i}" for i in range(BUILDS)]
        killed_at = None
        for i, name in enumerate(names):
            create(kube, namespace, engine_build(name, weights, gpu=TARGETS[i % len(TARGETS)],
                                                 max_batch_size=8 + i))
            if i == BUILDS // 3:
                replicas[leader].kill(signal.SIGKILL)
                killed_at = time.monotonic()
        assert killed_at is not None
        now = eventually(lambda: (h := holder(kube, lease)) and f"replica-{standby}_" in h
                         and h, timeout=30, interval=0.2)
        took_over = time.monotonic() - killed_at
        print(f"replica-{standby} leads {took_over:.1f} s after the leader's SIGKILL ({now})")
        eventually(lambda: not all_ready(kube, namespace, names), timeout=240, interval=1)
        keys = check_built_once_each(kube, namespace, names, s3_client, ENGINES)
        assert len(set(keys.values())) == BUILDS

        # The killed one comes back as the standby; the leader is then stopped past its Lease.
        replicas[leader].start()
        leader, standby = standby, leader
        status, answer = eventually(lambda: (h := health(ports[standby]))[0] and h, timeout=30)
        assert status == 200 and answer["reconciling"]["leading"] is False, answer
        more = [f"c{i}" for i in range(5)]
        for i, name in enumerate(more):  # work in flight as it stops
            create(kube, namespace, engine_build(name, weights, max_batch_size=100 + i))
        stale = replicas[leader]
        assert stale.process is not None
        stale.process.send_signal(signal.SIGSTOP)
        eventually(lambda: f"replica-{standby}_" in (holder(kube, lease) or ""), timeout=30,
                   interval=0.2)
        time.sleep(2)
        resumed_at = time.time()
        stale.process.send_signal(signal.SIGCONT)
        eventually(lambda: not all_ready(kube, namespace, more), timeout=120, interval=1)
        eventually(lambda: "Lost the Lease" in stale.log(), timeout=30)  # it knows, then
        assert writes_by(kube, f"{lease}-{leader}", resumed_at) == []
        assert writes_by(kube, f"{lease}-{standby}", resumed_at)  # the new leader did them

        # Until it wins again: then it reconciles (and writes) as before.
        replicas[standby].kill(signal.SIGKILL)
        eventually(lambda: f"replica-{leader}_" in (holder(kube, lease) or ""), timeout=30,
                   interval=0.2)
        won_at = time.time()
        create(kube, namespace, engine_build("d0", weights, max_batch_size=200))
        eventually(lambda: not all_ready(kube, namespace, ["d0"]), timeout=60, interval=1)
        assert writes_by(kube, f"{lease}-{leader}", won_at)

        # It plans from the cluster, not from what it kept of its previous term (the status
        # it wrote of c0..c4 before it stopped, since finished by the other): over two
        # rounds of passes it writes nothing but d0's Job, status and Events.
        done = replicas[leader].passes("EngineBuild")
        everything = len(names) + len(more) + 1
        eventually(lambda: replicas[leader].passes("EngineBuild") >= done + 2 * everything,
                   timeout=60)
        wrote = writes_by(kube, f"{lease}-{leader}", won_at)
        others = [w for w in wrote if not (w.endswith(" d0") or w.startswith(
            ("create jobs ", "create events ", "patch events ")))]
        assert others == [], "a new term rewrote status of its last one"
        events = [f"{e.reason} {e.involved_object.name}" for e in client.CoreV1Api(
            kube.api_client).list_namespaced_event(namespace).items
            if e.metadata.creation_timestamp.timestamp() >= int(won_at)
            and e.involved_object.kind == "EngineBuild" and e.involved_object.name != "d0"]
        assert events == [], "a new term repeated Events of its last one"
    finally:
        for replica in replicas.values():
            replica.stop()
    for replica in replicas.values():
        assert not error_lines(replica, ignore=("failed; will retry",)), error_lines(replica)
