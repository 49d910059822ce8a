"""report.generate on a seeded ledger: exact CSV and JSON figures over HTTP, streaming, mail, retries."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from shared.jobtypes.report import REPORT_GENERATE, ReportPayload, ReportResult
from support.mail import parsed
from support.stack import Api, Conn, Services, SmtpSink, StartWorker, storage_config
from support.tcp_proxy import TcpProxy
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.families.report import query
from workers.families.report.handler import handle_generate
from workers.runtime import bind

DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
RANGE = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}
HEADER = (
    "type,status,jobs,type_total,type_failure_rate,type_duration_p50_s,type_duration_p95_s,"
    "type_queue_wait_p50_s,type_queue_wait_p95_s"
)
EXPECTED_CSV = [
    HEADER,
    "email.send,failed,1,5,0.25,2.5,3.85,1.0,1.85",
    "email.send,queued,1,5,0.25,2.5,3.85,1.0,1.85",
    "email.send,succeeded,3,5,0.25,2.5,3.85,1.0,1.85",
    "system.echo,succeeded,2,2,0.0,1.0,1.45,0.3,0.39",
]


async def _insert(
    pg: Conn, owner: str, type_: str, status: str, created: dt.datetime, wait_s: float | None = None,
    duration_s: float | None = None,
) -> None:  # fmt: skip
    started = created + dt.timedelta(seconds=wait_s) if wait_s is not None else None
    finished = started + dt.timedelta(seconds=duration_s) if started is not None and duration_s is not None else None
    await pg.execute(
        "INSERT INTO jobs (id, type, queue, owner, status, payload, max_attempts, timeout_s, created_at,"
        " scheduled_for, started_at, finished_at)"
        " VALUES (gen_random_uuid()::text, $1, 'default', $2, $3, '{}', 1, 60, $4, $4, $5, $6)",
        type_, owner, status, created, started, finished,
    )  # fmt: skip


async def _seed(pg: Conn) -> None:
    """Alice's jobs on 2026-03-01, plus some that the report must leave out."""
    t = DAY + dt.timedelta(hours=10)
    for wait_s, duration_s in ((0, 1), (1, 2), (1, 3)):
        await _insert(pg, "alice", "email.send", "succeeded", t, wait_s, duration_s)
    await _insert(pg, "alice", "email.send", "failed", t, 2, 4)
    await _insert(pg, "alice", "email.send", "queued", t)
    await _insert(pg, "alice", "system.echo", "succeeded", t, 0.2, 0.5)
    await _insert(pg, "alice", "system.echo", "succeeded", t, 0.4, 1.5)
    # Left out: someone else's, just before the range, exactly at its (exclusive) end.
    await _insert(pg, "bob", "email.send", "failed", t, 1, 1)
    await _insert(pg, "alice", "email.send", "failed", DAY - dt.timedelta(seconds=1), 1, 100)
    await _insert(pg, "alice", "webhook.deliver", "failed", DAY + dt.timedelta(days=1), 1, 100)


async def _download(api: Api, url: str, *, as_: str = "alice") -> tuple[int, Any, str]:
    status, body, resp = await api.request("GET", url, as_=as_)
    return status, body, resp.headers.get("Content-Type", "")


async def test_csv_report_has_exact_figures_and_is_downloadable_by_its_owner_only(
    api: Api, pg: Conn, start_worker: StartWorker
) -> None:
    await _seed(pg)
    await start_worker("heavy")
    job = await api.submit("report.generate", {**RANGE, "format": "csv"})

    done = await api.wait_status(job["id"], "succeeded")

    result = done["result"]
    assert result["rows"] == 4
    assert result["url"] == f"/api/v1/artifacts/{result['artifact_id']}"
    status, body, content_type = await _download(api, result["url"])
    assert status == 200
    assert content_type.startswith("text/csv")
    assert body.splitlines() == EXPECTED_CSV
    status, _, _ = await _download(api, result["url"], as_="bob")
    assert status == 404


