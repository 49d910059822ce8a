"""The storage quota per owner: the bytes of one owner's uploads and artifacts together, STORAGE_QUOTA_BYTES.

Checked twice: before an upload starts (its byte limit becomes the room left, so a file that cannot fit is
refused as it streams, not after) and when a file is recorded, under a per-owner transaction lock, so
concurrent writers of one owner can never together pass the quota.
"""

from __future__ import annotations

from shared.core.errors import StorageQuotaExceeded
from shared.infra.db import Connection, Pool


def over_quota(*, used: int, quota: int) -> StorageQuotaExceeded:
    """Recording the file would take its owner past the storage quota; nothing is kept."""
    return StorageQuotaExceeded(
        f"your uploads and artifacts use {used} of your {quota} bytes of storage; delete some to make room",
        used=used,
        quota=quota,
    )


async def used_bytes(db: Pool | Connection, owner: str, *, besides: str | None = None) -> int:
    """Bytes stored for `owner`, not counting the file `besides` (an artifact about to be replaced)."""
    value = await db.fetchval(
        "SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = $1 AND id IS DISTINCT FROM $2", owner, besides
    )
    return int(value)


async def check(conn: Connection, owner: str, *, adding: int, file_id: str, quota: int) -> None:
    """Inside the recording transaction: serialise the owner's writers, then refuse a file that does not fit."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('conveyor.files:' || $1, 0))", owner)
    used = await used_bytes(conn, owner, besides=file_id)
    if used + adding > quota:
        raise over_quota(used=used, quota=quota)
