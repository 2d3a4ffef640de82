"""The store's confidentiality settings: a prefix per namespace (``{namespace}`` in
``KILN_DEFAULT_STORE``) and read-only credentials for serving pods (``KILN_SERVE_STORE_SECRET``)."""

from __future__ import annotations

from typing import Any

from kiln.api import EngineBuild
from kiln.config import OperatorConfig, per_namespace
from kiln.engine_build.engines import Engines


def eb(**output: Any) -> EngineBuild:
    return EngineBuild.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
        "metadata": {"name": "llama", "namespace": "team-a"},
        "spec": {"model": {"source": "s3://models/llama/"}, "targets": [{"gpu": "H100-SXM"}],
                 "output": output}})


def test_the_default_store_has_a_prefix_per_namespace() -> None:
    assert per_namespace("s3://engines/{namespace}/", "team-a") == "s3://engines/team-a/"
    assert per_namespace("s3://engines/", "team-a") == "s3://engines/"
    assert per_namespace(None, "team-a") is None
    engines = Engines.__new__(Engines)
    engines.config = OperatorConfig(default_store="s3://engines/{namespace}")
    assert engines.store_uri("team-a", eb()) == "s3://engines/team-a/"
    assert engines.store_uri("team-b", eb()) == "s3://engines/team-b/"
    # An EngineBuild's own store is taken as written.
    assert engines.store_uri("team-a", eb(store="s3://mine/x/")) == "s3://mine/x/"


def test_serving_pods_read_the_store_with_their_own_credentials() -> None:
    config = OperatorConfig.from_env({"KILN_STORE_SECRET": "engine-store",
                                      "KILN_SERVE_STORE_SECRET": "engine-store-read"})
    assert (config.store_secret, config.serve_store_secret) == (
        "engine-store", "engine-store-read")
    assert OperatorConfig.from_env({}).serve_store_secret is None
