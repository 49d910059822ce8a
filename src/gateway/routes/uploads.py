"""`/api/v1/uploads` routes: a file streamed to storage (raw body or one multipart file), then read and deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from gateway import schemas
from gateway.api_docs import BINARY, NO_CONTENT, Body, ok
from gateway.http.errors import BodyTooLarge, human_bytes
from gateway.http.params import page
from gateway.http.query import PAGE, QueryParam
from gateway.http.responses import json_response
from gateway.keys import METRICS, PG_POOL, PRINCIPAL, SETTINGS
from gateway.routing import Routes
from gateway.security.access import Access
from shared.core.errors import BadRequest, NotFound, StorageQuotaExceeded
from shared.core.json import rfc3339
from shared.files import storage

routes = Routes("files")
# An empty file is refused (400): an empty body is nearly always a client's mistake.
# `format: binary` as well: fuzzers then generate bytes for it, and no "wrong type" for what is bytes on the wire.
FILE: Mapping[str, Any] = {
    **BINARY,
    "format": "binary",
    "minLength": 1,
    "description": "The file's bytes; at least one.",
}
UPLOAD_BODIES = (
    Body("The file as the raw body (any media type).", media_type="application/octet-stream", schema=FILE),
    Body(
        "One file field, and nothing else.",
        media_type="multipart/form-data",
        schema={"type": "object", "properties": {"file": FILE}, "required": ["file"], "additionalProperties": False},
    ),
)

API = "/api/v1/uploads"
CHUNK_BYTES = 64 * 1024
MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and part headers around the file in a multipart body
# What a broken or abandoned body looks like to the handler (the client went away, a bad chunk, a short body).
BODY_ERRORS = (ConnectionError, HttpProcessingError)
# A malformed multipart head: aiohttp raises these (its parser even asserts on some bodies, and a bad part
# header is an InvalidHeader).
MALFORMED_MULTIPART = (ValueError, AssertionError, HttpProcessingError)
FILENAME = QueryParam(
    "filename",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "For a raw body: the file's name (else Content-Disposition's).",
)


class BodyCut(BadRequest):
    """The body broke off or was malformed mid-stream (often: the client went away)."""

    def __init__(self) -> None:
        super().__init__("the body ended before it was complete; nothing was kept")


@dataclass(frozen=True, slots=True)
class _Source:
    filename: str | None
    content_type: str | None
    chunks: AsyncIterator[bytes]


def _resource(f: storage.StoredFile) -> dict[str, Any]:
    return {
        "id": f.id, "size": f.size, "sha256": f.sha256, "content_type": f.content_type, "filename": f.filename,
        "created_at": rfc3339(f.created_at), "links": {"self": f"{API}/{f.id}"},
    }  # fmt: skip


class EmptyUpload(BadRequest):
    """No bytes: no body at all, or an empty file field (nearly always a client's mistake)."""

    def __init__(self) -> None:
        super().__init__(
            "the upload is empty: send the file's bytes as the body, or as the one file field of a"
            " multipart/form-data body; nothing was kept",
            errors=[{"loc": ["body"], "msg": "at least one byte", "type": "too_short"}],
        )


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(limit, what="the file", setting="MAX_UPLOAD_BYTES")


def _over_quota(exc: StorageQuotaExceeded) -> StorageQuotaExceeded:
    return StorageQuotaExceeded(
        f"your uploads and artifacts use {exc.used} of your {exc.quota} bytes ({human_bytes(exc.quota)},"
        " STORAGE_QUOTA_BYTES) of storage; delete some to make room; nothing was kept",
        used=exc.used,
        quota=exc.quota,
    )


def _raw_filename(request: web.Request) -> str | None:
    if "filename" in request.query:
        return request.query["filename"]
    header = request.headers.get(hdrs.CONTENT_DISPOSITION)
    if header is None:
        return None
    _, params = parse_content_disposition(header)
    return content_disposition_filename(params, "filename")


async def _raw_chunks(request: web.Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.content.iter_chunked(CHUNK_BYTES):
            yield chunk
    except BODY_ERRORS as exc:
        raise BodyCut from exc


async def _part_chunks(part: BodyPartReader, reader: MultipartReader) -> AsyncIterator[bytes]:
    """The file part's bytes; then the body must end (exactly one part)."""
    try:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            yield chunk
        more = await reader.next()
    except BODY_ERRORS as exc:
        raise BodyCut from exc
    except MALFORMED_MULTIPART as exc:
        raise BadRequest(f"the multipart body is malformed: {exc}") from exc
    if more is not None:
        raise BadRequest("a multipart upload must hold exactly one part, a file field")


async def _source(request: web.Request) -> _Source:
    """Where the file's bytes come from; nothing of the body is read yet beyond a multipart file's headers."""
    if request.content_type != "multipart/form-data":
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        return _Source(_raw_filename(request), content_type, _raw_chunks(request))
    try:
        reader = await request.multipart()
        part = await reader.next()
    except MALFORMED_MULTIPART as exc:
        raise BadRequest(f"the multipart body is malformed: {exc}") from exc
    if not isinstance(part, BodyPartReader) or part.filename is None:
        raise BadRequest("a multipart upload must hold exactly one part, a file field (with a filename)")
    return _Source(part.filename, part.headers.get(hdrs.CONTENT_TYPE), _part_chunks(part, reader))


@routes.post(
    API,
    Access.AUTHENTICATED,
    "Upload a file (streamed to storage)",
    query=(FILENAME,),
    responses={201: ok(schemas.Upload, "Stored", "Location")},
    request=UPLOAD_BODIES,
    description="An empty file (no body, or an empty file field) is refused with a 400.",
)
async def create_upload(request: web.Request) -> web.Response:
    """POST /api/v1/uploads: any role; a raw body (its Content-Type; `?filename=` or Content-Disposition) or
    multipart/form-data with one file field. Streamed to disk while hashed, never held whole in memory.
    Errors: 400 malformed, cut-short or empty body, 401, 413 past MAX_UPLOAD_BYTES or past the owner's
    STORAGE_QUOTA_BYTES (`storage_quota_exceeded`; nothing is kept)."""
    config, metrics = request.app[SETTINGS].storage, request.app[METRICS]
    limit = config.max_upload_bytes
    slack = MULTIPART_SLACK_BYTES if request.content_type == "multipart/form-data" else 0
    if request.content_length is not None and request.content_length > limit + slack:
        metrics.uploads.labels("too_large").inc()
        raise _too_large(limit)
    if not request.body_exists:
        raise EmptyUpload
    source = await _source(request)
    try:
        async with storage.write_upload(
            request.app[PG_POOL], config, owner=request[PRINCIPAL].sub,
            filename=source.filename, content_type=source.content_type,
        ) as writer:  # fmt: skip
            async for chunk in source.chunks:
                await writer.write(chunk)
            if writer.size == 0:
                raise EmptyUpload  # the temp file is discarded, nothing recorded
    except storage.FileTooLarge as exc:
        metrics.uploads.labels("too_large").inc()
        raise _too_large(limit) from exc
    except StorageQuotaExceeded as exc:
        metrics.uploads.labels("over_quota").inc()
        raise _over_quota(exc) from exc
    except BodyCut:
        metrics.uploads.labels("aborted").inc()
        raise
    stored = writer.stored
    metrics.uploads.labels("stored").inc()
    metrics.upload_bytes.inc(stored.size)
    return json_response(_resource(stored), status=201, headers={"Location": f"{API}/{stored.id}"})


async def _visible(request: web.Request) -> storage.StoredFile:
    principal, upload_id = request[PRINCIPAL], request.match_info["upload_id"]
    found = await storage.find_file(
        request.app[PG_POOL], request.app[SETTINGS].storage, "upload", upload_id,
        owner=principal.visible_owner,
    )  # fmt: skip
    if found is None:
        raise NotFound(f"no upload {upload_id!r}")
    return found


@routes.get(f"{API}/{{upload_id}}", Access.USER, "Get an upload's metadata", responses={200: ok(schemas.Upload)})
async def get_upload(request: web.Request) -> web.Response:
    """GET /api/v1/uploads/{id}: the metadata, for the owner or an admin. Errors: 401, 404."""
    return json_response(_resource(await _visible(request)))


@routes.delete(f"{API}/{{upload_id}}", Access.USER, "Delete an upload and its file", responses={204: NO_CONTENT})
async def delete_upload(request: web.Request) -> web.Response:
    """DELETE /api/v1/uploads/{id}: the owner or an admin; the file and its record go. Errors: 401, 404."""
    found = await _visible(request)
    await storage.delete_file(request.app[PG_POOL], request.app[SETTINGS].storage, found)
    return web.Response(status=204)


@routes.get(API, Access.USER, "List uploads, newest first", query=PAGE, responses={200: ok(schemas.UploadList)})
async def list_uploads(request: web.Request) -> web.Response:
    """GET /api/v1/uploads: newest first; a user's own, an admin's everyone's. Errors: 400, 401."""
    limit, cursor = page(request.query)
    principal = request[PRINCIPAL]
    found, next_cursor = await storage.list_files(
        request.app[PG_POOL], request.app[SETTINGS].storage, "upload",
        owner=principal.visible_owner, limit=limit, cursor=cursor,
    )  # fmt: skip
    return json_response({"items": [_resource(f) for f in found], "next_cursor": next_cursor})
