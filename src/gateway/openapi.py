"""Build the OpenAPI 3.1 document from the app's router, its route declarations and the validating models.

Each route's declaration (`gateway.routing`, in `app[ROUTE_TABLE]`) says what the router cannot, in the
terms of `gateway.api_docs`; its query parameters are the very ones `gateway.http.params` enforces. Every
route of the router is in the document (a route never declared still appears, marked `x-undocumented`); every
schema comes from a pydantic model, and every job type of the app's registry gets its own job-request variants
(with and without an idempotency key), payload and result schema.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
from collections.abc import Iterator, Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway import schemas
from gateway.api_docs import Body
from gateway.http.errors import title_for
from gateway.keys import REGISTRY
from gateway.routing import ROUTE_TABLE, Handler, Route
from gateway.security.access import Access
from shared.core.ids import MAX_ID_CHARS
from shared.jobtypes.spec import AnySpec, Registry
from shared.ledger.submission import JobRequest, KeylessJobRequest

ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "description": "An opaque id.",
}


# The job request models, each published as one variant per job type.
JOB_REQUESTS: tuple[type[KeylessJobRequest], ...] = (JobRequest, KeylessJobRequest)

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
UNDOCUMENTED = "x-undocumented"
ERROR_MEANINGS = {
    400: "Malformed JSON or a bad query parameter",
    401: "No or invalid credentials",
    403: "Authenticated but not allowed",
    404: "Unknown, or not visible to the caller",
    409: "State conflict",
    413: "Body too large",
    415: "Wrong content type",
    422: "The body does not match its schema",
    429: "Rate limited; see Retry-After",
    503: "A dependency is down; retry shortly",
}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "Echoed from the request if given, else minted.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
    },
    "Location": {"description": "The created resource.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` on an idempotent replay.", "schema": {"const": "true"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}},
    "ETag": {"description": "The file's sha256, quoted.", "schema": {"type": "string"}},
}


def routes(app: web.Application) -> Iterator[tuple[str, str, Handler]]:
    """(method, path template, handler) of every route of the router; HEAD twins of GET routes are left out."""
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        yield route.method, resource.canonical, route.handler


def _camel(type_name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", type_name) if part)


def _models(operations: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(schemas.Problem, "serialization"): None}
    for op in operations:
        for body in op.request:
            if body.model is not None:
                found[(body.model, "validation")] = None
        for body in op.responses.values():
            if body.model is not None:
                found[(body.model, "serialization")] = None
    return list(found)


class _Components:
    """The component schemas of every model the operations and job types use, named once."""

    def __init__(self, operations: Sequence[Route], registry: Registry) -> None:
        specs: list[AnySpec] = list(registry)
        wanted = _models(operations)
        wanted += [(model, "validation") for model in JOB_REQUESTS]
        wanted += [(s.payload_model, "validation") for s in specs] + [(s.result_model, "serialization") for s in specs]
        refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
        self.refs = refs
        self.schemas: dict[str, Any] = dict(defs.get("$defs", {}))
        for model in JOB_REQUESTS:
            self._job_requests(model, specs)
        self._job_results(specs)

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.refs[(model, mode)])

    def _name(self, model: type[BaseModel], mode: JsonSchemaMode) -> str:
        return str(self.refs[(model, mode)]["$ref"]).rsplit("/", 1)[-1]

    def _job_requests(self, model: type[KeylessJobRequest], specs: list[AnySpec]) -> None:
        """A job request model becomes one variant per type (its `type` a constant, its `payload` that type's
        schema), so every model embedding a job request (batches, schedules) documents each type's payload."""
        name = self._name(model, "validation")
        base = self.schemas[name]
        variants: dict[str, str] = {}
        for spec in specs:
            variant = copy.deepcopy(base)
            variant["title"] = f"{spec.name} job request"
            variant["properties"]["type"] = {"const": spec.name, "type": "string", "description": spec.description}
            payload_name = self._name(spec.payload_model, "validation")
            variant["properties"]["payload"] = {"$ref": REF.format(model=payload_name)}
            if "timeout_s" in variant["properties"]:
                cap = spec.max_timeout_s
                variant["properties"]["timeout_s"] = {
                    "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": cap}, {"type": "null"}],
                    "description": f"Overrides the type's {spec.timeout_s:g} s, up to {cap:g} s.",
                }
            if _needs_payload(spec):
                variant["required"] = sorted({*variant.get("required", ()), "payload"})
            component = self._free(f"{_camel(spec.name)}{name}")
            self.schemas[component] = variant
            variants[spec.name] = REF.format(model=component)
        self.schemas[name] = {
            "title": name,
            "description": base.get("description", ""),
            "oneOf": [{"$ref": ref} for ref in variants.values()],
            "discriminator": {"propertyName": "type", "mapping": variants},
        }

    def _job_results(self, specs: list[AnySpec]) -> None:
        """A succeeded job's `result` is one of the registered types' results."""
        results = [self.ref(s.result_model, "serialization") for s in specs]
        for mode in ("serialization", "validation"):
            if (schemas.Job, mode) in self.refs:
                job = self.schemas[self._name(schemas.Job, mode)]
                description = job["properties"]["result"].get("description", "")
                job["properties"]["result"] = {"anyOf": [*results, {"type": "null"}], "description": description}

    def _free(self, name: str) -> str:
        candidate, n = name, 2
        while candidate in self.schemas:
            candidate, n = f"{name}{n}", n + 1
        return candidate


