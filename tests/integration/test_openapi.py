"""GET /api/v1/openapi.json: a valid OpenAPI 3.1 document of every route, with every job type's schemas."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from gateway.openapi import REF, UNDOCUMENTED, routes
from gateway.routes import ROUTES
from gateway.routing import template_key
from shared.jobtypes import builtin_registry, builtin_specs
from shared.jobtypes.spec import JobSpec, Payload, Queue, Registry, Result
from support.stack import Api, Services, StartWorker, gateway_settings, running_gateway

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


async def _document(api: Api) -> dict[str, Any]:
    async with api.session.get(api.base + "/api/v1/openapi.json") as resp:  # no Authorization header
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert isinstance(body, dict)
    return body


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(doc: dict[str, Any], component: str, *, formats: bool = False) -> jsonschema_rs.Validator:
    """A validator for one component schema, its references resolved inside the document (`formats`: the
    `format` keywords checked, as schemathesis does)."""
    root = {"$schema": DRAFT_2020_12, "$ref": REF.format(model=component), "components": doc["components"]}
    return jsonschema_rs.validator_for(root, validate_formats=formats)


def _job_request_variant(doc: dict[str, Any], type_name: str) -> dict[str, Any]:
    mapping = doc["components"]["schemas"]["JobRequest"]["discriminator"]["mapping"]
    variant = _resolve(doc, mapping[type_name])
    assert isinstance(variant, dict)
    assert variant["properties"]["type"]["const"] == type_name
    return variant


def _assert_model_documented(doc: dict[str, Any], ref: str, model: type[BaseModel], mode: str) -> None:
    """The component `ref` points at is the model's own JSON Schema (nested models hoisted to components)."""
    expected = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    nested = expected.pop("$defs", {})
    assert _resolve(doc, ref) == expected
    for name, schema in nested.items():
        assert doc["components"]["schemas"][name] == schema


async def test_the_document_is_valid_openapi_3_1_and_needs_no_token(api: Api) -> None:
    doc = await _document(api)
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid({"$schema": DRAFT_2020_12, **schema}), name
    for ref in set(_refs(doc)):
        _resolve(doc, ref)  # every reference points at something
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    async with api.session.get(api.base + "/api/v1/openapi.json") as again:
        assert await again.json() == doc


async def test_every_route_of_the_router_is_documented_and_nothing_else(api: Api) -> None:
    doc = await _document(api)
    documented = {(method, path): op for method, path, op in _operations(doc)}
    served = {(method, path) for method, path, _ in routes(api.app)}
    assert {"/health", "/ready", "/metrics", "/api/v1/jobs", "/api/v1/openapi.json"} <= {p for _, p in served}
    assert served == set(documented)
    undocumented = sorted(key for key, op in documented.items() if op.get(UNDOCUMENTED))
    assert not undocumented, f"declare these routes with gateway.routing.Routes: {undocumented}"
    assert {r.key for r in ROUTES} == {template_key(m, p) for m, p in served}


async def test_every_operation_documents_its_access_and_its_problem_responses(api: Api) -> None:
    doc = await _document(api)
    problem_ref = REF.format(model="Problem")
    for method, path, op in _operations(doc):
        where = f"{method} {path}"
        responses = {int(s): _resolve(doc, r["$ref"]) if "$ref" in r else r for s, r in op["responses"].items()}
        assert any(s < 400 for s in responses), where
        for status, response in responses.items():
            if status >= 400 and not (path == "/ready" and status == 503):
                assert response["content"] == {"application/problem+json": {"schema": {"$ref": problem_ref}}}, where
        public = op.get("security") == []
        assert public == (not path.startswith("/api/v1/") or path == "/api/v1/openapi.json"), where
        if not public:
            assert {401, 429, 503} <= set(responses), where
        if "requestBody" in op:
            assert {400, 413, 415, 422} <= set(responses), where
        if "{" in path:
            assert 404 in responses, where
    assert "403" in doc["paths"]["/api/v1/queues"]["get"]["responses"]
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


async def test_every_job_type_has_its_payload_and_result_schema_in_the_document(api: Api) -> None:
    doc = await _document(api)
    specs = builtin_specs()
    assert set(doc["components"]["schemas"]["JobRequest"]["discriminator"]["mapping"]) == {s.name for s in specs}
    job_results = doc["components"]["schemas"]["Job"]["properties"]["result"]["anyOf"]
    for spec in specs:
        variant = _job_request_variant(doc, spec.name)
        _assert_model_documented(doc, variant["properties"]["payload"]["$ref"], spec.payload_model, "validation")
        assert variant["properties"]["timeout_s"]["anyOf"][0]["maximum"] == spec.max_timeout_s
        result_ref = next(
            r["$ref"] for r in job_results if _resolve(doc, r["$ref"])["title"] == spec.result_model.__name__
        )
        _assert_model_documented(doc, result_ref, spec.result_model, "serialization")
    # Batches and schedules embed the same per-type job requests, without an idempotency key.
    schemas = doc["components"]["schemas"]
    keyless = schemas["KeylessJobRequest"]["discriminator"]["mapping"]
    assert set(keyless) == {s.name for s in specs}
    for type_name, ref in keyless.items():
        assert set(_resolve(doc, ref)["properties"]) == set(_job_request_variant(doc, type_name)["properties"]) - {
            "idempotency_key"
        }
    assert schemas["BatchRequest"]["properties"]["jobs"]["items"] == {"$ref": REF.format(model="KeylessJobRequest")}
    assert schemas["ScheduleRequest"]["properties"]["job"]["$ref"] == REF.format(model="KeylessJobRequest")


