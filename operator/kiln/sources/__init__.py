"""Weight sources: a weights identity read without downloading, and the download itself.

``open_source(uri, *, credentials=None, revision=None, endpoint_url=None) -> WeightSource``:

- ``s3://bucket/prefix/``: identity = sha256 over (name, size, ETag) of every object under
  the prefix (paginated listing); credentials ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``;
- ``hf://org/name@revision``: identity = the commit sha the revision points at (one
  model-info call); credentials ``HF_TOKEN``, ``HF_ENDPOINT`` (else the environment's);
- ``pvc://claim/path``: identity = path + ``revision`` (``spec.model.revision``); the builder
  records ``content_digest(dir)``, the full sha256 digest of the files.

A ``WeightSource`` has ``uri``, ``identity() -> WeightsIdentity`` (``digest``, ``kind``,
``details``) and ``download(dest_dir, *, progress=None) -> WeightsIdentity``, which fetches
exactly the identified weights (S3: every read pinned to the listed ETag; HF: by commit sha)
and raises ``kiln.errors.WeightsChanged`` when they changed meanwhile. Other errors:
``InvalidInput`` (malformed URI), ``NotFound``, ``AccessDenied``, ``Unavailable``.

``origin_of(uri, namespace, credentials, secret=None) -> dict[str, str]``: where the weights
come from, as far as the EngineBuild's author controls it, and in which namespace they are
built: an input of the engine key next to the identity (see ``kiln.contract.key``).
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln.contract.pvc import pvc_path
from kiln.errors import InvalidInput
from kiln.s3.client import parse_uri
from kiln.sources.base import Progress, WeightsIdentity, WeightSource, content_digest
from kiln.sources.hf import HuggingFaceSource, RepoType, hf_repo
from kiln.sources.pvc import PvcSource
from kiln.sources.s3 import S3Source

__all__ = ["HuggingFaceSource", "Progress", "PvcSource", "S3Source", "WeightSource",
           "WeightsIdentity", "content_digest", "open_source", "origin_of", "shared",
           "tenant_endpoint"]


def open_source(uri: str, *, credentials: Mapping[str, str] | None = None,
                revision: str | None = None, endpoint_url: str | None = None,
                hf_repo_type: RepoType = "model", ambient: bool = True) -> WeightSource:
    """The source at ``uri``; ``credentials`` are the keys of ``credentialsSecret``;
    ``hf_repo_type`` says whether an ``hf://`` URI names a model or a dataset repository;
    ``ambient`` false: credentials the mapping lacks are not taken from the environment
    (boto3's chain, ``HF_TOKEN``): requests go unsigned, without a token. An endpoint the
    ``credentials`` name (``tenant_endpoint``) never gets the environment's credentials,
    whatever ``ambient`` says: only the ones given travel there."""
    ambient = ambient and tenant_endpoint(uri, credentials) is None
    if uri.startswith("s3://"):
        return S3Source(uri, credentials=credentials, endpoint_url=endpoint_url,
                        ambient=ambient)
    if uri.startswith("hf://"):
        return HuggingFaceSource(uri, credentials=credentials, repo_type=hf_repo_type,
                                 ambient=ambient)
    if uri.startswith("pvc://"):
        return PvcSource(uri, revision=revision)
    raise InvalidInput(f"{uri!r} is not a weights URI: use s3://bucket/prefix/, "
                       "hf://org/name@revision or pvc://claim/path")


def origin_of(uri: str, namespace: str, credentials: Mapping[str, str] | None,
              secret: str | None = None) -> dict[str, str]:
    """Where the weights of ``uri`` come from, as the tenant controls it, and where they are
    built (an input of the key):

    - ``namespace``: the namespace the build Job runs in, whose tenant can touch it (its
      Secrets, pods, exec): the EngineBuild's own, so an engine built there is that
      namespace's alone. Empty for a build in the platform's build namespace
      (``KILN_BUILD_NAMESPACE``): the engine other namespaces may use;
    - ``secret``: the credentials Secret's name, when a tenant's build reads one;
    - ``s3://``: the bucket and prefix, and ``AWS_ENDPOINT_URL`` of ``credentials`` (the
      EngineBuild's ``credentialsSecret``) if it names one; the platform's endpoint (the
      operator's and builders' environment) is not part of it;
    - ``hf://``: the repo, and ``HF_ENDPOINT`` of ``credentials`` if set;
    - ``pvc://``: the claim and the path (a claim is the namespace's own: never shared).

    Empty values are left out (a whole bucket or claim has no prefix or path); an endpoint
    loses its trailing ``/``. Raises ``InvalidInput`` for a malformed URI."""
    creds = credentials or {}
    if uri.startswith("s3://"):
        bucket, prefix = parse_uri(uri)
        found = {"scheme": "s3", "bucket": bucket, "prefix": prefix,
                 "endpoint": _endpoint(creds.get("AWS_ENDPOINT_URL"))}
    elif uri.startswith("hf://"):
        found = {"scheme": "hf", "repo": hf_repo(uri),
                 "endpoint": _endpoint(creds.get("HF_ENDPOINT"))}
    elif uri.startswith("pvc://"):
        pvc_path(uri)  # refuses a malformed one
        claim, _, path = uri.removeprefix("pvc://").strip("/").partition("/")
        found = {"scheme": "pvc", "claim": claim, "path": path}
    else:
        raise InvalidInput(f"{uri!r} is not a weights URI: use s3://bucket/prefix/, "
                           "hf://org/name@revision or pvc://claim/path")
    found |= {"namespace": namespace, "secret": secret or ""}
    return {name: value for name, value in found.items() if value}


def shared(uri: str, secret: str | None) -> bool:
    """Whether weights at ``uri`` can be built in the platform's build namespace and shared:
    read with the platform's credentials (no tenant Secret) from a place that is not a
    tenant's claim."""
    return not secret and not uri.startswith("pvc://")


def tenant_endpoint(uri: str, credentials: Mapping[str, str] | None) -> str | None:
    """The endpoint the tenant's credentials name for ``uri`` (``AWS_ENDPOINT_URL`` for
    ``s3://``, ``HF_ENDPOINT`` for ``hf://``), or None: the platform's. The operator reads a
    tenant's endpoint with the tenant's credentials only, never its own."""
    creds = credentials or {}
    name = ("AWS_ENDPOINT_URL" if uri.startswith("s3://")
            else "HF_ENDPOINT" if uri.startswith("hf://") else "")
    return (_endpoint(creds.get(name)) or None) if name else None


def _endpoint(value: str | None) -> str:
    return (value or "").strip().rstrip("/")
