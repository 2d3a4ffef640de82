"""The engine store's contract, and the parts both backends share.

Layout (``kiln.contract.layout``): ``<store>/engines/<key>/<upload>/<files>`` holds the files
of one upload (a random id per writer, so two writers of a key never mix their files) and
``<store>/engines/<key>/manifest.json`` commits one upload: it is written last, only if no
manifest exists yet. No manifest, no engine; uploads no manifest names are garbage. An engine
found damaged is set aside under ``<store>/damaged/<key>/<upload>/``: kept, never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from kiln.contract import layout
from kiln.contract.key import short_key
from kiln.contract.manifest import MANIFEST, MAX_MANIFEST, FileEntry, Manifest, relative_path
from kiln.contract.provenance import ENVELOPE, MAX_ENVELOPE
from kiln.contract.warmup import ArtifactReport
from kiln.errors import IntegrityError, InvalidInput, NotFound, TooLarge, Unavailable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all)."""
Count = Callable[[int], None]
_T = TypeVar("_T")
CHUNK = 8 * 1024 * 1024
KEY_CHARS = frozenset("0123456789abcdef")


def check_key(key: str) -> str:
    """``key`` if it is an engine key (64 lowercase hex), else ``InvalidInput``."""
    if len(key) != 64 or not set(key) <= KEY_CHARS:
        raise InvalidInput(f"{key!r} is not an engine key (64 lowercase hex characters)")
    return key


def engine_files(src: Path) -> list[Path]:
    """Regular files under ``src`` (sorted); a top-level ``manifest.json`` is not one of them
    (the store writes its own)."""
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a directory of engine files")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p != src / MANIFEST)
    if not files:
        raise InvalidInput(f"{src} holds no files to store")
    return files


def _upload_id(upload: str) -> str:
    """``upload`` if it names one upload (a directory under the engine's), else
    ``InvalidInput``."""
    if not upload or "/" in upload or upload in (".", ".."):
        raise InvalidInput(f"{upload!r} is not an upload id")
    return upload


def _inside(root: Path, rel: str) -> Path:
    """Where file ``rel`` of an engine goes under ``root`` (resolved): ``IntegrityError`` if
    that is anywhere else (a ``..``, an absolute path, a link on the way)."""
    refused = IntegrityError(f"the manifest names {rel[:200]!r}, which is not a file inside "
                             f"{root}: refused, nothing written there")
    try:
        relative_path(rel)
    except ValueError:
        raise refused from None
    target = root / rel
    if target.is_symlink() or not target.parent.resolve().is_relative_to(root):
        raise refused
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Stopped(Exception):
    """Another file of the same transfer failed: this one stops too."""


class _Counter:
    """Thread-safe progress accumulation; once stopped, counting raises (so the other files
    of a failed transfer stop at their next chunk)."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.stopped = False
        self._lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        if self.stopped:
            raise _Stopped
        with self._lock:
            self.done += amount
            done = self.done
        if self.progress:
            self.progress(done, self.total)

    def each(self, workers: int, fn: Callable[[Any], _T], items: list[Any]) -> list[_T]:
        """``fn`` over ``items`` in a pool of ``workers``; the first failure stops the rest."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fn, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                error = future.exception() if future.done() and not future.cancelled() else None
                if error is not None:
                    self.stopped = True
                    for other in futures:
                        other.cancel()
                    raise error
            return [future.result() for future in futures]


