"""API keys: created by an admin and shown once, usable as a bearer token, listed without secrets, revoked at
once on every gateway replica, and stored only as a salted hash."""

from __future__ import annotations

from typing import Any

from support.stack import Api, Conn, Services, gateway_settings, running_gateway
from support.tcp_proxy import TcpProxy

KEYS = "/api/v1/api-keys"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_key(api: Api, name: str = "ci", sub: str = "svc-ci", role: str = "user") -> dict[str, Any]:
    status, body, _ = await api.request(
        "POST", KEYS, as_="root", role="admin", json={"name": name, "sub": sub, "role": role}
    )
    assert status == 201, body
    assert isinstance(body, dict)
    return body


async def test_an_admin_creates_a_key_whose_token_acts_as_its_subject(api: Api) -> None:
    status, key, resp = await api.request(
        "POST", KEYS, as_="root", role="admin", json={"name": "ci deploys", "sub": "svc-ci", "role": "user"}
    )

    assert status == 201, key
    assert set(key) >= {"id", "name", "sub", "role", "prefix", "created_at", "token"}
    assert (key["name"], key["sub"], key["role"]) == ("ci deploys", "svc-ci", "user")
    assert key["token"].startswith(key["prefix"] + "_")
    assert resp.headers["Location"] == f"{KEYS}/{key['id']}"
    assert key["created_by"] == "root"
    assert key["last_used_at"] is None
    assert key["revoked_at"] is None

    status, job, _ = await api.request(
        "POST", "/api/v1/jobs", headers=bearer(key["token"]), json={"type": "system.echo", "payload": {"data": 1}}
    )
    assert status == 202, job
    assert job["owner"] == "svc-ci"
    status, seen, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}", headers=bearer(key["token"]))
    assert (status, seen["id"]) == (200, job["id"])
    status, _, _ = await api.request("GET", "/api/v1/queues", headers=bearer(key["token"]))
    assert status == 403  # a user key is a user


async def test_an_admin_key_may_use_admin_routes(api: Api) -> None:
    key = await create_key(api, role="admin")

    status, body, _ = await api.request("GET", KEYS, headers=bearer(key["token"]))

    assert status == 200, body
    assert [k["id"] for k in body["items"]] == [key["id"]]


async def test_the_list_never_shows_a_token_or_hash_and_pages_with_a_cursor(api: Api) -> None:
    created = [await create_key(api, name=f"key {i}") for i in range(3)]

    status, first, resp = await api.request("GET", f"{KEYS}?limit=2", as_="root", role="admin")
    raw = await resp.text()
    assert status == 200, first
    status, second, _ = await api.request(
        "GET", f"{KEYS}?limit=2&cursor={first['next_cursor']}", as_="root", role="admin"
    )
    assert status == 200, second

    items = first["items"] + second["items"]
    assert [k["id"] for k in items] == [k["id"] for k in reversed(created)]
    assert second["next_cursor"] is None
    for item in items:
        assert not {"token", "hash", "salt"} & set(item)
        assert item["prefix"].startswith("cvk_")
    assert all(k["token"] not in raw and k["token"].split("_", 2)[2] not in raw for k in created)


async def test_a_revoked_key_is_refused_at_once_on_every_replica(api: Api, services: Services) -> None:
    key = await create_key(api)
    async with running_gateway(gateway_settings(services)) as other:
        for gateway in (api, other):
            status, _, _ = await gateway.request("GET", "/api/v1/jobs", headers=bearer(key["token"]))
            assert status == 200

        status, body, _ = await api.request("DELETE", f"{KEYS}/{key['id']}", as_="root", role="admin")
        assert (status, body) == (204, "")

        for gateway in (other, api):
            status, problem, _ = await gateway.request("GET", "/api/v1/jobs", headers=bearer(key["token"]))
            assert status == 401, problem
            assert problem["type"].endswith("unauthenticated")

    status, listing, _ = await api.request("GET", KEYS, as_="root", role="admin")
    assert listing["items"][0]["revoked_at"] is not None


async def test_deleting_a_deleted_or_unknown_key_is_a_404_and_keeps_the_revocation_time(api: Api) -> None:
    key = await create_key(api)
    status, _, _ = await api.request("DELETE", f"{KEYS}/{key['id']}", as_="root", role="admin")
    assert status == 204
    _, listing, _ = await api.request("GET", KEYS, as_="root", role="admin")
    revoked_at = listing["items"][0]["revoked_at"]

    for key_id in (key["id"], "key_0000000000000000"):
        status, problem, resp = await api.request("DELETE", f"{KEYS}/{key_id}", as_="root", role="admin")
        assert status == 404, key_id
        assert resp.content_type == "application/problem+json"
        assert (problem["type"], problem["status"]) == ("/problems/not-found", 404)
        assert key_id in problem["detail"]

    _, listing, _ = await api.request("GET", KEYS, as_="root", role="admin")
    assert listing["items"][0]["revoked_at"] == revoked_at, "a second DELETE does not move the revocation time"


