"""Weight sources: a weights identity read without downloading, and the download itself.

``open_source(uri, credentials=..., revision=...)`` gives a ``WeightSource`` for
``s3://bucket/prefix/`` (identity: keys, sizes and ETags of every object under the prefix),
``hf://org/name@revision`` (identity: the revision's commit sha) or ``pvc://claim/path``
(identity: path and ``spec.model.revision``). ``download(dest)`` fetches the weights and
raises ``kiln.errors.WeightsChanged`` when they no longer match the identity.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln.errors import InvalidInput
from kiln.sources.base import Progress, WeightsIdentity, WeightSource, content_digest
from kiln.sources.hf import HuggingFaceSource
from kiln.sources.pvc import PvcSource
from kiln.sources.s3 import S3Source

__all__ = ["HuggingFaceSource", "Progress", "PvcSource", "S3Source", "WeightSource",
           "WeightsIdentity", "content_digest", "open_source"]


def open_source(uri: str, *, credentials: Mapping[str, str] | None = None,
                revision: str | None = None, endpoint_url: str | None = None) -> WeightSource:
    """The source at ``uri``; ``credentials`` are the keys of ``credentialsSecret``."""
    if uri.startswith("s3://"):
        return S3Source(uri, credentials=credentials, endpoint_url=endpoint_url)
    if uri.startswith("hf://"):
        return HuggingFaceSource(uri, credentials=credentials)
    if uri.startswith("pvc://"):
        return PvcSource(uri, revision=revision)
    raise InvalidInput(f"{uri!r} is not a weights URI: use s3://bucket/prefix/, "
                       "hf://org/name@revision or pvc://claim/path")
