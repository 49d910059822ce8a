"""configure_logging(LogConfig): JSON lines (orjson) or readable console lines, the request/job id contextvars."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import sys
from typing import Any

from shared.core import json
from shared.core.settings import LogConfig

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
job_type_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_type", default=None)

# Attributes every LogRecord has; anything else passed through `extra=` is an event field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    """Stamps the bound request id, job id and job type onto every record."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        record.job = job_type_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": json.rfc3339(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry).decode()


class ConsoleFormatter(logging.Formatter):
    """One readable line per record for a terminal: `12:00:01.250 I gateway      http.request status=200 …`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]  # noqa: DTZ006 - local time
        role = str(getattr(record, "role", "") or record.name).removeprefix("worker:")
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and v is not None and k != "role"
        )
        line = f"{stamp} {record.levelname[0]} {role:<12} {record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(config: LogConfig, *, role: str) -> None:
    """Route every logger (ours, aiohttp's, arq's) through one handler; called only by entry points."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's access log is replaced by our own middleware line; keep its other loggers.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # arq logs every job's arguments at INFO; those are user data (addresses, message bodies).
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
