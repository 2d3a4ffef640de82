"""The engine store: engines by key, ``manifest.json`` written last as the commit marker.

``open_store(uri, *, credentials=None, endpoint_url=None) -> EngineStore`` for
``s3://bucket/prefix/``, ``pvc://claim/path`` (mounted at ``$KILN_PVC_ROOT/claim/path``,
default root ``/mnt/kiln/pvc``) or ``file:///abs/path``. An ``EngineStore`` has:

- ``has(key) -> bool`` and ``read_manifest(key) -> Manifest | None`` (committed engines only);
- ``upload(key, src_dir, *, inputs, versions, build_seconds, progress) -> Manifest``: files
  in parallel (multipart on S3), sha256 computed while reading, the manifest last; when the
  key was committed by another writer, that writer's manifest is returned;
- ``download(key, dest_dir, *, progress) -> Manifest``: every file's sha256 checked
  (``kiln.errors.IntegrityError`` names the file and both digests);
- ``list_keys()``, ``delete(key)``, ``collect_garbage(older_than_seconds) -> list[str]``;
- ``get_blob(name)`` / ``put_blob(name, data)`` under ``<store>/cache/`` (timing caches).

``progress`` is called with ``(bytes_done, bytes_total)``. Errors are kiln's taxonomy
(``InvalidInput``, ``NotFound``, ``AccessDenied``, ``Unavailable``, ``IntegrityError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kiln.contract.manifest import Manifest
from kiln.contract.pvc import pvc_path
from kiln.errors import InvalidInput
from kiln.s3 import client as s3client
from kiln.store.base import EngineStore, Progress
from kiln.store.fs import FileStore
from kiln.store.s3 import S3Store

__all__ = ["EngineStore", "FileStore", "Manifest", "Progress", "S3Store", "open_store",
           "pvc_path"]

def open_store(uri: str, *, credentials: Mapping[str, str] | None = None,
               endpoint_url: str | None = None) -> EngineStore:
    """The store at ``uri``; ``credentials`` are AWS_* keys (a Secret's data) for S3."""
    if uri.startswith("s3://"):
        bucket, prefix = s3client.parse_uri(uri)
        return S3Store(s3client.client(credentials, endpoint_url), bucket, prefix)
    if uri.startswith("pvc://"):
        return FileStore(pvc_path(uri), uri if uri.endswith("/") else uri + "/")
    if uri.startswith("file:///"):
        return FileStore(Path(uri.removeprefix("file://")))
    raise InvalidInput(f"{uri!r} is not a store URI: use s3://bucket/prefix/, "
                       "pvc://claim/path or file:///abs/path")