async def test_a_name_or_subject_of_only_whitespace_is_refused_as_the_document_says(api: Api) -> None:
    _, doc, _ = await api.request("GET", "/api/v1/openapi.json")
    schema = doc["components"]["schemas"]["KeyRequest"]["properties"]["sub"]

    status, problem, _ = await api.request(
        "POST", KEYS, as_="root", role="admin", json={"name": "ci", "sub": "\u00a0 ", "role": "user"}
    )

    assert schema["pattern"] == "\\S", "the document refuses what the server refuses"
    assert status == 422
    assert problem["errors"][0]["loc"] == ["sub"]


async def test_key_routes_are_for_admins_only(api: Api, pg: Conn) -> None:
    key = await create_key(api)

    for method, path, body in (
        ("POST", KEYS, {"name": "mine", "sub": "alice", "role": "admin"}),
        ("GET", KEYS, None),
        ("DELETE", f"{KEYS}/{key['id']}", None),
    ):
        status, problem, _ = await api.request(method, path, as_="alice", role="user", json=body)
        assert status == 403, (method, path, problem)

    rows = await pg.fetch("SELECT id, revoked_at FROM api_keys")
    assert [(r["id"], r["revoked_at"]) for r in rows] == [(key["id"], None)]


async def test_bad_requests_are_422(api: Api, pg: Conn) -> None:
    for body in (
        {"name": "k", "sub": "svc", "role": "root"},
        {"name": "", "sub": "svc", "role": "user"},
        {"name": "   ", "sub": "svc", "role": "user"},
        {"name": "k", "sub": "", "role": "user"},
        {"name": "k", "role": "user"},
        {"name": "k", "sub": "svc", "role": "user", "token": "cvk_chosen"},
    ):
        status, problem, _ = await api.request("POST", KEYS, as_="root", role="admin", json=body)
        assert status == 422, (body, problem)
        assert problem["errors"], problem

    assert await pg.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_wrong_or_malformed_keys_are_401(api: Api) -> None:
    key = await create_key(api)
    token: str = key["token"]
    secret = token.split("_", 2)[2]
    wrong_secret = token[: -len(secret)] + ("A" if secret[0] != "A" else "B") + secret[1:]

    for bad in (wrong_secret, token[:-1], token + "x", key["prefix"], "cvk_", "cvk_zz_" + secret):
        status, problem, _ = await api.request("GET", "/api/v1/jobs", headers=bearer(bad))
        assert status == 401, (bad, problem)


async def test_keys_are_stored_only_as_salted_hashes(api: Api, pg: Conn) -> None:
    keys = [await create_key(api, name=f"k{i}") for i in range(2)]

    rows = await pg.fetch("SELECT * FROM api_keys ORDER BY created_at")

    assert len({r["salt"] for r in rows}) == 2
    for key, row in zip(keys, rows, strict=True):
        stored = repr(dict(row))
        assert key["token"].split("_", 2)[2] not in stored  # the secret (it may itself hold `_`)
        assert len(row["hash"]) == 32


async def test_last_used_at_is_recorded_but_not_rewritten_on_every_request(api: Api, pg: Conn) -> None:
    key = await create_key(api)

    async def use() -> Any:
        status, _, _ = await api.request("GET", "/api/v1/jobs", headers=bearer(key["token"]))
        assert status == 200
        return await pg.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key["id"])

    first = await use()
    assert first is not None
    assert await use() == first  # within the minute: no write
    await pg.execute("UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1", key["id"])
    assert await use() > first


async def test_a_key_cannot_be_checked_while_postgresql_is_down_which_is_503_not_401(
    api: Api, services: Services, pg_proxy: TcpProxy
) -> None:
    key = await create_key(api)
    async with running_gateway(gateway_settings(services.through_postgres_port(pg_proxy.port))) as cut_off:
        pg_proxy.cut()

        status, problem, resp = await cut_off.request("GET", "/api/v1/job-types", headers=bearer(key["token"]))
        assert status == 503, problem
        assert resp.content_type == "application/problem+json"

        status, _, _ = await cut_off.request("GET", "/api/v1/job-types")  # a JWT needs no database
        assert status == 200
