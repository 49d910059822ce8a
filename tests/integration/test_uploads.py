"""Uploads: streamed to storage over real HTTP, owner-scoped, size-limited with nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from redis.asyncio import Redis

from gateway.keys import METRICS, SETTINGS
from shared.core.settings import StorageConfig
from support.helpers import eventually, make_token
from support.stack import Api, Conn, Services, gateway_settings, running_gateway

CSV = b"city,temp\nParis,21.5\nOslo,12.0\n"
BIG = os.urandom(3 * 1024 * 1024 + 17)  # past the default MAX_BODY_BYTES, and not a whole number of chunks


@contextlib.asynccontextmanager
async def _gateway(services: Services, folder: Path, **storage: Any) -> AsyncIterator[Api]:
    """A gateway storing into its own folder (so a test can see every file) with a 1 KiB JSON body limit."""
    config = StorageConfig(dir=folder, **storage)
    async with running_gateway(gateway_settings(services, storage=config, max_body_bytes=1024)) as api:
        yield api


def _files(folder: Path) -> list[str]:
    """Everything under the storage folder, temp files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _count(api: Api, outcome: str) -> float:
    value = api.app[METRICS].registry.get_sample_value("conveyor_gateway_uploads_total", {"outcome": outcome})
    return value or 0.0


