"""Artifacts: written by jobs through shared.files.storage, streamed to their owner over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from gateway.keys import PG_POOL
from shared.core.settings import StorageConfig
from shared.files import storage
from support.stack import Api, Conn, Services, storage_config

CSV = b"day,jobs\n2026-01-01,3\n2026-01-02,5\n"


def _config(services: Services) -> StorageConfig:
    return storage_config(services)


async def _write(api: Api, services: Services, job_id: str, body: bytes, **kw: str) -> storage.StoredFile:
    options = {"owner": "alice", "filename": "report.csv", "content_type": "text/csv; charset=utf-8", **kw}
    async with storage.write_artifact(api.app[PG_POOL], _config(services), job_id=job_id, **options) as writer:
        assert writer.artifact_id == storage.artifact_id_for(job_id)
        for start in range(0, len(body), 7):
            await writer.write(body[start : start + 7])
        assert writer.size == len(body)
    return writer.stored


async def test_an_artifact_written_by_a_job_is_served_to_its_owner(api: Api, services: Services) -> None:
    stored = await _write(api, services, "job_report1", CSV)
    assert stored.path.read_bytes() == CSV
    assert stored.sha256 == hashlib.sha256(CSV).hexdigest()

    status, body, resp = await api.request("GET", f"/api/v1/artifacts/{stored.id}")

    assert status == 200
    assert body == CSV.decode()
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert resp.headers["ETag"] == f'"{stored.sha256}"'
    assert resp.headers["Content-Disposition"] == "attachment; filename=\"report.csv\"; filename*=UTF-8''report.csv"
    status, _, resp = await api.request(
        "GET", f"/api/v1/artifacts/{stored.id}", headers={"If-None-Match": f'"{stored.sha256}"'}
    )
    assert status == 304
    status, head, resp = await api.request("HEAD", f"/api/v1/artifacts/{stored.id}")
    assert (status, head, resp.headers["Content-Length"]) == (200, "", str(len(CSV)))


async def test_an_artifact_is_hidden_from_other_users_but_not_from_admins(api: Api, services: Services) -> None:
    stored = await _write(api, services, "job_report2", CSV)

    status, problem, resp = await api.request("GET", f"/api/v1/artifacts/{stored.id}", as_="bob")
    assert status == 404
    assert resp.content_type == "application/problem+json"
    assert problem["code"] == "not_found"
    status, body, _ = await api.request("GET", f"/api/v1/artifacts/{stored.id}", as_="root", role="admin")
    assert (status, body) == (200, CSV.decode())
    status, _, _ = await api.request("GET", "/api/v1/artifacts/art_nothing")
    assert status == 404


async def test_deleting_an_artifact_removes_its_file_and_frees_its_quota(
    api: Api, services: Services, pg: Conn
) -> None:
    stored = await _write(api, services, "job_report9", CSV)
    await _write(api, services, "job_report10", CSV, owner="bob")

    refused, _, _ = await api.request("DELETE", f"/api/v1/artifacts/{stored.id}", as_="bob")
    deleted, _, _ = await api.request("DELETE", f"/api/v1/artifacts/{stored.id}")
    again, _, _ = await api.request("DELETE", f"/api/v1/artifacts/{stored.id}")
    download, _, _ = await api.request("GET", f"/api/v1/artifacts/{stored.id}")

    assert (refused, deleted, again, download) == (404, 204, 404, 404)
    assert not stored.path.exists()
    assert await pg.fetchval("SELECT sum(size) FROM files WHERE owner = 'alice'") is None
    assert await pg.fetchval("SELECT count(*) FROM files WHERE owner = 'bob'") == 1


async def test_a_rerun_replaces_the_file_and_keeps_the_id(api: Api, services: Services, pg: Conn) -> None:
    first = await _write(api, services, "job_report3", CSV)
    replacement = b'{"rows": []}'
    second = await _write(api, services, "job_report3", replacement, content_type="application/json")

    assert second.id == first.id
    assert not first.path.exists()  # the old version is gone, only the new one is on disk
    status, body, resp = await api.request("GET", f"/api/v1/artifacts/{second.id}")
    assert status == 200
    assert body == {"rows": []}
    assert resp.headers["ETag"] == f'"{hashlib.sha256(replacement).hexdigest()}"'
    assert await pg.fetchval("SELECT count(*) FROM files WHERE job_id = 'job_report3'") == 1


async def test_a_failed_write_leaves_no_file_and_no_row(api: Api, services: Services, pg: Conn) -> None:
    folder = Path(services.storage_dir) / "artifacts"
    before = set(folder.iterdir()) if folder.exists() else set()

    writers: list[storage.ArtifactWriter] = []

    async def failing_job() -> None:
        async with storage.write_artifact(
            api.app[PG_POOL], _config(services), owner="alice", job_id="job_broken",
            filename="broken.csv", content_type="text/csv",
        ) as writer:  # fmt: skip
            writers.append(writer)
            await writer.write(CSV * 100_000)  # past the buffer: bytes reached the temp file
            raise RuntimeError("the report query failed")

    with pytest.raises(RuntimeError, match="the report query failed"):
        await failing_job()

    assert set(folder.iterdir()) == before
    assert await pg.fetchval("SELECT count(*) FROM files") == 0
    with pytest.raises(RuntimeError, match="recorded only"):
        _ = writers[0].stored


async def test_a_hostile_filename_is_served_safely_encoded(api: Api, services: Services) -> None:
    stored = await _write(api, services, "job_report4", CSV, filename='../../etc/"été"\r\n.csv')

    assert stored.filename == '"été".csv'
    assert stored.path.parent.name == "artifacts"
    assert stored.path.name.startswith(f"{stored.id}.")
    status, _, resp = await api.request("GET", f"/api/v1/artifacts/{stored.id}")
    assert status == 200
    assert resp.headers["Content-Disposition"] == (
        "attachment; filename=\"__t__.csv\"; filename*=UTF-8''%22%C3%A9t%C3%A9%22.csv"
    )


async def test_two_runs_of_one_job_at_once_leave_one_artifact_and_one_file(
    api: Api, services: Services, pg: Conn
) -> None:
    results = await asyncio.gather(*(_write(api, services, "job_twice", CSV + bytes([n])) for n in range(4)))

    assert {r.id for r in results} == {storage.artifact_id_for("job_twice")}
    row = await pg.fetchrow("SELECT path, sha256 FROM files WHERE job_id = 'job_twice'")
    assert row is not None
    on_disk = [r.path for r in results if r.path.exists()]
    assert [p.name for p in on_disk] == [Path(row["path"]).name]  # the recorded version, and only it
    assert hashlib.sha256(on_disk[0].read_bytes()).hexdigest() == row["sha256"]


async def test_stale_temp_files_of_a_killed_process_are_swept(tmp_path: Path) -> None:
    config = StorageConfig(dir=tmp_path)
    folder = tmp_path / "artifacts"
    folder.mkdir()
    stale, fresh, finished = folder / ".art_x.1.tmp", folder / ".art_y.2.tmp", folder / "art_z.3"
    for path in (stale, fresh, finished):
        path.write_bytes(CSV)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    assert await storage.remove_stale_temp_files(config, older_than_s=3600) == 1

    assert sorted(p.name for p in folder.iterdir()) == [".art_y.2.tmp", "art_z.3"]
