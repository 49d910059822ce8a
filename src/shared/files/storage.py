"""Uploads and artifacts on disk under STORAGE_DIR, recorded in the ledger's `files` table.

Paths come from ids only (never from a client's filename); every file is written to a temp file in its final
folder, hashed as it goes, and renamed into place only once complete, so a reader never sees half a file.
Files are created 0600 and the folders 0700, whatever the umask: they hold tenants' data, and only the
service's own account may read them. Blocking file calls run in threads so a large upload never stalls the
event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

import asyncpg

from shared.core.ids import well_formed_id
from shared.core.settings import StorageConfig
from shared.files import storage_quota
from shared.infra import pages
from shared.infra.db import Pool

Kind = Literal["upload", "artifact"]
_FOLDERS: dict[Kind, str] = {"upload": "uploads", "artifact": "artifacts"}
_FLUSH_BYTES = 1024 * 1024  # gather small chunks so each thread hop writes about this much
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_FILENAME_CHARS = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;\s*[\w.+-]+=(\"[^\"\\\x00-\x1f]*\"|[\w.+-]+))*$", re.ASCII
)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    owner: str
    kind: Kind
    size: int
    sha256: str
    content_type: str
    filename: str
    path: Path  # absolute path of the finished file on disk
    job_id: str | None  # the job that produced an artifact; None for uploads
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record, config: StorageConfig) -> StoredFile:
        fields = dict(row.items())
        fields["path"] = _root(config) / fields["path"]
        return cls(**fields)


class FileTooLarge(Exception):
    """A write would take the file past its size limit; the caller answers 413 (the file is discarded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes")
        self.limit = limit


def new_upload_id() -> str:
    return "upl_" + secrets.token_urlsafe(18)


def artifact_id_for(job_id: str) -> str:
    """Derived from the job id, so a job knows its artifact's URL before writing and a re-run keeps it."""
    digest = hashlib.sha256(job_id.encode()).digest()[:18]
    return "art_" + base64.urlsafe_b64encode(digest).decode()


def safe_filename(name: str | None, default: str) -> str:
    """A client's filename reduced to a display name: no folders, no control characters, at most 255 chars."""
    base = re.split(r"[/\\]", name or "")[-1]
    cleaned = "".join(c for c in base if not unicodedata.category(c).startswith("C")).strip()
    cleaned = cleaned[:MAX_FILENAME_CHARS].strip()
    return default if cleaned in ("", ".", "..") else cleaned


def safe_content_type(value: str | None) -> str:
    """The media type as given when well-formed (parameters such as charset kept), else octet-stream."""
    value = (value or "").strip()
    return value if len(value) <= 255 and _MEDIA_TYPE.match(value) else DEFAULT_CONTENT_TYPE


def _root(config: StorageConfig) -> Path:
    return config.dir.absolute()


class _TempFile:
    """A temp file in its final folder, written and hashed off the event loop.

    Every blocking call holds one lock, so a discard after a cancelled write waits for that write's thread.
    """

    def __init__(
        self, folder: Path, file_id: str, limit: int | None = None, over: Callable[[], Exception] | None = None
    ) -> None:
        self.folder = folder
        self.path = folder / f".{file_id}.{secrets.token_hex(6)}.tmp"
        self.size = 0
        self._limit = limit
        self._over = over  # the error a write past `limit` raises (FileTooLarge by default)
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[[], _T]) -> _T:
        def locked() -> _T:
            with self._lock:
                return fn()

        return await asyncio.to_thread(locked)

    async def open(self) -> None:
        def create() -> None:
            # The storage root and its folder are ours to make private; the root's parents are the operator's.
            self.folder.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self.folder.mkdir(mode=DIR_MODE, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
            self._file = os.fdopen(fd, "wb")

        await self._run(create)

    async def write(self, chunk: bytes) -> None:
        if self._limit is not None and self.size + len(chunk) > self._limit:
            raise self._over() if self._over is not None else FileTooLarge(self._limit)
        self.size += len(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        file, digest = self._file, self._hash
        assert file is not None  # noqa: S101 - open() always runs first

        def write() -> None:
            for chunk in chunks:
                digest.update(chunk)
                file.write(chunk)

        await self._run(write)

    async def finish(self, final: Path) -> str:
        """Flush, sync and rename into `final`; returns the sha256 (hex)."""
        await self._flush()
        file = self._file
        assert file is not None  # noqa: S101 - open() always runs first

        def complete() -> None:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            os.replace(self.path, final)

        await self._run(complete)
        return self._hash.hexdigest()

    async def discard(self) -> None:
        def remove() -> None:
            if self._file is not None:
                self._file.close()
            self.path.unlink(missing_ok=True)

        # Shielded: a second cancellation must not leave the temp file behind.
        await asyncio.shield(self._run(remove))


class _Writer:
    def __init__(self, temp: _TempFile) -> None:
        self._temp = temp
        self._stored: StoredFile | None = None

    async def write(self, chunk: bytes) -> None:
        """Raises FileTooLarge past MAX_UPLOAD_BYTES, StorageQuotaExceeded past the owner's room (uploads only)."""
        await self._temp.write(chunk)

    @property
    def size(self) -> int:
        return self._temp.size

    @property
    def stored(self) -> StoredFile:
        """The recorded file; only after the `async with` block ended cleanly."""
        if self._stored is None:
            raise RuntimeError("the file is recorded only when its `async with` block ends without an error")
        return self._stored


_W = TypeVar("_W", bound=_Writer)


class ArtifactWriter(_Writer):
    def __init__(self, temp: _TempFile, artifact_id: str) -> None:
        super().__init__(temp)
        self.artifact_id = artifact_id


class UploadWriter(_Writer):
    def __init__(self, temp: _TempFile, upload_id: str) -> None:
        super().__init__(temp)
        self.upload_id = upload_id


async def _remove(path: Path) -> None:
    await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))


