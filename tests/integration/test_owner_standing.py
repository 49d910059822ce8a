"""Work that runs later as its owner (a schedule's fires, a batch's on_complete) checks the owner's standing
when it runs: a principal whose every API key is revoked, or who is no longer an admin, does not act."""

from __future__ import annotations

from typing import Any

from support.helpers import eventually
from support.stack import Api, Conn, StartWorker

KEYS = "/api/v1/api-keys"
ECHO = {"type": "system.echo", "payload": {"data": "tick"}}
ROOT = {"as_": "root", "role": "admin"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _key(api: Api, sub: str, role: str = "user") -> dict[str, Any]:
    status, key, _ = await api.request("POST", KEYS, json={"name": sub, "sub": sub, "role": role}, **ROOT)
    assert status == 201, key
    assert isinstance(key, dict)
    return key


async def _revoke(api: Api, key: dict[str, Any]) -> None:
    status, _, _ = await api.request("DELETE", f"{KEYS}/{key['id']}", **ROOT)
    assert status in (200, 204)


async def _schedule(api: Api, headers: dict[str, str], job: dict[str, Any] = ECHO) -> str:
    status, schedule, _ = await api.request(
        "POST", "/api/v1/schedules", headers=headers, json={"name": "n", "cron": "0 0 1 1 *", "job": job}
    )
    assert status == 201, schedule
    schedule_id: str = schedule["id"]
    return schedule_id


async def _view(api: Api, schedule_id: str) -> dict[str, Any]:
    status, view, _ = await api.request("GET", f"/api/v1/schedules/{schedule_id}", **ROOT)
    assert status == 200, view
    assert isinstance(view, dict)
    return view


async def test_a_revoked_owners_schedule_is_disabled_while_others_fire(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    gone, old = await _key(api, "svc-gone"), await _key(api, "svc-rotated")
    await _key(api, "svc-rotated")  # a new key for the same principal
    revoked = await _schedule(api, bearer(gone["token"]))
    kept = await _schedule(api, bearer(old["token"]))
    by_jwt = await _schedule(api, api.auth("alice"))
    await _revoke(api, gone)
    await _revoke(api, old)  # replaced by `rotated`: the same principal keeps a live key
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    await start_worker("scheduler")

    async def disabled() -> dict[str, Any] | None:
        view = await _view(api, revoked)
        return view if not view["enabled"] else None

    view = await eventually(disabled)
    assert view["disabled_reason"] == "owner_revoked"
    assert view["last_job_id"] is None

    async def fired() -> bool | None:
        views = [await _view(api, s) for s in (kept, by_jwt)]
        return True if all(v["last_job_id"] for v in views) else None

    await eventually(fired)
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'svc-gone'") == 0

    status, enabled, _ = await api.request(
        "PATCH", f"/api/v1/schedules/{revoked}", json={"enabled": True}, **ROOT
    )  # an admin may turn it on again; its next fire checks again
    assert (status, enabled["enabled"], enabled["disabled_reason"]) == (200, True, None)


async def test_a_demoted_admins_schedule_may_no_longer_act_for_others(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    admin = await _key(api, "svc-ops", role="admin")
    notify = {"type": "notification.push", "payload": {"user": "bob", "title": "hello"}}
    schedule_id = await _schedule(api, bearer(admin["token"]), job=notify)
    await _revoke(api, admin)
    await _key(api, "svc-ops", role="user")  # the same principal, as a user now
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    await start_worker("scheduler")

    async def disabled() -> dict[str, Any] | None:
        view = await _view(api, schedule_id)
        return view if not view["enabled"] else None

    assert (await eventually(disabled))["disabled_reason"] == "owner_not_allowed"
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0


async def test_a_revoked_owners_on_complete_is_recorded_failed(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    key = await _key(api, "svc-batch")
    status, batch, _ = await api.request(
        "POST", "/api/v1/batches", headers=bearer(key["token"]), json={"jobs": [ECHO], "on_complete": ECHO}
    )
    assert status == 202, batch
    await _revoke(api, key)

    await start_worker("default")

    async def completed() -> str | None:
        _, view, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}", **ROOT)
        job_id: str | None = view["on_complete_job_id"]
        return job_id

    _, on_complete, _ = await api.request("GET", f"/api/v1/jobs/{await eventually(completed)}", **ROOT)
    assert on_complete["owner"] == "svc-batch"
    assert on_complete["status"] == "failed"
    assert on_complete["error"]["type"] == "OwnerRevoked"
    assert on_complete["attempts"] == 0
