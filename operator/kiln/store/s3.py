"""The engine store on S3 (or anything that speaks its API)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kiln.contract import layout
from kiln.contract.key import short_key
from kiln.contract.manifest import MANIFEST, MAX_MANIFEST, USED, FileEntry, Manifest
from kiln.errors import InvalidInput, TooLarge
from kiln.s3.client import error_code, translate
from kiln.s3.transfer import Transfers, read_object
from kiln.store.base import CHUNK, Count, EngineStore

log = logging.getLogger(__name__)

_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412")
_MISSING = ("404", "NoSuchKey", "NotFound")
USED_BYTES = 4096
"""Of a ``last-used`` marker, what is read (kiln writes a few dozen bytes)."""


class S3Store(EngineStore):
    """``s3://bucket/prefix/engines/<key>/<upload>/<files>`` and ``.../<key>/manifest.json``.

    The manifest is committed with a conditional put (``If-None-Match: *``): the first writer
    wins. A server that ignores the condition lets the last writer win instead; as every
    upload has its own directory, either way the manifest names one whole upload.
    """

    workers = 2
    """Files at once: the parts and ranges of all of them share one pool of ``concurrency``
    requests; a second file overlaps the first one's completion."""

    def __init__(self, client: Any, bucket: str, prefix: str, *, concurrency: int = 10
                 ) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}"
        self.concurrency = concurrency
        self._transfers: Transfers | None = None
        self._lock = threading.Lock()

    @property
    def transfers(self) -> Transfers:
        """The part/range pool, made on first use."""
        with self._lock:
            if self._transfers is None:
                self._transfers = Transfers(self.client, concurrency=self.concurrency)
            return self._transfers

    def close(self) -> None:
        with self._lock:
            if self._transfers is not None:
                self._transfers.close()
                self._transfers = None

    def _key_prefix(self, key: str) -> str:
        return f"{self.prefix}{layout.ENGINES}{key}/"

    def _aside_prefix(self, key: str, upload: str) -> str:
        return f"{self.prefix}{layout.DAMAGED}{key}/{upload}/"

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, OSError) as error:
            raise translate(error, f"{what} in {self.uri}") from error

    def _get(self, name: str, what: str, limit: int | None = None) -> bytes | None:
        """A small object's bytes, or None when it does not exist; ``TooLarge`` (unread)
        above ``limit``."""
        return read_object(self.client, self.bucket, name, what=f"{what} in {self.uri}",
                           limit=limit)

    def _put_file(self, key: str, upload: str, rel: str, path: Path, count: Count) -> str:
        return self.transfers.upload(path, self.bucket, f"{self._key_prefix(key)}{upload}/{rel}",
                                     what=f"upload {rel} to {self.engine_uri(key)}",
                                     count=count)

    def _get_file(self, key: str, upload: str, entry: FileEntry, dest: Path,
                  count: Count) -> str:
        return self.transfers.download(
            self.bucket, f"{self._key_prefix(key)}{upload}/{entry.path}", dest,
            size=entry.size, what=f"download {entry.path} of {self.engine_uri(key)}",
            count=count)

    def _commit(self, key: str, manifest: Manifest) -> bool:
        name = self._key_prefix(key) + MANIFEST
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=manifest.to_json(),
                                   IfNoneMatch="*", ContentType="application/json")
        except ClientError as error:
            if error_code(error) in _CONFLICT:
                return False
            if error_code(error) != "NotImplemented":
                raise translate(error, f"commit engine {short_key(key)} in {self.uri}") from error
            log.warning("%s does not support conditional writes; committing %s unguarded",
                        self.uri, short_key(key))
            if self.read_manifest(key) is not None:
                return False
            self._call(f"commit engine {short_key(key)}", self.client.put_object,
                       Bucket=self.bucket,
                       Key=name, Body=manifest.to_json(), ContentType="application/json")
        except (BotoCoreError, OSError) as error:
            raise translate(error, f"commit engine {short_key(key)} in {self.uri}") from error
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            data = self._get(self._key_prefix(key) + MANIFEST,
                             f"read the manifest of {short_key(key)}", MAX_MANIFEST)
        except TooLarge as error:
            self._too_large(key, error)
            return None
        return self._parse_manifest(key, data)

    def _get_object(self, key: str, name: str, limit: int) -> bytes | None:
        return self._get(self._key_prefix(key) + name, f"read {name} of {short_key(key)}",
                         limit)

    def _put_object(self, key: str, name: str, data: bytes) -> None:
        self._call(f"write {name} of {short_key(key)}", self.client.put_object,
                   Bucket=self.bucket, Key=self._key_prefix(key) + name, Body=data,
                   ContentType="application/json")

    def _pages(self, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        what = f"list s3://{self.bucket}/{kwargs.get('Prefix', '')}"
        try:
            yield from self.client.get_paginator(method).paginate(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError, OSError) as error:
            raise translate(error, what) from error

    def _multipart_uploads(self, prefix: str) -> Iterator[tuple[str, str, datetime]]:
        """(object name, upload id, initiated) of unfinished multipart uploads."""
        for page in self._pages("list_multipart_uploads", Prefix=prefix):
            for mpu in page.get("Uploads", []):
                yield mpu["Key"], mpu["UploadId"], mpu["Initiated"]

    def _keys(self) -> Iterator[str]:
        base = f"{self.prefix}{layout.ENGINES}"
        seen = set()
        for page in self._pages("list_objects_v2", Prefix=base, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                seen.add(common["Prefix"][len(base):].strip("/"))
        for name, _, _ in self._multipart_uploads(base):  # killed before any file completed
            seen.add(name[len(base):].split("/", 1)[0])
        yield from sorted(seen)

    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        newest: dict[str, datetime] = {}
        base = self._key_prefix(key)

        def saw(name: str, when: datetime) -> None:
            upload, slash, _ = name[len(base):].partition("/")
            if slash:
                newest[upload] = max(newest.get(upload, when), when)

        for page in self._pages("list_objects_v2", Prefix=base):
            for obj in page.get("Contents", []):
                saw(obj["Key"], obj["LastModified"])
        for name, _, initiated in self._multipart_uploads(base):
            saw(name, initiated)
        now = datetime.now(UTC)
        for upload, when in newest.items():
            yield upload, (now - when).total_seconds()

    def _uncommit(self, key: str, expected: bytes | None = None) -> Manifest | None:
        name = self._key_prefix(key) + MANIFEST
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=name,
                                           Range=f"bytes=0-{MAX_MANIFEST}")
            total = str(found.get("ContentRange", "")).rpartition("/")[2]
            if total.isdigit() and int(total) > MAX_MANIFEST:
                found["Body"].close()  # not kiln's: it is not set aside, nor read
                return None
            data = found["Body"].read(MAX_MANIFEST + 1)
            etag = found["ETag"]
            if expected is not None and data != expected:
                return None
            manifest = Manifest.model_validate_json(data)
        except ClientError as error:
            if error_code(error) in _MISSING:
                return None
            raise translate(error, f"read the manifest of {short_key(key)} in {self.uri}"
                            ) from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, f"read the manifest of {short_key(key)} in {self.uri}"
                            ) from error
        try:  # only that manifest: one a rebuild committed meanwhile stays
            self.client.delete_object(Bucket=self.bucket, Key=name, IfMatch=etag)
        except ClientError as error:
            if error_code(error) in (*_CONFLICT, "404", "NoSuchKey", "NotFound"):
                log.info("the manifest of %s changed as it was to be deleted: kept",
                         short_key(key))
                return None
            if error_code(error) != "NotImplemented":
                raise translate(error, f"delete the manifest of {short_key(key)} in "
                                f"{self.uri}") from error
            log.warning("%s does not support conditional deletes; comparing, then deleting "
                        "the manifest of %s", self.uri, short_key(key))
            if self.read_manifest(key) != manifest:
                return None
            self._call("delete the manifest", self.client.delete_object, Bucket=self.bucket,
                       Key=name)
        except (BotoCoreError, OSError) as error:
            raise translate(error, f"delete the manifest of {short_key(key)} in {self.uri}"
                            ) from error
        return manifest

    def _files(self, key: str, upload: str) -> dict[str, int]:
        prefix = f"{self._key_prefix(key)}{upload}/"
        return {o["Key"][len(prefix):]: int(o["Size"])
                for page in self._pages("list_objects_v2", Prefix=prefix)
                for o in page.get("Contents", [])}

    def _file_sha256(self, key: str, upload: str, path: str) -> str | None:
        what = f"read {path} of {self.engine_uri(key)}"
        digest = hashlib.sha256()
        try:
            found = self.client.get_object(Bucket=self.bucket,
                                           Key=f"{self._key_prefix(key)}{upload}/{path}")
            with contextlib.closing(found["Body"]) as body:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
        except ClientError as error:
            if error_code(error) in _MISSING:
                return None
            raise translate(error, what) from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, what) from error
        return digest.hexdigest()

    def _put_aside(self, key: str, upload: str, name: str, data: bytes) -> None:
        self._call(f"set {name} of {short_key(key)} aside", self.client.put_object,
                   Bucket=self.bucket, Key=self._aside_prefix(key, upload) + name, Body=data)

    def _move_aside(self, key: str, upload: str) -> None:
        prefix = f"{self._key_prefix(key)}{upload}/"
        aside = self._aside_prefix(key, upload) + layout.FILES
        names = [o["Key"] for page in self._pages("list_objects_v2", Prefix=prefix)
                 for o in page.get("Contents", [])]
        for name in names:  # server-side copies (multipart where large), all before deletes
            self._call(f"set {name} aside", self.client.copy,
                       CopySource={"Bucket": self.bucket, "Key": name}, Bucket=self.bucket,
                       Key=aside + name[len(prefix):])
        for start in range(0, len(names), 1000):
            self._call("delete what was set aside", self.client.delete_objects,
                       Bucket=self.bucket, Delete={"Quiet": True, "Objects": [
                           {"Key": n} for n in names[start:start + 1000]]})

    def _drop(self, key: str, name: str) -> None:
        self._call(f"delete {name} of {short_key(key)}", self.client.delete_object,
                   Bucket=self.bucket, Key=self._key_prefix(key) + name)

    def _remove(self, key: str, upload: str) -> None:
        if not upload or "/" in upload:
            raise InvalidInput(f"{upload!r} is not an upload id")
        prefix = f"{self._key_prefix(key)}{upload}/"
        for name, upload_id, _ in list(self._multipart_uploads(prefix)):
            self._call("abort an upload", self.client.abort_multipart_upload,
                       Bucket=self.bucket, Key=name, UploadId=upload_id)
        for page in self._pages("list_objects_v2", Prefix=prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                           Delete={"Objects": objects, "Quiet": True})

    def _write_used(self, key: str, data: bytes) -> None:
        self._call(f"mark {short_key(key)} used", self.client.put_object, Bucket=self.bucket,
                   Key=self._key_prefix(key) + USED, Body=data)

    def _used_age(self, key: str) -> float | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key_prefix(key) + USED)
        except ClientError as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise translate(error, f"read when {short_key(key)} was used in {self.uri}"
                            ) from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, f"read when {short_key(key)} was used in {self.uri}"
                            ) from error
        modified: datetime = head["LastModified"]
        return (datetime.now(UTC) - modified).total_seconds()

    def _used(self, key: str) -> tuple[float, bytes] | None:
        what = f"read when {short_key(key)} was used in {self.uri}"
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self._key_prefix(key) + USED,
                                           Range=f"bytes=0-{USED_BYTES - 1}")
            with contextlib.closing(found["Body"]) as body:
                data: bytes = body.read(USED_BYTES)
        except ClientError as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound", "InvalidRange"):
                return None
            raise translate(error, what) from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, what) from error
        modified: datetime = found["LastModified"]
        return (datetime.now(UTC) - modified).total_seconds(), data

    def _prune(self, key: str) -> None:
        self._call("delete the last-used marker", self.client.delete_object,
                   Bucket=self.bucket, Key=self._key_prefix(key) + USED)

    def _blob_name(self, name: str) -> str:
        if not name or any(p in ("", ".", "..") for p in name.split("/")):
            raise InvalidInput(f"{name!r} is not a blob name (relative, no '..')")
        return f"{self.prefix}cache/{name}"

    def get_blob(self, name: str, limit: int | None = None) -> bytes | None:
        return self._get(self._blob_name(name), f"read cache/{name}", limit)

    def put_blob(self, name: str, data: bytes) -> None:
        self._call(f"write cache/{name}", self.client.put_object, Bucket=self.bucket,
                   Key=self._blob_name(name), Body=data)
