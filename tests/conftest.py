"""Fixtures shared by the whole suite: a real S3 endpoint (moto's server), the test bed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from kiln.dev.testbed.cluster import Cluster, running
from kiln.dev.testbed.s3 import moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 over real HTTP on a free loopback port, for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A plain boto3 client for that endpoint (for arranging and inspecting state)."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, versioned bucket named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-") + "-" + os.urandom(3).hex()
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The test bed: real etcd, apiserver, controller-manager, scheduler and kwok GPU pools."""
    with running(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def namespace(kube: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client)
    name = ("t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower()))[:50]
    name = name.strip("-") + "-" + os.urandom(2).hex()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")
