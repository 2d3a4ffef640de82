"""The key binds where the weights come from (what the tenant controls of it), not only what
they are: a tenant cannot build, and have kiln sign, an engine under a key another tenant's
EngineBuild computes by pointing the same-looking source at other bytes."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.api import BuildSpec, EngineBuild
from kiln.config import OperatorConfig
from kiln.contract.key import engine_key, key_inputs
from kiln.contract.provenance import built_where
from kiln.engine_build.reconciler import EngineBuildReconciler
from kiln.errors import InvalidInput
from kiln.sources import PvcSource, origin_of, shared

TARGET: dict[str, Any] = {"builder_image": "kiln-builder:1.2.1",
                          "gpu_product": "NVIDIA-H100-80GB-HBM3", "compute_capability": "9.0"}


def key_for(uri: str, namespace: str, credentials: dict[str, str] | None = None,
            identity: str = "w" * 64) -> str:
    return engine_key(weights_identity=identity, build=BuildSpec(),
                      origin=origin_of(uri, namespace, credentials), **TARGET)


def test_pvc_of_the_same_name_in_another_namespace_gets_another_key() -> None:
    """Tenant A's PVC named like the victim's, same revision: the weights identity is the same
    (path + revision), the key is not."""
    uri = "pvc://models/llama-3-8b"
    identity = PvcSource(uri, revision="r1").identity().digest
    assert identity == PvcSource(uri, revision="r1").identity().digest
    assert key_for(uri, "victim", identity=identity) != key_for(uri, "tenant-a",
                                                                identity=identity)
    assert key_for(uri, "victim", identity=identity) == key_for(uri, "victim",
                                                                identity=identity)


def test_pvc_origin_is_namespace_claim_and_path() -> None:
    assert origin_of("pvc://models/llama/", "ns", None) == {
        "scheme": "pvc", "namespace": "ns", "claim": "models", "path": "llama"}
    assert origin_of("pvc://models/a", "ns", None) != origin_of("pvc://other/a", "ns", None)
    assert origin_of("pvc://models/a", "ns", None) != origin_of("pvc://models/b", "ns", None)


def test_s3_with_a_tenant_endpoint_gets_another_key() -> None:
    """A fake S3 named in the credentials Secret can answer any listing (ETags included)."""
    uri = "s3://models/llama/"
    plain = key_for(uri, "victim", {"AWS_ACCESS_KEY_ID": "a"})
    faked = key_for(uri, "tenant-a", {"AWS_ENDPOINT_URL": "http://evil.example:9000"})
    assert plain != faked
    assert key_for(uri, "ns", {"AWS_ENDPOINT_URL": "http://a.example"}) != key_for(
        uri, "ns", {"AWS_ENDPOINT_URL": "http://b.example"})


def test_s3_buckets_and_prefixes_get_other_keys() -> None:
    """The listing has relative names only: two buckets with the same listing differ."""
    assert key_for("s3://models/llama/", "ns") != key_for("s3://other/llama/", "ns")
    assert key_for("s3://models/llama/", "ns") != key_for("s3://models/llama-copy/", "ns")


def test_a_build_in_a_tenants_namespace_is_that_namespaces_alone() -> None:
    """The tenant can touch the Job, pods and Secrets of its namespace: an engine built there
    gets a key no other namespace computes, whatever the source (issue 24)."""
    for uri in ("s3://models/llama/", "hf://meta-llama/Llama-3-8B@main"):
        assert key_for(uri, "team-a") != key_for(uri, "team-b")
        assert key_for(uri, "team-a") == key_for(uri, "team-a")
    assert origin_of("s3://models/llama", "ns", None) == {
        "scheme": "s3", "bucket": "models", "prefix": "llama/", "namespace": "ns"}


def test_a_build_in_the_platforms_namespace_names_none() -> None:
    """Built in the platform's build namespace (empty namespace): the engine a tenant's
    EngineBuild with the platform's credentials may use."""
    uri = "s3://models/llama/"
    assert origin_of(uri, "", None) == {"scheme": "s3", "bucket": "models", "prefix": "llama/"}
    assert shared(uri, None) and shared("hf://org/a@main", None)
    assert not shared(uri, "creds") and not shared("pvc://models/llama", None)


def test_the_credentials_secret_is_part_of_the_origin() -> None:
    uri = "s3://models/llama/"
    assert origin_of(uri, "ns", None, secret="a") != origin_of(uri, "ns", None, secret="b")
    assert origin_of(uri, "ns", None, secret="a")["secret"] == "a"