class EngineStore(ABC):
    """Engines by key under ``<root>/engines/<key>/``; ``manifest.json`` commits one."""

    uri: str
    """The store's URI, ending in ``/``."""
    workers: int = 4
    """Files moved at once."""

    # -- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _put_file(self, key: str, upload: str, rel: str, path: Path, count: Count) -> str:
        """Store one file of an upload, return its sha256 (computed while reading it)."""

    @abstractmethod
    def _get_file(self, key: str, upload: str, entry: FileEntry, dest: Path,
                  count: Count) -> str:
        """Fetch one file into ``dest``, return the sha256 of the bytes written."""

    @abstractmethod
    def _commit(self, key: str, manifest: Manifest) -> bool:
        """Write the manifest unless one exists; False if another writer committed first."""

    @abstractmethod
    def read_manifest(self, key: str) -> Manifest | None:
        """The committed engine's manifest, or None: no manifest, no engine."""

    @abstractmethod
    def _get_object(self, key: str, name: str, limit: int) -> bytes | None:
        """A small object beside the manifest (``manifest.json`` itself, the provenance);
        ``TooLarge``, unread, above ``limit`` bytes."""

    @abstractmethod
    def _put_object(self, key: str, name: str, data: bytes) -> None:
        """Write (replace) a small object beside the manifest."""

    @abstractmethod
    def _keys(self) -> Iterator[str]:
        """Every key that has an engine directory, committed or not."""

    @abstractmethod
    def _uploads(self, key: str) -> Iterator[tuple[str, float]]:
        """(upload id, age in seconds of its newest file) under an engine directory."""

    @abstractmethod
    def _uncommit(self, key: str, expected: bytes | None = None) -> Manifest | None:
        """Delete the manifest, only if it is still the one just read (a manifest committed
        or replaced meanwhile stays), and, given ``expected``, only if it is those bytes; the
        manifest removed, or None if none was."""

    @abstractmethod
    def _files(self, key: str, upload: str) -> dict[str, int]:
        """The files of an upload as stored: relative path -> size."""

    @abstractmethod
    def _file_sha256(self, key: str, upload: str, path: str) -> str | None:
        """The sha256 of one stored file, read through (not kept); None if it is missing."""

    @abstractmethod
    def _put_aside(self, key: str, upload: str, name: str, data: bytes) -> None:
        """Write a small object under ``damaged/<key>/<upload>/``."""

    @abstractmethod
    def _move_aside(self, key: str, upload: str) -> None:
        """Move an upload's files to ``damaged/<key>/<upload>/files/``: each is there before
        it leaves ``engines/``."""

    @abstractmethod
    def _drop(self, key: str, name: str) -> None:
        """Delete a small object beside the manifest (gone already is fine)."""

    @abstractmethod
    def _remove(self, key: str, upload: str) -> None:
        """Remove one upload's files (and its unfinished multipart uploads), nothing else."""

    def _prune(self, key: str) -> None:  # noqa: B027 (a hook; most backends need none)
        """Drop what is left of an engine directory with no manifest and no uploads."""

    @abstractmethod
    def _write_used(self, key: str, data: bytes) -> None:
        """Write (replace) ``<root>/engines/<key>/last-used``."""

    @abstractmethod
    def _used_age(self, key: str) -> float | None:
        """Seconds since ``last-used`` was written (by the store's clock), or None."""

    @abstractmethod
    def _used(self, key: str) -> tuple[float, bytes] | None:
        """``last-used``: seconds since it was written, and what it says; or None."""

    @abstractmethod
    def get_blob(self, name: str, limit: int | None = None) -> bytes | None:
        """A small object under ``<root>/cache/`` (e.g. a TensorRT timing cache), or None;
        with ``limit``, ``TooLarge`` (unread) above that many bytes."""

    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        """Write (replace) a small object under ``<root>/cache/``."""

    def close(self) -> None:  # noqa: B027 (a hook; most backends hold nothing)
        """Release what the store holds (thread pools); it stays usable."""

    def __enter__(self) -> EngineStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- the contract --------------------------------------------------------------------------

    def engine_uri(self, key: str) -> str:
        """Where engine ``key`` lives (its directory, ending in ``/``)."""
        return layout.engine_uri(self.uri, check_key(key))

    @staticmethod
    def _parse_manifest(key: str, data: bytes | None) -> Manifest | None:
        """A stored manifest, or None when there is none or it does not parse (garbled or
        written by someone else: no engine; a build replaces it)."""
        if data is None:
            return None
        try:
            return Manifest.model_validate_json(data)
        except ValueError as error:
            log.warning("the manifest of engine %s does not parse; it counts as absent: %s",
                        short_key(key), str(error).splitlines()[0])
            return None

    def has(self, key: str) -> bool:
        """Whether engine ``key`` is committed."""
        return self.read_manifest(check_key(key)) is not None

    def read_manifest_bytes(self, key: str) -> bytes | None:
        """The committed manifest exactly as stored (what a signature covers), or None;
        ``TooLarge`` (an ``Untrusted``), unread, above ``MAX_MANIFEST`` bytes."""
        return self._get_object(check_key(key), MANIFEST, MAX_MANIFEST)

    def read_envelope(self, key: str) -> bytes | None:
        """The engine's signed provenance (a DSSE envelope), or None; ``TooLarge``, unread,
        above ``MAX_ENVELOPE`` bytes."""
        return self._get_object(check_key(key), ENVELOPE, MAX_ENVELOPE)

    def _manifest_there(self, key: str) -> bool:
        """Whether any manifest is stored for ``key`` (kiln's or not, too large included)."""
        try:
            return self.read_manifest_bytes(key) is not None
        except TooLarge:
            return True

    @staticmethod
    def _too_large(key: str, error: TooLarge) -> None:
        log.warning("the manifest of engine %s counts as absent: %s", short_key(key),
                    error.message)

    def write_envelope(self, key: str, data: bytes) -> None:
        """Write (replace) the engine's signed provenance."""
        self._put_object(check_key(key), ENVELOPE, data)

    def upload(self, key: str, src_dir: Path, *, inputs: dict[str, Any] | None = None,
               versions: dict[str, str] | None = None, build_seconds: float | None = None,
               progress: Progress | None = None,
               keep: Callable[[str], bool] | None = None,
               upload_id: str | None = None, built: dict[str, bool] | None = None,
               overridden: list[str] | None = None,
               artifacts: ArtifactReport | None = None) -> Manifest:
        """Store ``src_dir`` as engine ``key``: files in parallel, hashed while read, the
        manifest last.

        When another writer committed the same key first (before or during this upload), its
        manifest is returned and this upload's files are left to garbage collection: the store
        keeps one whole engine. ``keep`` decides whether a manifest found first counts (the
        builder keeps only a signed one); one that does not is replaced by this upload's.
        ``upload_id`` names this upload (random if unset), so a caller can tell its own
        manifest from another writer's.
        """
        check_key(key)
        existing = self.read_manifest(key)
        there = existing is not None or self._manifest_there(key)
        if existing is None and there:  # another writer may have committed between the calls
            existing = self.read_manifest(key)
        if existing is not None and (keep is None or keep(key)):
            log.info("engine %s is already in %s", short_key(key), self.uri)
            return existing
        # An unparsable manifest counts as absent, and is replaced like an unsigned one.
        replace = there
        files = engine_files(src_dir)
        sizes = [p.stat().st_size for p in files]
        counter = _Counter(sum(sizes), progress)
        rels = [p.relative_to(src_dir).as_posix() for p in files]
        upload = upload_id or uuid.uuid4().hex[:16]
        log.info("uploading engine %s (%d files, %d bytes) to %s as upload %s", short_key(key),
                 len(files), sum(sizes), self.uri, upload)
        digests = counter.each(self.workers,
                               lambda a: self._put_file(key, upload, a[0], a[1], counter),
                               list(zip(rels, files, strict=True)))
        manifest = Manifest(
            key=key, inputs=inputs or {}, versions=versions or {}, upload=upload,
            files=[FileEntry(path=r, size=s, sha256=d)
                   for r, s, d in zip(rels, sizes, digests, strict=True)],
            total_bytes=sum(sizes), build_seconds=build_seconds, built=built or {},
            overridden=overridden or [], artifacts=artifacts)
        if replace:
            log.info("replacing the unsigned manifest of engine %s in %s with upload %s",
                     short_key(key), self.uri, upload)
            self._put_object(key, MANIFEST, manifest.to_json())
            return manifest
        for _ in range(3):  # a manifest deleted between the two calls: commit again
            if self._commit(key, manifest):
                return manifest
            winner = self.read_manifest(key)
            if winner is not None and (keep is None or keep(key)):
                log.info("engine %s was committed by another writer first (upload %s)",
                         short_key(key), winner.upload)
                return winner
            if winner is not None or self._manifest_there(key):
                self._put_object(key, MANIFEST, manifest.to_json())
                return manifest
        raise Unavailable(f"engine {short_key(key)} could not be committed to {self.uri}: its "
                          "manifest keeps appearing and disappearing")

    def download(self, key: str, dest_dir: Path, *, progress: Progress | None = None,
                 manifest: Manifest | None = None) -> Manifest:
        """Fetch engine ``key`` into ``dest_dir`` (with its ``manifest.json``), checking every
        file's sha256; a mismatch raises ``IntegrityError`` naming the file and both digests.
        ``manifest``: the one to fetch (already read and verified), else the stored one."""
        manifest = manifest or self.read_manifest(check_key(key))
        if manifest is None:
            raise NotFound(f"engine {key} is not in {self.uri} (no manifest)")
        counter = _Counter(manifest.total_bytes, progress)
        dest_dir.mkdir(parents=True, exist_ok=True)
        root = dest_dir.resolve()

        def fetch(entry: FileEntry) -> None:
            target = _inside(root, entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            actual = self._get_file(key, manifest.upload, entry, target, counter)
            if actual != entry.sha256:
                target.unlink(missing_ok=True)
                raise IntegrityError(
                    f"{entry.path} of engine {short_key(key)} in {self.uri} is corrupt: its sha256 "
                    f"is {actual}, the manifest says {entry.sha256}")

        counter.each(self.workers, fetch, manifest.files)
        (dest_dir / MANIFEST).write_bytes(manifest.to_json())
        return manifest

    def file_sizes(self, key: str, upload: str) -> dict[str, int]:
        """The files of one upload of engine ``key`` as stored: relative path -> size."""
        return self._files(check_key(key), _upload_id(upload))

    def file_sha256(self, key: str, upload: str, path: str) -> str | None:
        """The sha256 of one file of an upload, streamed from the store (nothing is kept);
        None if it is missing."""
        return self._file_sha256(check_key(key), _upload_id(upload), path)

    def set_aside(self, key: str, manifest: bytes, finding: dict[str, Any]) -> str | None:
        """Take a damaged engine out of ``engines/``, kept for evidence under ``damaged/<key>/
        <upload>/`` (never served, never collected): its manifest, provenance and
        ``finding.json`` are written there first; then the manifest is taken away, only if
        it is still ``manifest`` (an engine committed meanwhile stays); then the upload's files
        move to ``files/`` beside them. Where the evidence is, or None when the stored
        manifest was no longer that one (nothing is taken away then)."""
        parsed = self._parse_manifest(check_key(key), manifest)
        if parsed is None:
            raise InvalidInput(f"the manifest of engine {short_key(key)} to set aside does not "
                               "parse")
        upload = _upload_id(parsed.upload)
        envelope = self.read_envelope(key)
        self._put_aside(key, upload, MANIFEST, manifest)
        if envelope is not None:
            self._put_aside(key, upload, ENVELOPE, envelope)
        self._put_aside(key, upload, layout.FINDING,
                        (json.dumps(finding, indent=2, sort_keys=True) + "\n").encode())
        if self._uncommit(key, manifest) is None:
            return None
        self._drop(key, ENVELOPE)
        self._move_aside(key, upload)
        log.warning("set engine %s aside in %s (upload %s): %s", short_key(key),
                    layout.damaged_uri(self.uri, key, upload), upload,
                    finding.get("message", "damaged"))
        return layout.damaged_uri(self.uri, key, upload)

    def list_keys(self) -> list[str]:
        """Keys of committed engines, sorted."""
        return sorted(k for k in self._keys() if self.read_manifest(k) is not None)

    def delete(self, key: str) -> bool:
        """Remove engine ``key``: its manifest first, only if it is still the one read just
        before (readers stop seeing it), its provenance, then the files of the upload that
        manifest names. Other uploads of the key (a rebuild under way) are left alone: their
        manifest commits whole. False if there was no manifest to remove."""
        manifest = self._uncommit(check_key(key))
        if manifest is None:
            return False
        self._drop(key, ENVELOPE)
        self._remove(key, manifest.upload)
        if self.read_manifest(key) is None and not any(True for _ in self._uploads(key)):
            self._prune(key)
        return True

    def mark_used(self, key: str, by: str, *, unless_within: float = 0.0,
                  every: float | None = None) -> bool:
        """Record that engine ``key`` is in use (``by``: who, for people reading it; ``every``:
        how often the writer re-marks what it uses, so a GC keeps the engine for at least
        two of those), unless it was marked less than ``unless_within`` seconds ago;
        whether it wrote."""
        age = self._used_age(check_key(key)) if unless_within else None
        if age is not None and age < unless_within:
            return False
        record: dict[str, Any] = {"by": by}
        if every is not None:
            record["every"] = every
        self._write_used(key, (json.dumps(record) + "\n").encode())
        return True

    def last_used(self, key: str) -> tuple[float, float | None] | None:
        """Seconds since engine ``key`` was last marked used, and how often its marker's
        writer re-marks (None if it did not say); None if it has no marker."""
        found = self._used(check_key(key))
        if found is None:
            return None
        age, data = found
        try:
            every = json.loads(data).get("every")
        except (ValueError, AttributeError):
            every = None
        return age, float(every) if isinstance(every, int | float) else None

    def unused_for(self, key: str) -> float | None:
        """Seconds since engine ``key`` was last marked used (else since it was committed);
        None if it is not committed."""
        age = self._used_age(check_key(key))
        if age is not None:
            return age
        manifest = self.read_manifest(key)
        if manifest is None:
            return None
        created = manifest.created_at
        return (datetime.now(UTC) - (created if created.tzinfo else created.replace(
            tzinfo=UTC))).total_seconds()

    def collect_garbage(self, older_than_seconds: float) -> list[str]:
        """Remove uploads no manifest commits, once older than the threshold; returns
        ``<key>/<upload>`` of each removed.

        The age of an upload is that of its newest file, so the threshold must exceed the
        longest a single file can take to store (hours, not seconds, outside tests).
        """
        removed = []
        for key in list(self._keys()):
            manifest = self.read_manifest(key)
            left = 0
            for upload, age in list(self._uploads(key)):
                if manifest is not None and upload == manifest.upload:
                    continue
                if age >= older_than_seconds:
                    if manifest is None:  # committed meanwhile? then this upload is the engine
                        manifest = self.read_manifest(key)
                        if manifest is not None and upload == manifest.upload:
                            continue
                    self._remove(key, upload)
                    removed.append(f"{key}/{upload}")
                else:
                    left += 1
            if manifest is None and not left:
                self._prune(key)
        if removed:
            log.info("garbage collection removed %d uploads from %s", len(removed), self.uri)
        return removed
