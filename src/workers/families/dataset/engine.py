"""The `dataset.analyze` engine: one polars streaming scan of a CSV, run in a worker's CPU pool process.

Importable without a worker (the bench and the unit tests call it directly). Everything it returns or
raises crosses a process boundary, so results are plain dicts and errors carry only a message.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import math
import os
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import polars as pl

# Rows read to infer each column's type; a later value that does not fit widens the column and the scan
# starts again (see `_widened`), at most MAX_RESCANS times: the last rescan reads every column as text, so
# a file crafted to widen one column per pass costs a few passes, not three per column.
INFER_ROWS: Final = 100_000
DATE_INFER_ROWS: Final = 1_000
MAX_RESCANS: Final = 4
# Wider files are refused: each column adds work to every pass and an entry to the stored result. The
# published cap, shared.jobtypes.dataset.MAX_COLUMNS (not imported: the pool process loads no pydantic).
MAX_COLUMNS: Final = 200
# Names and string statistics longer than this are cut (ending in "…"), so MAX_COLUMNS bounds the result.
MAX_TEXT_CHARS: Final = 50
# How often the scan's watcher reports progress and hands back the pages of the file already read.
WATCH_INTERVAL_S: Final = 0.1
# Progress records: (stage, fraction of the file read), two little-endian doubles at offset 0.
_RECORD: Final = struct.Struct("<dd")
STAGE_INFERRING, STAGE_SCANNING, STAGE_RESCANNING = 0.0, 1.0, 2.0
_MADV_DONTNEED: Final = 4

_PARSE_ERROR = re.compile(
    r"could not parse `(?P<value>.*?)` as dtype `(?P<dtype>[^`]+)` at column .*?\(column number (?P<n>\d+)\)", re.S
)


class MalformedCSV(Exception):
    """The file is not a CSV the engine can read (ragged rows, bad encoding, empty): retrying cannot help."""


class TooManyColumns(MalformedCSV):
    """The file has more than MAX_COLUMNS columns: retrying cannot help either."""


def analyze(
    path: str, *, delimiter: str = ",", has_header: bool = True, progress_path: str | None = None
) -> dict[str, Any]:
    """Per-column statistics of the CSV at `path`, in one streaming pass (more only if a type must widen,
    at most 1 + MAX_RESCANS in all).

    Progress goes to `progress_path` (see `read_progress`), which the caller polls from its event loop.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise MalformedCSV("the file is empty (0 bytes): expected at least a header row")
    with _progress_file(progress_path) as report:
        report(STAGE_INFERRING, 0.0)
        schema = _infer(path, delimiter, has_header)
        stage = STAGE_SCANNING
        for rescans in range(MAX_RESCANS + 1):
            report(stage, 0.0)
            try:
                with _Watcher(path, size, lambda fraction, s=stage: report(s, fraction)):
                    frame = _scan(path, delimiter, has_header, schema).collect(engine="streaming")
            except pl.exceptions.ComputeError as exc:
                schema = _widened(schema, str(exc))
                if rescans + 1 == MAX_RESCANS:  # the last rescan: text always parses, so it settles the types
                    schema = {name: pl.String() for name in schema}
                stage = STAGE_RESCANNING
                continue
            report(stage, 1.0)
            return _result(schema, frame.row(0))
    raise MalformedCSV("the column types could not be settled")  # pragma: no cover - text always parses


def read_progress(path: str) -> tuple[float, float] | None:
    """(stage, fraction) last written by a running `analyze`, or None before its first report."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < _RECORD.size:
        return None
    stage, fraction = _RECORD.unpack_from(data)
    return stage, fraction


@contextlib.contextmanager
def _progress_file(path: str | None) -> Iterator[Any]:
    if path is None:
        yield lambda stage, fraction: None
        return
    try:  # the caller creates the file and removes it when it stops listening: never create it here
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        yield lambda stage, fraction: None
        return
    try:
        yield lambda stage, fraction: os.pwrite(fd, _RECORD.pack(stage, fraction), 0)
    finally:
        os.close(fd)


def _scan_options(delimiter: str, has_header: bool) -> dict[str, Any]:
    return {"separator": delimiter, "has_header": has_header, "encoding": "utf8", "raise_if_empty": False}


def _infer(path: str, delimiter: str, has_header: bool) -> dict[str, pl.DataType]:
    """Types from the first INFER_ROWS rows; dates and times from the first DATE_INFER_ROWS (polars' date
    inference costs about 20 µs a value, so a large sample of it would take longer than some scans)."""
    _check_header_encoding(path)
    options = _scan_options(delimiter, has_header)
    try:
        # The header alone first (every column read as text, no rows inferred): a file too wide is refused
        # before any work proportional to its width.
        width = len(pl.scan_csv(path, infer_schema_length=0, **options).collect_schema())
        if width > MAX_COLUMNS:
            raise TooManyColumns(f"too many columns ({width} > {MAX_COLUMNS})")
        schema = dict(pl.scan_csv(path, infer_schema_length=INFER_ROWS, **options).collect_schema())
        dated = pl.scan_csv(path, try_parse_dates=True, infer_schema_length=DATE_INFER_ROWS, **options)
        for name, dtype in dated.collect_schema().items():
            if schema.get(name) == pl.String and (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
                schema[name] = dtype
    except pl.exceptions.ComputeError as exc:
        raise MalformedCSV(_describe(str(exc))) from None
    return schema


def _check_header_encoding(path: str) -> None:
    """polars decodes the header leniently (invalid bytes become U+FFFD); the body it checks itself."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"\n")
    try:
        head[: end if end >= 0 else len(head) - 3].decode("utf-8")  # a cut character is not an error
    except UnicodeDecodeError:
        raise MalformedCSV("the file is not valid UTF-8 (in the header)") from None


