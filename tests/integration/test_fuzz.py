"""Property-based fuzzing (schemathesis) of every operation the OpenAPI document lists, against the real
gateway over HTTP: no 5xx, and every status, content type, header and body is the one the document promises.

The gateway serves on the test's event loop; schemathesis sends its (blocking) requests from a worker
thread, so the loop stays free to answer them.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from redis.asyncio import Redis
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.settings import SecurityConfig
from support.helpers import make_token
from support.stack import Conn, Services, gateway_settings, running_gateway

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Negative cases send bad tokens by the dozen; the per-IP auth-failure limit would soon answer only 429s.
UNLIMITED = SecurityConfig(rate_limit_per_minute=1_000_000, auth_failures_per_minute=1_000_000)
AnyCase = Case[APIOperation[Any, Any, Any, Any]]
EXAMPLES_PER_MODE = 12
# A live event stream answers 200 and stays open by design: a fuzzer's request to one would never end. Streams
# of a resource named in the path are still fuzzed: random ids name nothing, so they answer a 404 at once.
STREAMING = "text/event-stream"


def _streams(doc: dict[str, Any], method: str, path: str) -> bool:
    responses = doc["paths"][path][method.lower()]["responses"]
    return any(STREAMING in response.get("content", {}) for response in responses.values())


def _endless(doc: dict[str, Any], method: str, path: str) -> bool:
    return "{" not in path and _streams(doc, method, path)


def _fuzz_operation(run_case: Callable[[AnyCase], None], case_strategy: Any, seed: int) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # a failure is reported with its curl line; no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case_strategy)
    def fuzz(case: AnyCase) -> None:
        run_case(case)

    fuzz()


def _modes(doc: dict[str, Any], method: str, path: str) -> tuple[GenerationMode, ...]:
    """Negative cases need something to break: a parameter or a body."""
    op = doc["paths"][path][method.lower()]
    if "parameters" in op or "requestBody" in op:
        return GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    return (GenerationMode.POSITIVE,)


@dataclass
class Outcome:
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # per operation
    failures: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # Location headers, newest last

    def known_id(self, path: str) -> tuple[str, str] | None:
        """(parameter, id) of a resource created earlier in the run that the path's first variable can name."""
        found = re.match(r"^(.*?)/\{([^}]+)\}", path)
        if found is None:
            return None
        prefix, name = found.groups()
        for location in reversed(self.created):
            if location.startswith(prefix + "/") and "/" not in location[len(prefix) + 1 :]:
                return name, location[len(prefix) + 1 :]
        return None


def fuzz_all(doc: dict[str, Any], base: str, token: str) -> Outcome:
    """Fuzz every operation of the document (streams aside), collecting every operation's failure."""
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"Authorization": f"Bearer {token}"}
    outcome = Outcome()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                outcome.failures.append(f"the document does not load: {result.err()}")
                continue
            operation = result.ok()
            if _endless(doc, operation.method, operation.path):
                continue
            seen = outcome.statuses[operation.label] = Counter()

            def run_case(case: AnyCase, seen: Counter[int] = seen) -> None:
                response = case.call(base_url=base, session=session, headers=headers, timeout=30)
                seen[response.status_code] += 1
                location = {k.lower(): v for k, v in response.headers.items()}.get("location")
                if response.status_code < 300 and location:
                    outcome.created.append(location[0])
                case.validate_response(response, checks=CHECKS, headers=headers)

            strategies = [
                operation.as_strategy(generation_mode=m) for m in _modes(doc, operation.method, operation.path)
            ]
            known = outcome.known_id(operation.path)
            # Random ids only ever find nothing: also aim at a resource that exists (streams aside: they stay open).
            if known is not None and not _streams(doc, operation.method, operation.path):
                strategies.append(operation.as_strategy(path_parameters=dict([known])))
            for seed, strategy in enumerate(strategies):
                try:
                    _fuzz_operation(run_case, strategy, seed)
                except (Exception, FailureGroup) as exc:  # noqa: BLE001 - report every operation's failure, not the first
                    outcome.failures.append(f"{operation.label} (pass {seed}): {exc}")
    return outcome


@pytest.mark.timeout(300)
@pytest.mark.parametrize("role", ["user", "admin"])
async def test_every_operation_keeps_to_the_document_under_fuzzing(
    services: Services, pg: Conn, jobs_redis: Redis, role: str
) -> None:
    settings = gateway_settings(services, security=UNLIMITED)
    async with running_gateway(settings) as api:
        async with api.session.get(api.base + "/api/v1/openapi.json") as resp:
            doc = await resp.json()
        outcome = await asyncio.to_thread(fuzz_all, doc, api.base, make_token("fuzzer", role=role))
    assert not outcome.failures, "\n\n".join(outcome.failures)
    operations = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if not _endless(doc, m, p)}
    assert set(outcome.statuses) == operations
    assert all(outcome.statuses.values())  # every operation was called
    # The document is precise enough for a client to write requests the gateway accepts.
    assert outcome.statuses["POST /api/v1/jobs"][202] > 0, outcome.statuses["POST /api/v1/jobs"]