async def _chunks(body: bytes, size: int = 50_000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_raw_upload_is_stored_with_its_hash_and_metadata(api: Api, pg: Conn) -> None:
    headers = {"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": 'attachment; filename="weather.csv"'}
    status, body, resp = await api.request("POST", "/api/v1/uploads", data=CSV, headers=headers)

    assert status == 201, body
    assert body["id"].startswith("upl_")
    assert resp.headers["Location"] == f"/api/v1/uploads/{body['id']}"
    assert body["size"] == len(CSV)
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert (body["content_type"], body["filename"]) == ("text/csv; charset=utf-8", "weather.csv")
    status, meta, _ = await api.request("GET", f"/api/v1/uploads/{body['id']}")
    assert status == 200
    assert {k: meta[k] for k in body} == body
    row = await pg.fetchrow("SELECT * FROM files WHERE id = $1", body["id"])
    assert row is not None
    assert (row["owner"], row["kind"]) == ("alice", "upload")
    assert (Path(api.app[SETTINGS].storage.dir) / row["path"]).read_bytes() == CSV
    assert _count(api, "stored") == 1


async def test_a_multipart_upload_takes_the_file_fields_name_and_type(api: Api, pg: Conn) -> None:
    form = aiohttp.FormData()
    form.add_field("file", CSV, filename="weather.csv", content_type="text/csv")

    status, body, _ = await api.request("POST", "/api/v1/uploads", data=form)

    assert status == 201, body
    assert (body["filename"], body["content_type"], body["size"]) == ("weather.csv", "text/csv", len(CSV))
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()


async def test_a_multipart_body_with_two_files_is_refused_and_nothing_kept(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    form = aiohttp.FormData()
    form.add_field("a", CSV, filename="a.csv", content_type="text/csv")
    form.add_field("b", CSV, filename="b.csv", content_type="text/csv")
    async with _gateway(services, tmp_path) as api:
        status, problem, resp = await api.request("POST", "/api/v1/uploads", data=form)

    assert status == 400
    assert resp.content_type == "application/problem+json"
    assert "exactly one part" in problem["detail"]
    assert _files(tmp_path) == []
    assert await pg.fetchval("SELECT count(*) FROM files") == 0


async def test_a_body_larger_than_the_json_limit_streams_through(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    async with _gateway(services, tmp_path) as api:
        status, raw, _ = await api.request("POST", "/api/v1/uploads", data=_chunks(BIG))
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(BIG), filename="big.bin")
        status_multipart, multipart, _ = await api.request("POST", "/api/v1/uploads", data=form)

    assert (status, status_multipart) == (201, 201), (raw, multipart)
    for body in (raw, multipart):
        assert body["size"] == len(BIG)
        assert body["sha256"] == hashlib.sha256(BIG).hexdigest()
        assert body["content_type"] == "application/octet-stream"
    assert raw["filename"] == "upload"
    assert len(_files(tmp_path)) == 2


async def test_past_max_upload_bytes_is_a_413_and_nothing_is_kept(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    async with _gateway(services, tmp_path, max_upload_bytes=100_000) as api:
        # No Content-Length (chunked): refused once the stream passes the limit.
        status, problem, resp = await api.request("POST", "/api/v1/uploads", data=_chunks(b"x" * 150_000, 10_000))
        # A Content-Length over the limit: refused before reading the body.
        status_declared, _, _ = await api.request("POST", "/api/v1/uploads", data=b"x" * 100_001)
        status_exact, exact, _ = await api.request("POST", "/api/v1/uploads", data=b"x" * 100_000)

    assert (status, status_declared) == (413, 413)
    assert resp.content_type == "application/problem+json"
    assert problem["code"] == "payload_too_large"
    assert "at most 100000 bytes (97.7 KiB, MAX_UPLOAD_BYTES)" in problem["detail"]
    assert _count(api, "too_large") == 2
    assert status_exact == 201
    assert len(_files(tmp_path)) == 1  # only the upload of exactly the limit
    assert await pg.fetchval("SELECT array_agg(id) FROM files") == [exact["id"]]


async def test_a_client_that_goes_away_mid_upload_leaves_nothing(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    async with _gateway(services, tmp_path) as api:
        host, port = api.base.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
            + f"Authorization: Bearer {make_token('alice')}\r\n\r\n".encode()
            + b"y" * 2_000_000
        )
        await writer.drain()

        async def temp_file_written() -> bool | None:
            return True if _files(tmp_path) else None

        await eventually(temp_file_written)  # the upload is under way
        writer.close()
        await writer.wait_closed()

        async def aborted() -> bool | None:
            return True if _count(api, "aborted") == 1 and not _files(tmp_path) else None

        await eventually(aborted)
    assert await pg.fetchval("SELECT count(*) FROM files") == 0


async def test_uploads_are_private_to_their_owner(api: Api, pg: Conn) -> None:
    ids = []
    for name in ("one.csv", "two.csv", "three.csv"):
        headers = {"Content-Disposition": f"attachment; filename={name}"}
        status, body, _ = await api.request("POST", "/api/v1/uploads", data=CSV, headers=headers)
        assert status == 201
        ids.append(body["id"])
    status, _, _ = await api.request("POST", "/api/v1/uploads", as_="bob", data=CSV)
    assert status == 201

    for method in ("GET", "DELETE"):
        status, problem, _ = await api.request(method, f"/api/v1/uploads/{ids[0]}", as_="bob")
        assert (status, problem["code"]) == (404, "not_found")
    status, _, _ = await api.request("GET", f"/api/v1/uploads/{ids[0]}", as_="root", role="admin")
    assert status == 200

    status, page, _ = await api.request("GET", "/api/v1/uploads?limit=2")
    assert status == 200
    status, rest, _ = await api.request("GET", f"/api/v1/uploads?limit=2&cursor={page['next_cursor']}")
    assert [u["filename"] for u in page["items"] + rest["items"]] == ["three.csv", "two.csv", "one.csv"]
    assert rest["next_cursor"] is None
    status, everyone, _ = await api.request("GET", "/api/v1/uploads", as_="root", role="admin")
    assert len(everyone["items"]) == 4
    status, _, _ = await api.request("GET", "/api/v1/uploads?limit=0")
    assert status == 400


async def test_deleting_an_upload_removes_its_file_and_record(api: Api, pg: Conn) -> None:
    status, body, _ = await api.request("POST", "/api/v1/uploads", data=CSV)
    path = Path(api.app[SETTINGS].storage.dir) / await pg.fetchval("SELECT path FROM files")
    assert path.exists()

    status, _, _ = await api.request("DELETE", f"/api/v1/uploads/{body['id']}")

    assert status == 204
    assert not path.exists()
    assert await pg.fetchval("SELECT count(*) FROM files") == 0
    status, _, _ = await api.request("GET", f"/api/v1/uploads/{body['id']}")
    assert status == 404


async def test_the_filename_can_come_from_the_query(api: Api, pg: Conn) -> None:
    status, body, _ = await api.request("POST", "/api/v1/uploads", params={"filename": "weather.csv"}, data=CSV)

    assert status == 201, body
    assert body["filename"] == "weather.csv"


def _disposition(name: str) -> str:
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"


async def test_client_filenames_are_reduced_to_a_safe_display_name(api: Api, pg: Conn) -> None:
    cases = [
        (_disposition("../../etc/pass\x00w\x07d\r\n"), "passwd"),
        (_disposition("C:\\Users\\ann\\résumé.pdf"), "résumé.pdf"),
        (_disposition("a" * 300 + ".csv"), "a" * 255),
        (_disposition(".."), "upload"),
        ("inline", "upload"),
    ]
    for disposition, expected in cases:
        headers = {"Content-Disposition": disposition}
        status, body, _ = await api.request("POST", "/api/v1/uploads", data=CSV, headers=headers)
        assert status == 201, body
        assert body["filename"] == expected
    paths = [r["path"] for r in await pg.fetch("SELECT path FROM files")]
    assert all(p.startswith("uploads/upl_") for p in paths)


async def test_an_owners_storage_quota_holds_and_deleting_makes_room(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    async with _gateway(services, tmp_path, quota_bytes=1000) as api:
        status_first, first, _ = await api.request("POST", "/api/v1/uploads", data=b"a" * 600)
        # Refused as it streams (no Content-Length), once past the 400 bytes left.
        status_over, problem, resp = await api.request("POST", "/api/v1/uploads", data=_chunks(b"b" * 600, 100))
        status_bob, _, _ = await api.request("POST", "/api/v1/uploads", data=b"c" * 600, as_="bob")
        status_fits, _, _ = await api.request("POST", "/api/v1/uploads", data=b"d" * 400)
        status_full, _, _ = await api.request("POST", "/api/v1/uploads", data=b"e")
        deleted, _, _ = await api.request("DELETE", f"/api/v1/uploads/{first['id']}")
        status_again, _, _ = await api.request("POST", "/api/v1/uploads", data=b"f" * 600)

    assert (status_first, status_over, status_full) == (201, 413, 413)
    assert resp.content_type == "application/problem+json"
    assert problem["code"] == "storage_quota_exceeded"
    assert "600 of your 1000 bytes" in problem["detail"]
    assert status_bob == 201, "the quota is per owner"
    assert status_fits == 201, "exactly the room left fits"
    assert (deleted, status_again) == (204, 201), "deleting an upload makes room"
    assert await pg.fetchval("SELECT sum(size) FROM files WHERE owner = 'alice'") == 1000
    assert len(_files(tmp_path)) == 3, "nothing is kept of a refused upload"
    assert _count(api, "over_quota") == 2


async def test_concurrent_uploads_of_one_owner_cannot_together_pass_the_quota(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    async with _gateway(services, tmp_path, quota_bytes=1000) as api:
        # Each fits alone, so each streams to the end; only one of them can be recorded.
        results = await asyncio.gather(
            *(api.request("POST", "/api/v1/uploads", data=_chunks(bytes([65 + n]) * 600, 100)) for n in range(4))
        )

    assert sorted(status for status, _, _ in results) == [201, 413, 413, 413]
    assert await pg.fetchval("SELECT sum(size) FROM files WHERE owner = 'alice'") == 600
    assert len(_files(tmp_path)) == 1


async def test_an_empty_upload_is_a_400_and_nothing_is_kept(
    services: Services, pg: Conn, jobs_redis: Redis, tmp_path: Path
) -> None:
    empty_file = aiohttp.FormData()
    empty_file.add_field("file", b"", filename="empty.csv", content_type="text/csv")
    async with _gateway(services, tmp_path) as api:
        results = [
            await api.request("POST", "/api/v1/uploads"),  # no body at all
            await api.request("POST", "/api/v1/uploads?filename=a.csv", data=b""),  # Content-Length: 0
            await api.request("POST", "/api/v1/uploads", data=_chunks(b"")),  # chunked, no chunk
            await api.request("POST", "/api/v1/uploads", data=empty_file),  # an empty file field
        ]
        _, doc, _ = await api.request("GET", "/api/v1/openapi.json")

    for status, problem, resp in results:
        assert status == 400, problem
        assert resp.content_type == "application/problem+json"
        assert "the upload is empty" in problem["detail"]
    assert _files(tmp_path) == []
    assert await pg.fetchval("SELECT count(*) FROM files") == 0
    body = doc["paths"]["/api/v1/uploads"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/octet-stream"]["schema"]["minLength"] == 1
    multipart = body["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["file"]["minLength"] == 1
    assert multipart["additionalProperties"] is False
