"""The engine store: engines by key, ``manifest.json`` written last as the commit marker.

``open_store(uri)`` gives an ``EngineStore`` for ``s3://bucket/prefix/``, ``pvc://claim/path``
(mounted under ``KILN_PVC_ROOT``, default ``/mnt/kiln/pvc``) or ``file:///abs/path``:
``has``, ``read_manifest``, ``upload`` (parallel, hashed while read, manifest last),
``download`` (every sha256 checked), ``list_keys``, ``delete``, ``collect_garbage``, and
``get_blob``/``put_blob`` for small cached objects such as TensorRT timing caches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kiln import s3 as s3_util
from kiln.errors import InvalidInput
from kiln.store.base import EngineStore
from kiln.store.fs import FileStore
from kiln.store.manifest import Manifest
from kiln.store.s3 import S3Store

__all__ = ["EngineStore", "FileStore", "Manifest", "S3Store", "open_store", "pvc_path"]


def pvc_path(uri: str) -> Path:
    """Where ``pvc://claim/path`` is mounted in this process."""
    rest = uri.removeprefix("pvc://").strip("/")
    claim, _, sub = rest.partition("/")
    if not claim or ".." in rest.split("/"):
        raise InvalidInput(f"{uri!r} is not a PVC URI such as pvc://claim/path")
    return Path(os.environ.get("KILN_PVC_ROOT", "/mnt/kiln/pvc")) / claim / sub


def open_store(uri: str, *, credentials: Mapping[str, str] | None = None,
               endpoint_url: str | None = None) -> EngineStore:
    """The store at ``uri``."""
    if uri.startswith("s3://"):
        bucket, prefix = s3_util.parse_uri(uri)
        return S3Store(s3_util.client(credentials, endpoint_url), bucket, prefix)
    if uri.startswith("pvc://"):
        return FileStore(pvc_path(uri), uri if uri.endswith("/") else uri + "/")
    if uri.startswith("file:///"):
        return FileStore(Path(uri.removeprefix("file://")))
    raise InvalidInput(f"{uri!r} is not a store URI: use s3://bucket/prefix/ or "
                       "pvc://claim/path")
