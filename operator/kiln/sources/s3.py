"""Weights in S3: identified by the keys, sizes and ETags under a prefix."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from kiln import s3
from kiln.errors import NotFound, WeightsChanged
from kiln.sources.base import Progress, WeightsIdentity, digest_of


class S3Source:
    def __init__(self, uri: str, *, credentials: Mapping[str, str] | None = None,
                 endpoint_url: str | None = None) -> None:
        self.uri = uri if uri.endswith("/") else uri + "/"
        self.bucket, self.prefix = s3.parse_uri(self.uri)
        self.client = s3.client(credentials, endpoint_url)

    def _listing(self) -> list[dict[str, Any]]:
        objects = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix):
                objects += [{"key": o["Key"][len(self.prefix):], "size": o["Size"],
                             "etag": o["ETag"].strip('"')} for o in page.get("Contents", [])
                            if not o["Key"].endswith("/")]
        except Exception as error:
            raise s3.translate(error, f"list weights under {self.uri}") from error
        if not objects:
            raise NotFound(f"no weights under {self.uri}")
        return sorted(objects, key=lambda o: o["key"])

    def identity(self) -> WeightsIdentity:
        listing = self._listing()
        return WeightsIdentity(digest_of("s3", listing), "s3", {
            "objects": len(listing), "bytes": sum(o["size"] for o in listing)})

    def download(self, dest: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        listing = self._listing()
        total, done = sum(o["size"] for o in listing), [0]

        def fetch(obj: dict[str, Any]) -> None:
            target = dest / obj["key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                body = self.client.get_object(Bucket=self.bucket,
                                              Key=self.prefix + obj["key"],
                                              IfMatch=f'"{obj["etag"]}"')["Body"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                                   "412", "NoSuchKey"):
                    raise WeightsChanged(f"{self.uri}{obj['key']} changed while it was "
                                         "being read") from error
                raise s3.translate(error, f"read {self.uri}{obj['key']}") from error
            with target.open("wb") as out:
                for chunk in body.iter_chunks(8 * 1024 * 1024):
                    out.write(chunk)
                    done[0] += len(chunk)
                    if progress:
                        progress(done[0], total)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fetch, listing))
        after = self.identity()
        if after.digest != digest_of("s3", listing):
            raise WeightsChanged(f"the weights under {self.uri} changed while they were "
                                 "being read")
        return after