async def test_the_document_accepts_and_refuses_job_requests_as_the_gateway_does(api: Api) -> None:
    doc = await _document(api)
    request = _validator(doc, "JobRequest")
    good = {"type": "system.echo", "payload": {"data": {"n": 1}, "sleep_s": 0}}
    bad = [
        {"type": "system.echo", "payload": {"sleep_s": 61}},
        {"type": "email.send", "payload": {"subject": "no recipients", "text": "x"}},
        {"type": "no.such.type", "payload": {}},
        {"type": "system.echo", "timeout_s": 301},
    ]
    assert request.is_valid(good)
    status, job, _ = await api.request("POST", "/api/v1/jobs", json=good)
    assert status == 202
    assert _validator(doc, "Job").is_valid(job)
    for body in bad:
        assert not request.is_valid(body), body
        status, problem, resp = await api.request("POST", "/api/v1/jobs", json=body)
        assert status == 422, body
        assert resp.content_type == "application/problem+json"
        assert _validator(doc, "Problem").is_valid(problem)


IN_AN_HOUR = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
EMAIL = {"to": ["ann@example.com"], "subject": "Hello"}
REPORT = {"from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z"}
HOOK = {"url": "https://hooks.example.com/in", "event": "ping"}
# Rules that span several fields or constrain a format, each stated by the document: (body, gateway status).
JOB_RULES: list[tuple[dict[str, Any], int]] = [
    ({"type": "system.echo", "delay_s": 5}, 202),
    ({"type": "system.echo", "run_at": IN_AN_HOUR}, 202),
    ({"type": "system.echo", "delay_s": 5, "run_at": IN_AN_HOUR}, 422),
    ({"type": "system.echo", "delay_s": None, "run_at": IN_AN_HOUR}, 202),
    ({"type": "system.echo", "run_at": "2030-01-01 09:00:00Z"}, 422),  # not RFC 3339
    ({"type": "system.echo", "run_at": "1900000000"}, 422),  # a Unix time is no date-time either
    ({"type": "email.send", "payload": {**EMAIL, "text": "hi"}}, 202),
    ({"type": "email.send", "payload": {**EMAIL, "html": "<p>hi</p>", "text": None}}, 202),
    ({"type": "email.send", "payload": {**EMAIL, "template": "welcome", "context": {"k": "v"}}}, 202),
    ({"type": "email.send", "payload": {**EMAIL, "template": "welcome", "text": "hi"}}, 422),
    ({"type": "email.send", "payload": EMAIL}, 422),
    ({"type": "email.send", "payload": {**EMAIL, "text": "hi", "context": {"k": "v"}}}, 422),
    ({"type": "email.send", "payload": {**EMAIL, "text": "hi", "secret_context": ["k"]}}, 422),
    ({"type": "email.send", "payload": {**EMAIL, "subject": "two\nlines", "text": "hi"}}, 422),
    ({"type": "email.send", "payload": {**EMAIL, "to": ["ann@example.com "], "text": "hi"}}, 422),
    ({"type": "email.send", "payload": {**EMAIL, "to": ["zoë@example.com"], "text": "hi"}}, 202),
    ({"type": "report.generate", "payload": {"period": "day"}}, 202),
    ({"type": "report.generate", "payload": REPORT}, 202),
    ({"type": "report.generate"}, 422),
    ({"type": "report.generate", "payload": {"period": "day", "from": REPORT["from"]}}, 422),
    ({"type": "report.generate", "payload": {"from": REPORT["from"]}}, 422),
    ({"type": "report.generate", "payload": {"from_": REPORT["from"], "to": REPORT["to"]}}, 422),  # no alias
    ({"type": "webhook.deliver", "payload": {**HOOK, "headers": {"X-Token": "t"}}}, 202),
    ({"type": "webhook.deliver", "payload": {**HOOK, "headers": {"content-TYPE": "text/plain"}}}, 422),
    ({"type": "webhook.deliver", "payload": {**HOOK, "headers": {"X-Token\n": "t"}}}, 422),
    ({"type": "webhook.deliver", "payload": {**HOOK, "headers": {"X-Token": "a\r\nb"}}}, 422),
    ({"type": "webhook.deliver", "payload": {**HOOK, "url": "ftp://files.example.com/"}}, 422),
    ({"type": "webhook.deliver", "payload": {**HOOK, "url": " https://hooks.example.com/in"}}, 422),
]


