"""Property-based fuzzing (schemathesis) of every operation the OpenAPI document lists, against the real
gateway over HTTP: no 5xx, every status, content type, header and body is the one the document promises,
a request the document calls invalid is refused (a documented `maxLength` the server ignores fails), and a
request the document calls valid is accepted, unless a rule JSON Schema cannot state refuses it (UNSTATABLE).

Two passes: random cases (hypothesis, fixed seeds), and the boundary cases `schemathesis run` derives in its
coverage phase from every constraint of the document (one past `maxLength`, a missing required body, a
value of the wrong type...).

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
from schemathesis.core.transport import Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.core.settings import SecurityConfig
from support.helpers import make_token
from support.stack import Conn, Services, gateway_settings, running_gateway

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
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


# The rules that refuse a schema-valid request which JSON Schema cannot state (the document says each in
# words), as the 422's `errors[].msg` names them. A refused schema-valid request fails the test unless every
# one of its errors is one of these.
UNSTATABLE: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^differs from the Idempotency-Key header$",  # a header equal to a body field
        r"^Value error, must be between 2000 and 366 days from now$",  # `run_at`: relative to the present
        r"^Value error, `from` must be before `to`$",  # report.generate: comparing two fields
        r"^Value error, a report covers at most 366 days$",
        r"^Value error, `end_at` must come after `start_at`$",  # schedules
        r"^Value error, not a valid cron expression: ",  # cron's grammar, beyond a pattern's reach
        r"^Value error, `secret_context` names keys not in `context`: ",  # email.send
        r"^value is not a valid email address: ",  # idn-email allows what email-validator refuses
        r"^Input should be a valid URL, ",  # iri allows what an http(s) URL parser refuses (a bad port...)
        r"^Value error, credentials in the URL are not allowed; use `headers`$",
        r"^Value error, Input should be a valid datetime.*, second value is outside expected range",  # :60
    )
)


def _unstatable(response: Response) -> bool:
    """Whether the response is a 422 whose every error is one of the UNSTATABLE rules."""
    if response.status_code != 422:
        return False
    errors = response.json().get("errors") or [{"msg": ""}]
    return all(any(p.search(str(e.get("msg", ""))) for p in UNSTATABLE) for e in errors)


def _unexpected(exc: BaseException, response: Response) -> list[str]:
    """The failures in `exc`, less a schema-valid request refused by an UNSTATABLE rule."""
    failures = list(exc.exceptions) if isinstance(exc, FailureGroup) else [exc]
    return [str(f) for f in failures if not (isinstance(f, RejectedPositiveData) and _unstatable(response))]


def _failures(case: AnyCase, response: Response, headers: dict[str, str]) -> list[str]:
    """What CHECKS find wrong with the case's response (less the UNSTATABLE refusals), with its body."""
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except (Exception, FailureGroup) as exc:  # noqa: BLE001 - report every failure of the case, not the first
        return [f"{f}\n[{response.status_code}] {response.text[:500]}" for f in _unexpected(exc, response)]
    return []


def _load(doc: dict[str, Any]) -> Any:
    """The document as schemathesis reads it; strings without U+0000, which the API refuses everywhere (400)
    and its document says so."""
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.generation.update(allow_x00=False)
    return schema


def boundaries_all(doc: dict[str, Any], base: str, token: str) -> list[str]:
    """Send every operation (streams aside) the coverage-phase cases of `schemathesis run`; the failures."""
    schema = _load(doc)
    headers = {"Authorization": f"Bearer {token}"}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                failures.append(f"the document does not load: {result.err()}")
                continue
            operation = result.ok()
            if _endless(doc, operation.method, operation.path):
                continue
            config = schema.config.generation_for(operation=operation, phase="coverage")
            for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config):
                response = case.call(base_url=base, session=session, headers=headers, timeout=30)
                failures += [f"{operation.label}: {f}" for f in _failures(case, response, headers)]
    return failures


def fuzz_all(doc: dict[str, Any], base: str, token: str) -> Outcome:
    """Fuzz every operation of the document (streams aside), collecting every operation's failure."""
    schema = _load(doc)
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
                if failures := _failures(case, response, headers):
                    raise AssertionError("\n\n".join(failures))

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


@pytest.mark.timeout(300)
async def test_every_documented_constraint_is_kept_at_its_boundaries(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    settings = gateway_settings(services, security=UNLIMITED)
    async with running_gateway(settings) as api:
        async with api.session.get(api.base + "/api/v1/openapi.json") as resp:
            doc = await resp.json()
        failures = await asyncio.to_thread(boundaries_all, doc, api.base, make_token("fuzzer", role="admin"))
    assert not failures, f"{len(failures)} failing case(s):\n\n" + "\n\n".join(failures[:20])