async def test_json_report_has_the_same_figures(api: Api, pg: Conn, start_worker: StartWorker) -> None:
    await _seed(pg)
    await start_worker("heavy")
    job = await api.submit("report.generate", {**RANGE, "format": "json"})

    done = await api.wait_status(job["id"], "succeeded")

    status, body, content_type = await _download(api, done["result"]["url"])
    assert status == 200
    assert content_type.startswith("application/json")
    assert body["owner"] == "alice"
    assert (body["from"], body["to"]) == ("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z")
    columns = HEADER.split(",")
    assert body["columns"] == columns
    expected = [line.split(",") for line in EXPECTED_CSV[1:]]
    assert [[str(row[c]) for c in columns] for row in body["rows"]] == expected
    assert body["rows"][3]["type_failure_rate"] == 0.0
    assert body["rows"][0]["type_duration_p95_s"] == 3.85


async def test_period_covers_the_last_day_including_the_report_itself(
    api: Api, pg: Conn, start_worker: StartWorker
) -> None:
    now = dt.datetime.now(dt.UTC)
    await _insert(pg, "alice", "email.send", "succeeded", now - dt.timedelta(hours=2), 1, 1)
    await _insert(pg, "alice", "email.send", "succeeded", now - dt.timedelta(days=2), 1, 1)
    await start_worker("heavy")
    job = await api.submit("report.generate", {"period": "day"})

    done = await api.wait_status(job["id"], "succeeded")

    _, body, _ = await _download(api, done["result"]["url"])
    assert [line.split(",")[:4] for line in body.splitlines()[1:]] == [
        ["email.send", "succeeded", "1", "1"],
        ["report.generate", "running", "1", "1"],
    ]
    assert body.splitlines()[2].split(",")[4] == "", "no failure rate while nothing has finished"


async def _seed_many(pg: Conn, types: int) -> None:
    """`types` job types with one succeeded and one failed job each: 2 x `types` report rows."""
    await pg.execute(
        "INSERT INTO jobs (id, type, queue, owner, status, payload, max_attempts, timeout_s, created_at,"
        " scheduled_for, started_at, finished_at)"
        " SELECT 'bulk-' || n || '-' || s, 'type.' || lpad(n::text, 5, '0'), 'default', 'alice', s, '{}', 1, 60,"
        "        $1::timestamptz, $1::timestamptz, $1::timestamptz + interval '1 second',"
        "        $1::timestamptz + interval '3 seconds'"
        " FROM generate_series(1, $2) AS n, unnest(ARRAY['failed', 'succeeded']) AS s",
        DAY + dt.timedelta(hours=1),
        types,
    )


async def test_a_large_report_streams_every_row(api: Api, pg: Conn, start_worker: StartWorker) -> None:
    types = 3000
    await _seed_many(pg, types)
    assert 2 * types > 4 * query.PREFETCH, "the cursor must make several round trips"
    await start_worker("heavy")
    job = await api.submit("report.generate", {**RANGE, "format": "csv"})

    done = await api.wait_status(job["id"], "succeeded", within=60)

    assert done["result"]["rows"] == 2 * types
    _, body, _ = await _download(api, done["result"]["url"])
    lines = body.splitlines()
    assert len(lines) == 1 + 2 * types
    assert lines[1] == "type.00001,failed,1,2,0.5,2.0,2.0,1.0,1.0"
    assert lines[-1] == f"type.{types:05d},succeeded,1,2,0.5,2.0,2.0,1.0,1.0"
    assert lines[1:] == sorted(lines[1:]), "rows come in (type, status) order"