async def test_the_document_states_the_rules_that_span_fields_and_the_gateway_keeps_them(api: Api) -> None:
    doc = await _document(api)
    request = _validator(doc, "JobRequest", formats=True)
    for body, expected in JOB_RULES:
        status, answer, _ = await api.request("POST", "/api/v1/jobs", json=body)
        assert status == expected, (body, answer)
        assert request.is_valid(body) == (expected == 202), body
    batch = _validator(doc, "BatchRequest", formats=True)
    echo = {"type": "system.echo"}
    batches: list[tuple[dict[str, Any], int]] = [
        ({"jobs": [echo], "on_complete": {**echo, "payload": {"batch_id": None}}}, 202),
        ({"jobs": [{**echo, "idempotency_key": "k"}]}, 422),
        ({"jobs": [echo], "on_complete": {**echo, "payload": {"batch_id": "bat_mine"}}}, 422),
    ]
    for body, expected in batches:
        status, answer, _ = await api.request("POST", "/api/v1/batches", json=body)
        assert status == expected, (body, answer)
        assert batch.is_valid(body) == (expected == 202), body
    schedule = _validator(doc, "ScheduleRequest", formats=True)
    schedules: list[tuple[dict[str, Any], int]] = [
        ({"name": "a", "cron": "0 2 * * *", "timezone": "Europe/Paris", "job": echo}, 201),
        ({"name": "b", "cron": "0 2 * * *", "job": {**echo, "idempotency_key": "k"}}, 422),
        ({"name": "c", "cron": "0 2 * * *", "timezone": "Mars/Olympus_Mons", "job": echo}, 422),
    ]
    for body, expected in schedules:
        status, answer, _ = await api.request("POST", "/api/v1/schedules", json=body)
        assert status == expected, (body, answer)
        assert schedule.is_valid(body) == (expected == 201), body


async def test_every_request_example_matches_its_schema(api: Api) -> None:
    doc = await _document(api)
    examples = 0
    for method, path, op in _operations(doc):
        for media in op.get("requestBody", {}).get("content", {}).values():
            if "example" in media:
                root = {"$schema": DRAFT_2020_12, **media["schema"], "components": doc["components"]}
                assert jsonschema_rs.validator_for(root).is_valid(media["example"]), f"{method} {path}"
                examples += 1
    assert examples >= 5


async def test_jobs_run_by_a_worker_match_the_documented_job_resource(api: Api, start_worker: StartWorker) -> None:
    doc = await _document(api)
    job_schema = _validator(doc, "Job")
    await start_worker("default")
    ok = await api.submit("system.echo", {"data": {"n": [1, 2]}})
    failing = await api.submit("system.echo", {"fail_times": 1}, max_attempts=1)
    succeeded = await api.wait_status(ok["id"], "succeeded")
    failed = await api.wait_status(failing["id"], "failed")
    for job in (ok, succeeded, failed):
        assert job_schema.is_valid(job), job
    assert succeeded["result"] == {"data": {"n": [1, 2]}, "attempt": 1}
    assert [e["attempt"] for e in failed["errors"]] == [1]
    # The result is held to the registered types' result schemas, not to any object.
    assert not job_schema.is_valid({**succeeded, "result": {"rows": "many"}})


class ShoutPayload(Payload):
    words: list[str] = Field(min_length=1, max_length=3)
    volume: int = Field(5, ge=1, le=11)


class ShoutResult(Result):
    echoed: str


SHOUT = JobSpec(
    name="test.shout",
    description="A type known only to this test's registry.",
    queue=Queue.DEFAULT,
    payload_model=ShoutPayload,
    result_model=ShoutResult,
    max_timeout_s=42.0,
)


@pytest.mark.usefixtures("pg")
async def test_a_type_added_to_the_registry_appears_in_the_document(services: Services, jobs_redis: Redis) -> None:
    registry = Registry([*builtin_registry(), SHOUT])
    async with running_gateway(gateway_settings(services), registry=registry) as api:
        doc = await _document(api)
        schemathesis.openapi.from_dict(doc).validate()
        variant = _job_request_variant(doc, "test.shout")
        assert variant["required"] == ["payload", "type"]
        assert variant["properties"]["timeout_s"]["anyOf"][0]["maximum"] == 42.0
        _assert_model_documented(doc, variant["properties"]["payload"]["$ref"], ShoutPayload, "validation")
        request = _validator(doc, "JobRequest")
        assert request.is_valid({"type": "test.shout", "payload": {"words": ["hey"]}})
        assert not request.is_valid({"type": "test.shout", "payload": {"words": ["hey"], "volume": 12}})
        status, _, _ = await api.request("POST", "/api/v1/jobs", json={"type": "test.shout", "payload": {"volume": 1}})
        assert status == 422
        # The batch request documents the new type too: it refers to the same JobRequest.
        batch = _validator(doc, "BatchRequest")
        assert batch.is_valid({"jobs": [{"type": "test.shout", "payload": {"words": ["a", "b"]}}]})
