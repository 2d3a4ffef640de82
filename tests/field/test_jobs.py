"""Build Jobs that go away behind kiln's back: deleted by hand, or released by one EngineBuild
just as another joins them. An EngineBuild is never Building without its Job."""

from __future__ import annotations

import concurrent.futures

import pytest
from kubernetes import client

from field.support import UNSCHEDULABLE, create, custom, engine_build, get, jobs, keys, patch
from kiln import EB_PLURAL, GROUP, VERSION
from kiln.dev.testbed.cluster import Cluster
from kiln.engine_build.jobs import job_name
from waiting import eventually

pytestmark = pytest.mark.usefixtures("operator", "builders")


def job_uid(kube: Cluster, namespace: str, key: str) -> str | None:
    try:
        job = client.BatchV1Api(kube.api_client).read_namespaced_job(job_name(key), namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return None if job.metadata.deletion_timestamp else str(job.metadata.uid)


def building(kube: Cluster, namespace: str, name: str) -> str | None:
    """The key of an EngineBuild whose one engine is Building, once it is."""
    status = get(kube, namespace, EB_PLURAL, name).get("status") or {}
    engines = status.get("engines") or []
    return engines[0]["key"] if engines and engines[0]["state"] == "Building" else None


def test_a_job_deleted_by_hand_is_back_within_a_resync(kube: Cluster, namespace: str,
                                                       weights: str) -> None:
    create(kube, namespace, engine_build("llama", weights, targets=UNSCHEDULABLE))
    key = eventually(lambda: building(kube, namespace, "llama"), timeout=30)
    first = eventually(lambda: job_uid(kube, namespace, key), timeout=30)
    kube.kubectl("delete", "job", "-n", namespace, job_name(key), "--wait=true")
    # The resync is 2 s: a new Job (or the engine found) well within a few.
    second = eventually(lambda: job_uid(kube, namespace, key), timeout=10)
    assert second != first
    assert building(kube, namespace, "llama") == key


def test_join_and_release_of_one_job_never_leave_a_build_without_it(
        kube: Cluster, namespace: str, weights: str) -> None:
    """50 times at once: A builds key K; then A moves to another key (releasing K's Job) while
    B, new, wants K (joining it). B must end Building with K's Job there."""
    pairs = range(50)
    for i in pairs:
        create(kube, namespace, engine_build(f"a{i}", weights, targets=UNSCHEDULABLE,
                                             build={"maxBatchSize": 100 + i}))
    wanted = {i: eventually(lambda i=i: building(kube, namespace, f"a{i}"), timeout=60)
              for i in pairs}
    eventually(lambda: len(jobs(kube, namespace)) == len(pairs) or None, timeout=60)

    def race(i: int) -> None:
        joiner = engine_build(f"b{i}", weights, targets=UNSCHEDULABLE,
                              build={"maxBatchSize": 100 + i})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pool.submit(patch, kube, namespace, EB_PLURAL, f"a{i}",
                        {"spec": {"build": {"maxBatchSize": 1000 + i}}})
            pool.submit(create, kube, namespace, joiner)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(race, pairs))
    for i in pairs:
        eventually(lambda i=i: building(kube, namespace, f"b{i}") == wanted[i] or None,
                   timeout=60)
        eventually(lambda i=i: (keys(kube, namespace, f"a{i}")
                   and building(kube, namespace, f"a{i}") not in (None, wanted[i])) or None,
                   timeout=60)
    # Settled: every B is Building, and the Job it names exists (and is B's).
    for i in pairs:
        uid = get(kube, namespace, EB_PLURAL, f"b{i}")["metadata"]["uid"]
        job = eventually(lambda i=i: job_uid(kube, namespace, wanted[i]), timeout=10)
        assert job, f"b{i} is Building without its Job"
        owners = client.BatchV1Api(kube.api_client).read_namespaced_job(
            job_name(wanted[i]), namespace).metadata.owner_references or []
        assert uid in {o.uid for o in owners}, f"b{i} does not own its Job"
    custom(kube).delete_collection_namespaced_custom_object(GROUP, VERSION, namespace,
                                                             EB_PLURAL)
