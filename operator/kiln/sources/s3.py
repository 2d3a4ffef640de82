"""Weights in S3: identified by the names, sizes and ETags of the objects under a prefix.

ETags rather than version ids: the same bytes written again keep the identity (no needless
rebuild), any other bytes change it, and it works on unversioned buckets too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.errors import InvalidInput, NotFound, Unavailable, WeightsChanged
from kiln.s3 import client as s3client
from kiln.s3.transfer import Transfers
from kiln.sources import bounded
from kiln.sources.base import Progress, WeightsIdentity, digest_of

FILES_AT_ONCE = 4
ABANDONED_SECONDS = 86_400.0
MAX_OBJECTS = 5_000
"""Objects a weights prefix may hold (a checkpoint has hundreds at most): a listing that goes
on is cut off here, at about five pages, whatever the endpoint says."""
LIST_SECONDS = 60.0
"""The longest one listing may take, all its pages together (each request is bounded by the
client's timeouts as well)."""
log = logging.getLogger(__name__)


class S3Source:
    """``s3://bucket/prefix/``: every object under the prefix (not ending in ``/``)."""

    def __init__(self, uri: str, *, credentials: Mapping[str, str] | None = None,
                 endpoint_url: str | None = None, ambient: bool = True) -> None:
        self.uri = uri if uri.endswith("/") else uri + "/"
        self.bucket, self.prefix = s3client.parse_uri(self.uri)
        self.client = s3client.client(credentials, endpoint_url, ambient=ambient)
        bounded.bound_botocore(self.client)  # a caller may bound its calls (``within``)

    def _listing(self, modified: list[float] | None = None) -> list[dict[str, Any]]:
        """(name, size, ETag) of every object; their write times go to ``modified``. More
        than ``MAX_OBJECTS`` is ``InvalidInput``; a listing still going after
        ``LIST_SECONDS`` is ``Unavailable``."""
        objects: list[dict[str, Any]] = []
        deadline = time.monotonic() + LIST_SECONDS
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix):
                if len(objects) + len(page.get("Contents", [])) > MAX_OBJECTS:
                    raise InvalidInput(f"more than {MAX_OBJECTS} objects under {self.uri}: "
                                       f"kiln reads at most {MAX_OBJECTS} (a checkpoint holds "
                                       "hundreds); point the source at the model's own prefix")
                if time.monotonic() > deadline:
                    raise Unavailable(f"the listing of {self.uri} did not answer within "
                                      f"{LIST_SECONDS:g}s ({len(objects)} objects so far)",
                                      reason="SourceTooSlow")
                for o in page.get("Contents", []):
                    if o["Key"].endswith("/"):
                        continue
                    objects.append({"key": o["Key"][len(self.prefix):], "size": o["Size"],
                                    "etag": o["ETag"].strip('"')})
                    if modified is not None:
                        modified.append(o["LastModified"].timestamp())
        except Exception as error:
            raise s3client.translate(error, f"list the weights under {self.uri}") from error
        if not objects:
            raise NotFound(f"no weights under {self.uri} (the prefix holds no objects)")
        return sorted(objects, key=lambda o: o["key"])

    def _uploading(self) -> int:
        """Multipart uploads under the prefix begun within the last day (a large file still
        arriving; older ones are abandoned: S3 keeps them until a lifecycle rule goes). A store
        that does not answer (no ``s3:ListBucketMultipartUploads``, not implemented) has 0."""
        try:
            found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        except Exception as error:
            log.info("uploads under %s not listed (%s): counting none", self.uri, error)
            return 0
        recent = time.time() - ABANDONED_SECONDS
        return sum(1 for u in found.get("Uploads") or []
                   if u["Initiated"].timestamp() >= recent)

    def identity(self) -> WeightsIdentity:
        """sha256 over the sorted (name, size, ETag) listing; nothing is downloaded. The
        details say when the newest object was written and how many uploads are in progress
        (whether the weights hold still)."""
        modified: list[float] = []
        listing = self._listing(modified)
        return WeightsIdentity(digest_of("s3", listing), "s3", {
            "objects": len(listing), "bytes": sum(o["size"] for o in listing),
            "newest": max(modified), "uploading": self._uploading()})

    def download(self, dest_dir: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        """Fetch every object; an object replaced meanwhile (its ETag no longer matches) or a
        listing that changed raises ``WeightsChanged``."""
        listing = self._listing()
        total, done, lock = sum(o["size"] for o in listing), [0], threading.Lock()

        def count(amount: int) -> None:
            with lock:
                done[0] += amount
                now = done[0]
            if progress:
                progress(now, total)

        transfers = Transfers(self.client)
        try:
            def fetch(obj: dict[str, Any]) -> None:
                target = dest_dir / obj["key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    transfers.download(self.bucket, self.prefix + obj["key"], target,
                                       size=obj["size"], what=f"read {self.uri}{obj['key']}",
                                       count=count, if_match=f'"{obj["etag"]}"')
                except NotFound as error:
                    raise WeightsChanged(f"{self.uri}{obj['key']} was deleted while the "
                                         "weights were being read") from error

            with ThreadPoolExecutor(max_workers=FILES_AT_ONCE) as pool:
                list(pool.map(fetch, listing))
        finally:
            transfers.close()
        after = WeightsIdentity(digest_of("s3", self._listing()), "s3", {
            "objects": len(listing), "bytes": total})
        if after.digest != digest_of("s3", listing):
            raise WeightsChanged(f"the weights under {self.uri} changed while they were "
                                 "being read (objects added, removed or replaced)")
        return after
