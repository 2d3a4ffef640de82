"""The engine store on S3 (or anything that speaks its API)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from kiln.s3 import translate
from kiln.store.base import CHUNK, EngineStore, HashingReader
from kiln.store.manifest import MANIFEST, Manifest

TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024,
                          multipart_chunksize=64 * 1024 * 1024, max_concurrency=8,
                          use_threads=True)


class S3Store(EngineStore):
    """``s3://bucket/prefix/engines/<key>/<upload>/<files>`` and ``.../<key>/manifest.json``."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}"

    def _key_prefix(self, key: str) -> str:
        return f"{self.prefix}engines/{key}/"

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as error:
            raise translate(error, f"{what} in {self.uri}") from error
        except (BotoCoreError, OSError) as error:  # connection errors and the like
            raise translate(error, f"{what} in {self.uri}") from error

    def _put_file(self, key: str, upload: str, rel: str, path: Path,
                  count: Callable[[int], None]) -> str:
        with path.open("rb") as raw:
            reader = HashingReader(raw, count)
            self._call(f"upload {rel}", self.client.upload_fileobj, Fileobj=reader,
                       Bucket=self.bucket, Key=f"{self._key_prefix(key)}{upload}/{rel}",
                       Config=TRANSFER)
        return reader.sha.hexdigest()

    def _get_file(self, key: str, upload: str, rel: str, dest: Path,
                  count: Callable[[int], None]) -> str:
        digest = hashlib.sha256()
        obj = self._call(f"download {rel}", self.client.get_object, Bucket=self.bucket,
                         Key=f"{self._key_prefix(key)}{upload}/{rel}")
        with dest.open("wb") as out:
            for chunk in obj["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                count(len(chunk))
        return digest.hexdigest()

    def _commit(self, key: str, manifest: Manifest) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key_prefix(key) + MANIFEST,
                                   Body=manifest.to_json(), IfNoneMatch="*",
                                   ContentType="application/json")
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise translate(error, f"commit engine {key[:12]} in {self.uri}") from error
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket,
                                         Key=self._key_prefix(key) + MANIFEST)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise translate(error, f"read manifest of {key[:12]} in {self.uri}") from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, f"read manifest of {key[:12]} in {self.uri}") from error
        return Manifest.model_validate_json(obj["Body"].read())

    def _list(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from paginator.paginate(**kwargs)
        except ClientError as error:
            raise translate(error, f"list {prefix} in s3://{self.bucket}") from error

    def _keys(self) -> Iterator[str]:
        for page in self._list(f"{self.prefix}engines/", "/"):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"].rstrip("/").rsplit("/", 1)[-1]

    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        newest: dict[str, datetime] = {}
        base = self._key_prefix(key)
        for page in self._list(base):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(base):]
                if "/" in rest:
                    upload = rest.split("/", 1)[0]
                    newest[upload] = max(newest.get(upload, obj["LastModified"]),
                                         obj["LastModified"])
        now = datetime.now(UTC)
        for upload, when in newest.items():
            yield upload, (now - when).total_seconds()

    def _remove(self, key: str, upload: str | None = None) -> None:
        base = self._key_prefix(key)
        if upload is None:  # uncommit first, so readers never see a half-deleted engine
            self._call("delete manifest", self.client.delete_object, Bucket=self.bucket,
                       Key=base + MANIFEST)
        prefix = base if upload is None else f"{base}{upload}/"
        for page in self._list(prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                           Delete={"Objects": objects, "Quiet": True})

    def get_blob(self, name: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}cache/{name}")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise translate(error, f"read cache/{name} in {self.uri}") from error
        data: bytes = obj["Body"].read()
        return data

    def put_blob(self, name: str, data: bytes) -> None:
        self._call(f"write cache/{name}", self.client.put_object, Bucket=self.bucket,
                   Key=f"{self.prefix}cache/{name}", Body=data)
