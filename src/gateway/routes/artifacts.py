"""`/api/v1/artifacts` routes: stream a job's file to its owner, or delete it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import BinaryIO
from urllib.parse import quote

from aiohttp import web

from gateway.api_docs import BINARY, NO_CONTENT, Body, Header
from gateway.keys import PG_POOL, PRINCIPAL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.errors import NotFound
from shared.files import storage

routes = Routes("files")

CHUNK_BYTES = 256 * 1024
_NOT_PLAIN_ASCII = re.compile(r'[^\x20-\x7e]|["\\%]')


def content_disposition(filename: str) -> str:
    """RFC 6266: a plain-ASCII fallback for old clients, the exact name in `filename*` (RFC 8187)."""
    fallback = _NOT_PLAIN_ASCII.sub("_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in header.split(","))


async def _find(request: web.Request, artifact_id: str) -> storage.StoredFile | None:
    return await storage.find_file(
        request.app[PG_POOL], request.app[SETTINGS].storage, "artifact", artifact_id,
        owner=request[PRINCIPAL].visible_owner,
    )  # fmt: skip


async def _open(request: web.Request, artifact_id: str) -> tuple[storage.StoredFile, BinaryIO]:
    """The artifact and its file opened: the path names one version, so a re-run's replacement is looked up again."""
    for _ in range(3):
        found = await _find(request, artifact_id)
        if found is None:
            break
        with contextlib.suppress(FileNotFoundError):
            return found, await asyncio.to_thread(found.path.open, "rb")
    raise NotFound(f"no artifact {artifact_id!r}")


@routes.get(
    "/api/v1/artifacts/{artifact_id}",
    Access.USER,
    "Download an artifact a job produced",
    responses={
        200: Body("The file, with its own content type", media_type="*/*", schema=BINARY, headers=("ETag",)),
        304: Body("Unchanged since the ETag given in If-None-Match", media_type="", headers=("ETag",)),
    },
    headers=(Header("If-None-Match", {"type": "string"}, "An ETag from an earlier download."),),
)
async def get_artifact(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/artifacts/{id}: the owner or an admin; the file as stored, ETag = its sha256.
    Errors: 401, 404 (also for another user's artifact)."""
    found, file = await _open(request, request.match_info["artifact_id"])
    try:
        etag = f'"{found.sha256}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        headers |= {"Content-Type": found.content_type, "Content-Disposition": content_disposition(found.filename)}
        response = web.StreamResponse(headers=headers)
        response.content_length = found.size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(file.close)


@routes.delete(
    "/api/v1/artifacts/{artifact_id}",
    Access.USER,
    "Delete an artifact and its file (frees its bytes of your storage quota)",
    responses={204: NO_CONTENT},
)
async def delete_artifact(request: web.Request) -> web.Response:
    """DELETE /api/v1/artifacts/{id}: the owner or an admin; the file and its record go, freeing its bytes of
    the owner's storage quota (the job's result still names the id; a download is then a 404).
    Errors: 401, 404 (also for another user's artifact)."""
    artifact_id = request.match_info["artifact_id"]
    found = await _find(request, artifact_id)
    if found is None:
        raise NotFound(f"no artifact {artifact_id!r}")
    await storage.delete_file(request.app[PG_POOL], request.app[SETTINGS].storage, found)
    return web.Response(status=204)