def _scan(path: str, delimiter: str, has_header: bool, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    lf = pl.scan_csv(path, schema=schema, **_scan_options(delimiter, has_header))
    exprs: list[pl.Expr] = [pl.len().alias("rows")]
    for i, (name, dtype) in enumerate(schema.items()):
        col = pl.col(name)
        exprs += [
            col.count().alias(f"{i}:count"),
            col.approx_n_unique().alias(f"{i}:distinct"),  # counts null as a value: see _result
        ]
        if dtype != pl.Boolean:
            exprs += [col.min().alias(f"{i}:min"), col.max().alias(f"{i}:max")]
        if dtype.is_numeric() or dtype == pl.Boolean:
            as_float = col.cast(pl.Float64)
            exprs += [as_float.mean().alias(f"{i}:mean"), as_float.std().alias(f"{i}:stddev")]
    return lf.select(exprs)


def _widened(schema: dict[str, pl.DataType], message: str) -> dict[str, pl.DataType]:
    """The schema with the column named in a parse error widened one step (integer -> float -> string,
    date -> datetime -> string, boolean -> string); any other error means the file itself is malformed."""
    match = _PARSE_ERROR.search(message)
    if match is None or match["dtype"] == "str":
        raise MalformedCSV(_describe(message)) from None
    names = list(schema)
    index = int(match["n"]) - 1
    if not 0 <= index < len(names):
        raise MalformedCSV(_describe(message)) from None
    name, value = names[index], match["value"]
    current = schema[name]
    wider: pl.DataType = pl.String()
    if current.is_integer() and _is_float(value):
        wider = pl.Float64()
    elif current == pl.Date and _is_datetime(value):
        wider = pl.Datetime("us")
    return {**schema, name: wider}


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _describe(message: str) -> str:
    """A reader's message for a polars error (its first line, without polars' tuning hints)."""
    first = message.strip().splitlines()[0] if message.strip() else "unreadable CSV"
    if "more fields than defined" in first:
        return "a row has more fields than the header"
    if "invalid utf-8" in first.lower():
        return "the file is not valid UTF-8"
    if "as dtype `str`" in message:
        return "unbalanced quotes: a quoted field is never closed"
    return first


def _type_name(dtype: pl.DataType, count: int) -> str:
    if count == 0:
        return "empty"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "string"


def _plain(value: Any) -> float | int | str | None:
    """A JSON-safe statistic: ISO strings for dates and times, None for NaN and infinities, text cut."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if value is None or isinstance(value, int):
        return value
    return _cut(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _result(schema: dict[str, pl.DataType], row: tuple[Any, ...]) -> dict[str, Any]:
    values = iter(row)
    rows = int(next(values))
    columns = []
    for name, dtype in schema.items():
        count, distinct = int(next(values)), int(next(values))
        if count < rows:  # approx_n_unique counted null as one more value
            distinct = max(distinct - 1, 0)
        low = high = mean = stddev = None
        if dtype != pl.Boolean:
            low, high = _plain(next(values)), _plain(next(values))
        if dtype.is_numeric() or dtype == pl.Boolean:
            mean, stddev = _plain(next(values)), _plain(next(values))
        columns.append({
            "name": _cut(name), "type": _type_name(dtype, count), "count": count, "nulls": rows - count,
            "min": low, "max": high, "mean": mean, "stddev": stddev, "distinct_estimate": distinct,
        })  # fmt: skip
    return {"rows": rows, "columns": columns}


class _Watcher(threading.Thread):
    """Watches a scan of `path` from inside its process: reports the share of the file read, and hands the
    pages already read back to the kernel (MADV_DONTNEED on polars' read-only map of the file).

    Why: polars maps the whole file, and every page it has touched stays resident, so a 1 GiB file would
    cost 1 GiB of RSS. Dropped pages of a read-only file map are re-read from the page cache if touched
    again, so this never changes what the scan sees. Off Linux it does nothing: the scan still works.
    """

    def __init__(self, path: str, size: int, report: Any) -> None:
        super().__init__(name="dataset-scan-watcher", daemon=True)
        self.path = os.path.realpath(path)
        self.size = max(size, 1)
        self.report = report
        self.stopped = threading.Event()
        self.read = 0
        self.madvise = _libc_madvise()

    def __enter__(self) -> _Watcher:
        self.baseline = _rss_file_bytes()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join()

    def run(self) -> None:
        while not self.stopped.wait(WATCH_INTERVAL_S):
            self.step()

    def step(self) -> None:
        now = _rss_file_bytes()
        if now is None or self.baseline is None:
            return
        self.read += max(now - self.baseline, 0)
        if self.madvise is not None:
            for start, end in _mappings_of(self.path):
                self.madvise(start, end - start, _MADV_DONTNEED)
        self.baseline = _rss_file_bytes()
        self.report(min(self.read / self.size, 0.99))


def _libc_madvise() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _rss_file_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _mappings_of(path: str) -> list[tuple[int, int]]:
    found = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == path and parts[1].startswith("r"):
                    start, end = parts[0].split("-")
                    found.append((int(start, 16), int(end, 16)))
    except OSError:
        return []
    return found