def _needs_payload(spec: AnySpec) -> bool:
    """Whether the type refuses an empty payload (the default when `payload` is left out)."""
    try:
        spec.payload_model.model_validate({})
    except ValidationError:
        return True
    return False


def _response(body: Body, components: _Components, status: int) -> dict[str, Any]:
    headers = {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-ID", *body.headers)}
    out: dict[str, Any] = {"description": body.description, "headers": headers}
    if body.media_type:
        schema = components.ref(body.model, "serialization") if body.model else dict(body.schema or {})
        out["content"] = {body.media_type: {"schema": schema}}
    return out


def _media(body: Body, components: _Components) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": components.ref(body.model, "validation") if body.model else dict(body.schema or {})
    }
    if body.example is not None:
        out["example"] = body.example
    return out


def _error_statuses(op: Route, *, has_path_params: bool, has_query_params: bool) -> list[int]:
    statuses = set(op.errors)
    if op.access is not Access.PUBLIC:
        statuses |= {401, 429, 503}
    if op.access is Access.ADMIN:
        statuses.add(403)
    if op.request:
        statuses |= {400, 413, 415, 422}
    if has_path_params:
        statuses.add(404)
    if has_query_params:
        statuses.add(400)
    return sorted(statuses)


def _parameters(path: str, op: Route) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": dict(op.path_schemas.get(name, ID_SCHEMA))}
        for name in re.findall(r"\{([^}:]+)", path)
    ]
    declared = [("query", q.name, q.schema, q.description, False) for q in op.query]
    declared += [("header", h.name, h.schema, h.description, h.required) for h in op.headers]
    for location, name, schema, description, required in declared:
        entry: dict[str, Any] = {"name": name, "in": location, "required": required, "schema": dict(schema)}
        if description:
            entry["description"] = description
        out.append(entry)
    return out


def _operation(method: str, path: str, op: Route, components: _Components) -> dict[str, Any]:
    params = _parameters(path, op)
    responses: dict[str, Any] = {str(s): _response(b, components, s) for s, b in sorted(op.responses.items())}
    where = {p["in"] for p in params}
    for status in _error_statuses(op, has_path_params="path" in where, has_query_params="query" in where):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/{status}"})
    out: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if params:
        out["parameters"] = params
    if op.access is Access.PUBLIC:
        out["security"] = []
    elif op.access is Access.ADMIN:
        out["description"] = (out.get("description", "") + " Admin only.").strip()
    if op.request:
        content = {b.media_type: _media(b, components) for b in op.request}
        out["requestBody"] = {"required": op.request_required, "content": content}
    return out


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.replace("/api/v1/", "/")) if w]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


def _undocumented(method: str, path: str, handler: Handler) -> Route:
    """What the document says of a route on the router that was never declared (the auth middleware makes it
    admin-only; the tests fail for it)."""
    docstring = (handler.__doc__ or "").strip()
    summary = docstring.splitlines()[0] if docstring else f"{method} (undocumented)"
    body = Body("Not documented yet", schema={})
    return Route(method, path, handler, Access.USER, summary, "undocumented", {200: body})


def _error_responses(components: _Components) -> dict[str, Any]:
    problem = components.ref(schemas.Problem, "serialization")
    out: dict[str, Any] = {}
    for status, meaning in ERROR_MEANINGS.items():
        headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
        if status in (429, 503):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        out[str(status)] = {
            "description": f"{title_for(status)}: {meaning}",
            "headers": headers,
            "content": {PROBLEM: {"schema": problem}},
        }
    return out


def build_document(app: web.Application, *, version: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app`, with the payload and result schemas of its registry."""
    found = list(routes(app))
    declared = app[ROUTE_TABLE]
    table = {(m, p): declared.find(m, p) for m, p, _ in found}
    components = _Components([op for op in table.values() if op is not None], app[REGISTRY])
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in found:
        op = table[(method, path)]
        entry = _operation(method, path, op or _undocumented(method, path, handler), components)
        if op is None:
            entry[UNDOCUMENTED] = True
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Conveyor",
            "version": version or _version(),
            "description": "Background jobs over HTTP. Errors are application/problem+json (RFC 9457). No string"
            " in a body or a query parameter may hold U+0000 (NUL): such a request is refused with a 400.",
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "responses": _error_responses(components),
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT or API key",
                    "description": "An HS256 JWT (`sub`, `exp`, optional `role`) or an API key from /api/v1/api-keys.",
                }
            },
        },
    }


def _version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed
        return "0"
