"""One JSON log line per record, stamped with the bound request and job ids."""

from __future__ import annotations

import io
import logging

from shared.core import json
from shared.core.logging import ConsoleFormatter, ContextFilter, JsonFormatter, job_id_var, request_id_var


def _logger(stream: io.StringIO, formatter: logging.Formatter | None = None, role: str = "gateway") -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter or JsonFormatter())
    handler.addFilter(ContextFilter(role))
    logger = logging.getLogger("conveyor.test")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_records_are_json_with_event_name_fields_and_bound_ids() -> None:
    stream = io.StringIO()
    token_r, token_j = request_id_var.set("req-1"), job_id_var.set("job_1")
    try:
        _logger(stream).info("job.enqueued", extra={"type": "system.echo"})
    finally:
        request_id_var.reset(token_r)
        job_id_var.reset(token_j)

    line = json.loads(stream.getvalue())
    assert line["event"] == "job.enqueued"
    assert line["level"] == "info"
    assert line["role"] == "gateway"
    assert line["request_id"] == "req-1"
    assert line["job_id"] == "job_1"
    assert line["type"] == "system.echo"
    assert line["ts"].endswith("Z")


def test_exceptions_are_kept_in_one_line() -> None:
    stream = io.StringIO()
    try:
        raise ValueError("boom")
    except ValueError:
        _logger(stream).exception("http.unhandled_error")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "ValueError: boom" in json.loads(lines[0])["exc"]


def test_console_lines_name_the_process_and_keep_the_fields() -> None:
    stream = io.StringIO()

    _logger(stream, ConsoleFormatter(), role="worker:default-2").warning("job.retried", extra={"attempt": 2})

    line = stream.getvalue().rstrip("\n")
    assert "\n" not in line
    assert not line.startswith("{")
    time, level, role, rest = line.split(maxsplit=3)
    assert (len(time), level, role) == (len("12:00:01.250"), "W", "default-2")
    assert rest == "job.retried attempt=2"
