"""Parallel S3 transfers that hash the bytes they move.

Uploads read a file once, in order, hashing each part as it is read, while a shared pool
sends the parts (multipart above one part's size). Downloads fetch ranges in parallel,
written in place, and hash the file in order as the ranges land; a broken connection resumes
from the last byte received. Memory stays bounded: at most ``2 * concurrency`` parts are
held at once, and ranges stream through 1 MiB buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kiln.errors import NotFound, TooLarge, Unavailable, WeightsChanged
from kiln.s3.client import error_code, translate

log = logging.getLogger(__name__)

MIB = 1 << 20
PART_BYTES = 16 * MIB
"""Part size of a multipart upload (more for files beyond 10 000 parts); files up to this
size go in one PUT."""
RANGE_BYTES = 64 * MIB
"""Range size of a parallel download; files up to this size come in one GET."""
MAX_PARTS = 10_000
STREAM_CHUNK = MIB
HASH_CHUNK = 8 * MIB
READ_ATTEMPTS = 5
"""Connections broken mid-body that one range survives (each resumes where it stopped)."""

Count = Callable[[int], None]
Sink = Callable[[int, bytes], None]


class _SizeDiffers(Exception):
    """The object is not the size the caller expected: read it whole instead."""


class _Stopped(Exception):
    """Another range of the same download failed: this one stops too."""


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class Transfers:
    """Uploads and downloads through one pool of part/range workers (shared by the files a
    store moves at once)."""

    def __init__(self, client: Any, *, concurrency: int = 10, part_bytes: int = PART_BYTES,
                 range_bytes: int = RANGE_BYTES) -> None:
        self.client = client
        self.part_bytes, self.range_bytes = part_bytes, range_bytes
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="kiln-s3")
        self.slots = threading.BoundedSemaphore(2 * concurrency)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- uploads -----------------------------------------------------------------------------

    def upload(self, path: Path, bucket: str, key: str, *, what: str, count: Count) -> str:
        """Store the file at ``s3://bucket/key``; returns its sha256 (hashed while read)."""
        digest = hashlib.sha256()
        with path.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            if size <= self.part_bytes:
                data = src.read()
                digest.update(data)
                self._call(what, self.client.put_object, Bucket=bucket, Key=key, Body=data)
                count(len(data))
                return digest.hexdigest()
            part = max(self.part_bytes, _round_up(-(-size // MAX_PARTS), MIB))
            upload_id = self._call(what, self.client.create_multipart_upload, Bucket=bucket,
                                   Key=key, ChecksumAlgorithm="CRC32")["UploadId"]
            try:
                parts = self._send_parts(src, part, digest, bucket, key, upload_id, what, count)
                self._call(what, self.client.complete_multipart_upload, Bucket=bucket, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": parts})
            except BaseException:
                self._abort(bucket, key, upload_id)
                raise
        return digest.hexdigest()

    def _send_parts(self, src: Any, part: int, digest: Any, bucket: str, key: str,
                    upload_id: str, what: str, count: Count) -> list[dict[str, Any]]:
        futures: list[Future[dict[str, Any]]] = []
        failed: list[BaseException] = []

        def settled(future: Future[dict[str, Any]]) -> None:
            self.slots.release()
            error = None if future.cancelled() else future.exception()
            if error is not None:
                failed.append(error)

        try:
            number = 0
            while True:
                while not self.slots.acquire(timeout=0.2):  # bounded memory: wait for a slot
                    if failed:
                        raise failed[0]
                if failed:
                    self.slots.release()
                    raise failed[0]
                try:
                    chunk = src.read(part)
                except BaseException:
                    self.slots.release()
                    raise
                if not chunk:
                    self.slots.release()
                    break
                digest.update(chunk)
                number += 1
                future = self.pool.submit(self._part, bucket, key, upload_id, number, chunk,
                                          f"{what} (part {number})", count)
                future.add_done_callback(settled)
                futures.append(future)
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def _part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes,
              what: str, count: Count) -> dict[str, Any]:
        sent = self._call(what, self.client.upload_part, Bucket=bucket, Key=key,
                          UploadId=upload_id, PartNumber=number, Body=data,
                          ChecksumAlgorithm="CRC32")
        count(len(data))
        part = {"PartNumber": number, "ETag": sent["ETag"]}
        if sent.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = sent["ChecksumCRC32"]
        return part

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as error:  # garbage collection retries it
            log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket,
                        key, error)

    # -- downloads ---------------------------------------------------------------------------

    def download(self, bucket: str, key: str, dest: Path, *, size: int, what: str,
                 count: Count, if_match: str | None = None) -> str:
        """Fetch ``s3://bucket/key`` (expected: ``size`` bytes) into ``dest``; returns the
        sha256 of what was written. ``if_match`` (an ETag) makes a changed object raise
        ``WeightsChanged``."""
        if size > self.range_bytes:
            try:
                return self._ranged(bucket, key, dest, size, what, count, if_match)
            except _SizeDiffers:
                log.warning("%s: not the size expected (%d bytes); reading it whole", what,
                            size)
        digest = hashlib.sha256()
        with dest.open("wb") as out:
            def sink(_offset: int, data: bytes) -> None:
                digest.update(data)
                out.write(data)
                count(len(data))

            stream(self.client, bucket, key, 0, None, None, sink, what, if_match)
        return digest.hexdigest()

    def _ranged(self, bucket: str, key: str, dest: Path, size: int, what: str, count: Count,
                if_match: str | None) -> str:
        step = max(self.range_bytes, _round_up(-(-size // MAX_PARTS), MIB))
        starts = list(range(0, size, step))
        ends: list[int | None] = [*starts[1:], None]  # the last range reads to the end
        digest = hashlib.sha256()
        stop = threading.Event()
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            def sink(offset: int, data: bytes) -> None:
                if stop.is_set():
                    raise _Stopped
                os.pwrite(fd, data, offset)
                count(len(data))

            futures = [self.pool.submit(stream, self.client, bucket, key, start, end, size, sink,
                                        f"{what} (bytes {start}-)", if_match)
                       for start, end in zip(starts, ends, strict=True)]
            try:
                for start, end, future in zip(starts, ends, futures, strict=True):
                    future.result()
                    position = start  # hash in order, trailing the ranges as they land
                    while end is None or position < end:
                        wanted = HASH_CHUNK if end is None else min(HASH_CHUNK, end - position)
                        data = os.pread(fd, wanted, position)
                        if not data:
                            break
                        digest.update(data)
                        position += len(data)
            except BaseException:
                stop.set()
                for pending in futures:
                    pending.cancel()
                wait(futures)
                raise
        finally:
            os.close(fd)
        return digest.hexdigest()

    @staticmethod
    def _call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, OSError) as error:
            raise translate(error, what) from error


def stream(client: Any, bucket: str, key: str, start: int, end: int | None, size: int | None,
            sink: Sink, what: str, if_match: str | None) -> None:
    """Read bytes ``[start, end)`` (``end`` None: to the end) into ``sink(offset, data)``,
    resuming where a broken connection stopped; ``size`` is checked when given."""
    offset, breaks, etag = start, 0, if_match
    while True:
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if offset or end is not None:
            request["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
        if etag:
            request["IfMatch"] = etag
        try:
            response = client.get_object(**request)
        except ClientError as error:
            code = error_code(error)
            if code in ("PreconditionFailed", "412"):
                raise WeightsChanged(f"{what}: the object changed while it was being read "
                                     f"(ETag no longer {etag})") from error
            if code == "InvalidRange" and offset > start:
                return  # the break came after the last byte
            if code == "InvalidRange" and size is not None:
                raise _SizeDiffers from error
            raise translate(error, what) from error
        except (BotoCoreError, OSError) as error:
            raise translate(error, what) from error
        total = str(response.get("ContentRange", "")).rpartition("/")[2]
        if size is not None and total.isdigit() and int(total) != size:
            raise _SizeDiffers
        etag = etag or response.get("ETag")  # a resumed read must see the same object
        body = response["Body"]
        while True:
            try:
                data = body.read(STREAM_CHUNK)
            except (BotoCoreError, OSError) as error:  # the connection broke
                breaks += 1
                if breaks >= READ_ATTEMPTS:
                    raise Unavailable(f"{what}: the connection broke {breaks} times; "
                                      f"last: {error}") from error
                log.warning("%s: connection broke at byte %d (%s); resuming", what,
                            offset, error)
                time.sleep(min(0.25 * 2**breaks, 4.0))
                break
            if not data:
                return
            sink(offset, data)
            offset += len(data)


def read_object(client: Any, bucket: str, key: str, *, what: str,
                limit: int | None = None) -> bytes | None:
    """A small object's bytes (resuming a broken read), or None when it does not exist. With
    ``limit``: one GET of at most ``limit + 1`` bytes (a range), whose answer's size is
    checked before its body is read; a larger object is ``TooLarge``, unread."""
    if limit is not None:
        return _read_limited(client, bucket, key, what, limit)
    parts: list[bytes] = []
    try:
        stream(client, bucket, key, 0, None, None, lambda _o, data: parts.append(data), what,
               None)
    except NotFound as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and error_code(cause) in ("NoSuchKey", "404"):
            return None
        raise
    return b"".join(parts)


def _read_limited(client: Any, bucket: str, key: str, what: str, limit: int) -> bytes | None:
    parts: list[bytes] = []
    try:
        try:
            response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit}")
        except ClientError as error:
            if error_code(error) != "InvalidRange":
                raise
            response = client.get_object(Bucket=bucket, Key=key)  # empty: no byte 0
        total = str(response.get("ContentRange", "")).rpartition("/")[2]
        size = int(total) if total.isdigit() else int(response.get("ContentLength") or 0)
        body = response["Body"]
        if size > limit:
            body.close()  # not one byte of it read
            raise TooLarge(f"{what}: the object is {size} bytes, more than kiln ever writes "
                           f"there ({limit}): not read")
        got = 0
        with contextlib.suppress(BotoCoreError, OSError), body:  # a break: resumed below
            while got < size and (chunk := body.read(min(STREAM_CHUNK, size - got))):
                parts.append(chunk)
                got += len(chunk)
        if got < size:
            stream(client, bucket, key, got, None, size, lambda _o, data: parts.append(data),
                   what, response.get("ETag"))
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise translate(error, what) from error
    except (BotoCoreError, OSError) as error:
        raise translate(error, what) from error
    except _SizeDiffers as error:
        raise Unavailable(f"{what}: the object changed while it was being read") from error
    return b"".join(parts)