def test_hf_with_a_tenant_endpoint_gets_another_key() -> None:
    """A fake hub can claim repo@<the public sha>."""
    uri = "hf://meta-llama/Llama-3-8B@main"
    assert key_for(uri, "a") == key_for(uri, "a", {"HF_TOKEN": "t"})
    assert key_for(uri, "a") != key_for(uri, "a", {"HF_ENDPOINT": "http://evil.example"})
    assert origin_of(uri, "ns", {"HF_ENDPOINT": "http://hub.example/"}) == {
        "scheme": "hf", "repo": "meta-llama/Llama-3-8B", "endpoint": "http://hub.example",
        "namespace": "ns"}
    assert origin_of("hf://org/a@v1", "ns", None) == origin_of("hf://org/a@v2", "ns", None)


def test_origin_is_recorded_in_the_inputs() -> None:
    origin = origin_of("s3://models/llama/", "ns", None)
    inputs = key_inputs(weights_identity="w", build=BuildSpec(), origin=origin, **TARGET)
    assert inputs["origin"] == origin


def test_malformed_and_empty_origins_are_refused() -> None:
    with pytest.raises(InvalidInput):
        origin_of("ftp://x/y", "ns", None)
    with pytest.raises(InvalidInput):
        origin_of("pvc://models/../x", "ns", None)
    with pytest.raises(InvalidInput, match="origin"):
        key_inputs(weights_identity="w", build=BuildSpec(), origin={}, **TARGET)


class Secrets:
    """A Kube that answers only Secret reads."""

    def __init__(self, data: dict[tuple[str, str], dict[str, str]]) -> None:
        self.data, self.reads = data, 0

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        self.reads += 1
        return self.data[(namespace, name)]


def build(namespace: str, source: str, secret: str | None = None,
          revision: str | None = None) -> EngineBuild:
    model: dict[str, Any] = {"source": source}
    if secret:
        model["credentialsSecret"] = secret
    if revision:
        model["revision"] = revision
    return EngineBuild.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "EngineBuild",
        "metadata": {"name": "b", "namespace": namespace},
        "spec": {"model": model, "targets": [{"gpu": "H100-SXM"}]}})


def test_the_reconciler_computes_the_origin_from_the_namespace_and_the_secret() -> None:
    kube = Secrets({("a", "creds"): {"AWS_ENDPOINT_URL": "http://evil.example"},
                    ("b", "creds"): {"AWS_ACCESS_KEY_ID": "k"}})
    reconciler = EngineBuildReconciler(kube, OperatorConfig(), lambda body, event: None)  # type: ignore[arg-type]
    pvc_a = reconciler.weights.origin("a", build("a", "pvc://models/llama", revision="r1"))
    pvc_b = reconciler.weights.origin("b", build("b", "pvc://models/llama", revision="r1"))
    assert pvc_a != pvc_b and kube.reads == 0, "a pvc:// origin needs no Secret"
    s3_a = reconciler.weights.origin("a", build("a", "s3://models/llama/", "creds"))
    s3_b = reconciler.weights.origin("b", build("b", "s3://models/llama/", "creds"))
    assert s3_a == {"scheme": "s3", "bucket": "models", "prefix": "llama/",
                    "endpoint": "http://evil.example", "namespace": "a", "secret": "creds"}
    assert s3_b == {"scheme": "s3", "bucket": "models", "prefix": "llama/", "namespace": "b",
                    "secret": "creds"}
    assert reconciler.weights.endpoints("a", build("a", "s3://models/llama/", "creds")) == {
        "AWS_ENDPOINT_URL": "http://evil.example", "HF_ENDPOINT": ""}


def test_an_engine_counts_only_where_its_key_says_it_was_built() -> None:
    """A signed engine is as trustworthy as the namespace its Job ran in (issue 24): a
    tenant's engine only if built in that namespace; a shared one only in the platform's build
    namespace."""
    tenant = {"origin": origin_of("s3://models/llama/", "team-a", None)}
    assert built_where(tenant, "team-a", None) is None
    assert "namespace team-a's" in str(built_where(tenant, "team-b", "kiln-builds"))
    assert built_where(tenant, "kiln-builds", "kiln-builds") is not None
    shared = {"origin": origin_of("s3://models/llama/", "", None)}
    assert built_where(shared, "kiln-builds", "kiln-builds") is None
    assert "shared" in str(built_where(shared, "team-a", "kiln-builds"))
    assert "none is configured" in str(built_where(shared, "kiln-builds", None))
