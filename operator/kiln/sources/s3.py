"""Weights in S3: identified by the names, sizes and ETags of the objects under a prefix.

ETags rather than version ids: the same bytes written again keep the identity (no needless
rebuild), any other bytes change it, and it works on unversioned buckets too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.errors import NotFound, WeightsChanged
from kiln.sources.base import Progress, WeightsIdentity, digest_of
from kiln.store import s3client
from kiln.store.transfer import Transfers

FILES_AT_ONCE = 4


class S3Source:
    """``s3://bucket/prefix/``: every object under the prefix (not ending in ``/``)."""

    def __init__(self, uri: str, *, credentials: Mapping[str, str] | None = None,
                 endpoint_url: str | None = None) -> None:
        self.uri = uri if uri.endswith("/") else uri + "/"
        self.bucket, self.prefix = s3client.parse_uri(self.uri)
        self.client = s3client.client(credentials, endpoint_url)

    def _listing(self) -> list[dict[str, Any]]:
        objects = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix):
                objects += [{"key": o["Key"][len(self.prefix):], "size": o["Size"],
                             "etag": o["ETag"].strip('"')} for o in page.get("Contents", [])
                            if not o["Key"].endswith("/")]
        except Exception as error:
            raise s3client.translate(error, f"list the weights under {self.uri}") from error
        if not objects:
            raise NotFound(f"no weights under {self.uri} (the prefix holds no objects)")
        return sorted(objects, key=lambda o: o["key"])

    def identity(self) -> WeightsIdentity:
        """sha256 over the sorted (name, size, ETag) listing; nothing is downloaded."""
        listing = self._listing()
        return WeightsIdentity(digest_of("s3", listing), "s3", {
            "objects": len(listing), "bytes": sum(o["size"] for o in listing)})

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
        after = self.identity()
        if after.digest != digest_of("s3", listing):
            raise WeightsChanged(f"the weights under {self.uri} changed while they were "
                                 "being read (objects added, removed or replaced)")
        return after
