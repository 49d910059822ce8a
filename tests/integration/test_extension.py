"""docs/add-a-job-type.md is true: its two code blocks alone make a working job type, end to end."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shared.jobtypes
import workers.families
from shared.jobtypes import builtin_specs
from support.stack import Api, Services, StartWorker, gateway_settings, running_gateway

DOC = Path(__file__).parents[2] / "docs" / "add-a-job-type.md"
_BLOCK = re.compile(r"```python file=(?P<path>\S+)\n(?P<code>.*?)```", re.DOTALL)


@pytest.fixture
def word_count_installed(tmp_path: Path) -> Iterator[None]:
    """Install the page's code blocks as modules of `shared.jobtypes` and `workers.families`, then remove them."""
    blocks = {m["path"]: m["code"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(blocks) == {"shared/jobtypes/word_count.py", "workers/families/word_count.py"}
    packages = {"shared/jobtypes": shared.jobtypes.__path__, "workers/families": workers.families.__path__}
    added: list[tuple[list[str], str]] = []
    for relative, code in blocks.items():
        folder, _, filename = relative.rpartition("/")
        target = tmp_path / folder.replace("/", "_")
        target.mkdir(exist_ok=True)
        (target / filename).write_text(code, encoding="utf-8")
        search_path: Any = packages[folder]
        search_path.append(str(target))
        added.append((search_path, str(target)))
    builtin_specs.cache_clear()
    try:
        yield
    finally:
        for search_path, entry in added:
            search_path.remove(entry)
        for name in ("shared.jobtypes.word_count", "workers.families.word_count"):
            sys.modules.pop(name, None)
        builtin_specs.cache_clear()


@pytest.mark.usefixtures("word_count_installed", "pg", "jobs_redis")
async def test_a_type_defined_as_the_page_says_is_listed_documented_validated_and_run(
    services: Services, start_worker: StartWorker
) -> None:
    async with running_gateway(gateway_settings(services)) as api:  # the default registry: discovery only
        await start_worker("default")  # the default handlers: discovery only
        await _check_listed(api)
        await _check_documented(api)
        await _check_validated(api)

        job = await api.submit("text.word_count", {"text": "To be, or not to be.", "top": 2})
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded", done["error"]
    assert done["result"] == {"words": 6, "top": [{"word": "to", "count": 2}, {"word": "be", "count": 2}]}


async def _check_listed(api: Api) -> None:
    status, body, _ = await api.request("GET", "/api/v1/job-types")
    assert status == 200
    item = next(i for i in body["items"] if i["type"] == "text.word_count")
    assert item["queue"] == "default"
    assert item["max_attempts"] == 3
    assert set(item["payload_schema"]["properties"]) >= {"text", "top"}
    assert "top" in item["result_schema"]["properties"]


async def _check_documented(api: Api) -> None:
    status, body, _ = await api.request("GET", "/api/v1/openapi.json")
    assert status == 200
    schemas = body["components"]["schemas"]
    assert "WordCountPayload" in schemas
    assert "WordCountResult" in schemas
    assert "text.word_count" in str(body)


async def _check_validated(api: Api) -> None:
    bad = {"type": "text.word_count", "payload": {"text": "x", "top": 0}}
    status, problem, _ = await api.request("POST", "/api/v1/jobs", json=bad)
    assert status == 422
    assert ["payload", "top"] in [e["loc"] for e in problem["errors"]]