_INSERT = """
    INSERT INTO files (id, owner, kind, size, sha256, content_type, filename, path, job_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


@dataclass(frozen=True, slots=True)
class _Meta:
    id: str
    owner: str
    kind: Kind
    job_id: str | None
    filename: str
    content_type: str


async def _record(pool: Pool, config: StorageConfig, temp: _TempFile, meta: _Meta) -> StoredFile:
    """Rename the finished temp file into place under a fresh name and record it; a replaced artifact's old
    file is removed after the commit. Nothing is left on disk when the record fails."""
    relative = f"{_FOLDERS[meta.kind]}/{meta.id}.{secrets.token_hex(4)}"
    sha256 = await temp.finish(_root(config) / relative)
    values = (meta.id, meta.owner, meta.kind, temp.size, sha256, meta.content_type, meta.filename, relative)
    replaced: str | None = None
    try:
        async with pool.acquire() as conn, conn.transaction():
            await storage_quota.check(conn, meta.owner, adding=temp.size, file_id=meta.id, quota=config.quota_bytes)
            row = await conn.fetchrow(_INSERT + " ON CONFLICT (id) DO NOTHING RETURNING *", *values, meta.job_id)
            if row is None:  # a re-run of the artifact's job: same id, new bytes (the row lock orders re-runs)
                replaced = await conn.fetchval("SELECT path FROM files WHERE id = $1 FOR UPDATE", meta.id)
                row = await conn.fetchrow(
                    """
                    UPDATE files SET owner = $2, size = $3, sha256 = $4, content_type = $5, filename = $6, path = $7
                    WHERE id = $1 RETURNING *
                    """,
                    meta.id, meta.owner, temp.size, sha256, meta.content_type, meta.filename, relative,
                )  # fmt: skip
            assert row is not None  # noqa: S101 - the row exists: inserted, or locked above
    except BaseException:
        await _remove(_root(config) / relative)
        raise
    if replaced and replaced != relative:
        await _remove(_root(config) / replaced)
    return StoredFile.from_row(row, config)


@contextlib.asynccontextmanager
async def _recorded(pool: Pool, config: StorageConfig, writer: _W, meta: _Meta) -> AsyncIterator[_W]:
    """Open the writer's temp file; record it on a clean exit, discard it otherwise."""
    await writer._temp.open()
    try:
        yield writer
        writer._stored = await _record(pool, config, writer._temp, meta)
    finally:
        if writer._stored is None:
            await writer._temp.discard()