async def test_email_to_mails_the_report_as_an_attachment(
    api: Api, pg: Conn, start_worker: StartWorker, smtp: SmtpSink, services: Services
) -> None:
    await _seed(pg)
    await start_worker("default", smtp_port=smtp.port)
    public = storage_config(services, public_url="https://jobs.example.com/")
    await start_worker("heavy", storage=public)
    job = await api.submit("report.generate", {**RANGE, "format": "csv", "email_to": ["boss@example.com"]})

    done = await api.wait_status(job["id"], "succeeded")
    _, listing, _ = await api.request("GET", "/api/v1/jobs?type=email.send")
    [mail_job] = [j for j in listing["items"] if j["idempotency_key"] is not None]
    await api.wait_status(mail_job["id"], "succeeded")

    assert mail_job["owner"] == "alice"
    assert mail_job["idempotency_key"] == f"report-mail:{job['id']}"
    msg = parsed(smtp)
    assert smtp.messages[0].rcpt_tos == ["boss@example.com"]
    assert msg["Subject"] == "Your Conveyor report is ready"
    text = msg.get_body(preferencelist=("plain",))
    assert text is not None
    assert job["id"] in text.get_content()
    link = f"https://jobs.example.com{done['result']['url']}"
    assert link in text.get_content(), "the mail links the report under PUBLIC_URL"
    [attachment] = list(msg.iter_attachments())
    _, body, _ = await _download(api, done["result"]["url"])
    assert attachment.get_payload(decode=True) == body.encode()
    assert attachment.get_content_type() == "text/csv"
    assert (attachment.get_filename() or "").endswith(".csv")


async def test_postgres_cut_mid_report_is_retried_and_succeeds(
    services: Services, api: Api, pg: Conn, pg_proxy: TcpProxy, start_worker: StartWorker
) -> None:
    """PostgreSQL goes away while the cursor is being read (after the first chunk of rows is written)."""
    types = 1000
    await _seed_many(pg, types)

    class CutAfterFirstChunk(JobContext):
        async def progress(
            self, percent: float | None = None, step: str | None = None, message: str | None = None
        ) -> None:
            if self.attempt == 1 and step == "writing" and pg_proxy.enabled:
                pg_proxy.cut()
                asyncio.get_running_loop().call_later(1.0, pg_proxy.restore)
            await JobContext.progress(self, percent, step, message)

    async def cutting(job: JobContext, payload: ReportPayload) -> ReportResult:
        fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
        return await handle_generate(CutAfterFirstChunk(**fields), payload)

    handlers = {**builtin_handlers(), REPORT_GENERATE.name: bind(REPORT_GENERATE, cutting)}
    await start_worker("heavy", via=services.through_postgres_port(pg_proxy.port), handlers=handlers)
    job = await api.submit("report.generate", {**RANGE, "format": "csv"})

    done = await api.wait_status(job["id"], "succeeded", within=40)

    assert done["attempts"] == 2
    assert [(e["type"], e["retryable"]) for e in done["errors"]] == [("ReportInterrupted", True)]
    assert done["result"]["rows"] == 2 * types
    _, body, _ = await _download(api, done["result"]["url"])
    assert len(body.splitlines()) == 1 + 2 * types, "the retry wrote the whole report again"


async def test_a_report_past_the_owners_storage_quota_fails_for_good(
    api: Api, pg: Conn, start_worker: StartWorker, services: Services
) -> None:
    await _seed(pg)
    await start_worker("heavy", storage=storage_config(services, quota_bytes=100))
    job = await api.submit("report.generate", {**RANGE, "format": "csv"})

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1, "no retry can help until the owner deletes files"
    assert failed["error"]["type"] == "StorageQuotaExceeded"
    assert "of your 100 bytes" in failed["error"]["message"]
    assert await pg.fetchval("SELECT count(*) FROM files") == 0


async def test_a_bad_period_is_refused_at_submission(api: Api, pg: Conn) -> None:
    for payload in ({"from": "2026-03-01T00:00:00Z"}, {"period": "year"}, {**RANGE, "period": "day"},
                    {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}):  # fmt: skip
        status, body, _ = await api.request(
            "POST", "/api/v1/jobs", json={"type": "report.generate", "payload": payload}
        )
        assert status == 422, body
        assert body["errors"][0]["loc"][0] == "payload"
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0