@contextlib.asynccontextmanager
async def write_artifact(
    pool: Pool, config: StorageConfig, *, owner: str, job_id: str, filename: str, content_type: str
) -> AsyncIterator[ArtifactWriter]:
    """Streams into a temp file under STORAGE_DIR, hashing as it goes; on clean exit renames it into place
    atomically and records it (one artifact per job_id: a re-run replaces the file and keeps the same id);
    on error removes the temp file and records nothing. Past the owner's quota: StorageQuotaExceeded at the end."""
    artifact_id = artifact_id_for(job_id)
    temp = _TempFile(_root(config) / _FOLDERS["artifact"], artifact_id)
    meta = _Meta(
        artifact_id, owner, "artifact", job_id, safe_filename(filename, "artifact"), safe_content_type(content_type)
    )
    async with _recorded(pool, config, ArtifactWriter(temp, artifact_id), meta) as writer:
        yield writer


@contextlib.asynccontextmanager
async def write_upload(
    pool: Pool, config: StorageConfig, *, owner: str, filename: str | None, content_type: str | None
) -> AsyncIterator[UploadWriter]:
    """Like write_artifact for a client's upload, with a fresh id: writes past MAX_UPLOAD_BYTES raise
    FileTooLarge, and past the room left in the owner's quota StorageQuotaExceeded (checked again when recorded)."""
    upload_id = new_upload_id()
    used = await storage_quota.used_bytes(pool, owner)
    room = config.quota_bytes - used
    over: Callable[[], Exception] | None
    if room < config.max_upload_bytes:
        limit, over = room, partial(storage_quota.over_quota, used=used, quota=config.quota_bytes)
    else:
        limit, over = config.max_upload_bytes, None
    temp = _TempFile(_root(config) / _FOLDERS["upload"], upload_id, limit, over=over)
    meta = _Meta(upload_id, owner, "upload", None, safe_filename(filename, "upload"), safe_content_type(content_type))
    async with _recorded(pool, config, UploadWriter(temp, upload_id), meta) as writer:
        yield writer


async def find_file(
    pool: Pool, config: StorageConfig, kind: Kind, file_id: str, *, owner: str | None
) -> StoredFile | None:
    """owner=None finds anyone's (admin); otherwise only that owner's; None when absent or not theirs."""
    if not well_formed_id(file_id):
        return None
    row = await pool.fetchrow(
        "SELECT * FROM files WHERE id = $1 AND kind = $2 AND ($3::text IS NULL OR owner = $3)", file_id, kind, owner
    )
    return None if row is None else StoredFile.from_row(row, config)


async def delete_file(pool: Pool, config: StorageConfig, stored: StoredFile) -> None:
    """Forget the row first: a file left behind by a failed unlink is only wasted space, never a dangling row.
    The path comes from the deleted row, so a re-run that replaced an artifact meanwhile loses its new file."""
    path = await pool.fetchval("DELETE FROM files WHERE id = $1 RETURNING path", stored.id)
    if path is not None:
        await _remove(_root(config) / path)


async def list_files(
    pool: Pool, config: StorageConfig, kind: Kind, *, owner: str | None, limit: int, cursor: str | None
) -> tuple[list[StoredFile], str | None]:
    """Newest first, keyset-paginated on (created_at, id) like the job list; owner=None lists everyone's."""
    return await pages.newest_first(
        pool, "files", lambda row: StoredFile.from_row(row, config),
        equal={"kind": kind, "owner": owner}, limit=limit, cursor=cursor, columns=pages.columns_of(StoredFile),
    )  # fmt: skip


async def remove_stale_temp_files(config: StorageConfig, *, older_than_s: float = 86400.0) -> int:
    """Delete temp files a killed process left behind (a write that ends, well or badly, never leaves one);
    only those untouched for `older_than_s`, so writes in progress elsewhere are spared. Returns the count."""

    def sweep() -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in _FOLDERS.values():
            for path in (_root(config) / folder).glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed

    return await asyncio.to_thread(sweep)
