"""The dataset engine on small generated CSVs: types, nulls, statistics against Python's, malformed files."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from shared.core.settings import JobStoreConfig
from shared.jobtypes import dataset as dataset_spec
from shared.jobtypes.dataset import DatasetResult
from workers.families.dataset import engine
from workers.families.dataset.engine import MalformedCSV, TooManyColumns, analyze


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["columns"]}


def test_each_type_is_inferred_with_its_statistics(tmp_path: Path) -> None:
    rng = random.Random(7)
    ints = [rng.randint(-1000, 1000) for _ in range(500)]
    floats = [round(rng.uniform(-5, 5), 3) for _ in range(500)]
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=rng.randint(0, 365)) for _ in range(500)]
    stamps = [
        dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC) + dt.timedelta(minutes=rng.randint(0, 10**5)) for _ in range(500)
    ]
    words = [rng.choice(["apple", "Banana", "cherry", "dátil", "elder"]) for _ in range(500)]
    flags = [rng.random() < 0.3 for _ in range(500)]
    lines = ["i,f,d,t,s,b"] + [
        f"{i},{f},{d.isoformat()},{t.isoformat(sep=' ')},{s},{str(b).lower()}"
        for i, f, d, t, s, b in zip(ints, floats, days, stamps, words, flags, strict=True)
    ]
    result = analyze(write(tmp_path, "\n".join(lines) + "\n"))

    cols = by_name(result)
    assert result["rows"] == 500
    assert {n: c["type"] for n, c in cols.items()} == {
        "i": "integer", "f": "float", "d": "date", "t": "datetime", "s": "string", "b": "boolean",
    }  # fmt: skip
    i, f = cols["i"], cols["f"]
    assert (i["min"], i["max"]) == (min(ints), max(ints))
    assert i["mean"] == pytest.approx(statistics.fmean(ints))
    assert i["stddev"] == pytest.approx(statistics.stdev(ints))
    assert (f["min"], f["max"]) == (min(floats), max(floats))
    assert f["mean"] == pytest.approx(statistics.fmean(floats))
    assert f["stddev"] == pytest.approx(statistics.stdev(floats))
    assert (cols["d"]["min"], cols["d"]["max"]) == (min(days).isoformat(), max(days).isoformat())
    assert (cols["t"]["min"], cols["t"]["max"]) == (min(stamps).isoformat(), max(stamps).isoformat())
    assert (cols["s"]["min"], cols["s"]["max"]) == (min(words), max(words)), "lexicographic, by code point"
    assert cols["s"]["mean"] is None
    assert cols["d"]["stddev"] is None
    assert cols["b"]["mean"] == pytest.approx(statistics.fmean(flags)), "booleans average as 0/1"
    assert cols["b"]["min"] is None
    samples: dict[str, list[Any]] = {"i": ints, "s": words, "d": days, "b": flags}
    for name, values in samples.items():
        exact = len(set(values))
        assert abs(cols[name]["distinct_estimate"] - exact) <= max(2, exact * 0.15), name
    assert all(c["count"] == 500 and c["nulls"] == 0 for c in cols.values())


def test_nulls_are_counted_and_left_out_of_the_statistics(tmp_path: Path) -> None:
    text = "a,b,c\n1,x,\n,y,\n3,,\n,x,\n"
    cols = by_name(analyze(write(tmp_path, text)))

    assert (cols["a"]["count"], cols["a"]["nulls"]) == (2, 2)
    assert cols["a"]["mean"] == 2.0
    assert cols["a"]["distinct_estimate"] == 2, "null is not a distinct value"
    assert (cols["b"]["count"], cols["b"]["nulls"], cols["b"]["distinct_estimate"]) == (3, 1, 2)
    assert cols["c"] == {
        "name": "c", "type": "empty", "count": 0, "nulls": 4, "min": None, "max": None, "mean": None,
        "stddev": None, "distinct_estimate": 0,
    }  # fmt: skip


def test_a_value_past_the_inferred_rows_widens_the_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "INFER_ROWS", 2)
    monkeypatch.setattr(engine, "DATE_INFER_ROWS", 2)
    text = "n,d,w\n1,2024-01-01,1\n2,2024-01-02,2\n3,2024-01-03,3\n4.5,2024-01-04 10:30:00,x\n"
    cols = by_name(analyze(write(tmp_path, text)))

    assert (cols["n"]["type"], cols["n"]["max"]) == ("float", 4.5)
    assert (cols["d"]["type"], cols["d"]["max"]) == ("datetime", "2024-01-04T10:30:00")
    assert (cols["w"]["type"], cols["w"]["min"], cols["w"]["max"]) == ("string", "1", "x")


def test_other_delimiters_and_files_without_header(tmp_path: Path) -> None:
    result = analyze(write(tmp_path, "1;a\n2;b\n"), delimiter=";", has_header=False)

    assert result["rows"] == 2
    assert [(c["type"], c["count"]) for c in result["columns"]] == [("integer", 2), ("string", 2)]


def test_a_header_only_file_has_no_rows_and_empty_columns(tmp_path: Path) -> None:
    result = analyze(write(tmp_path, "a,b\n"))

    assert result["rows"] == 0
    assert [(c["name"], c["type"]) for c in result["columns"]] == [("a", "empty"), ("b", "empty")]


def test_non_finite_floats_are_reported_as_null(tmp_path: Path) -> None:
    col = analyze(write(tmp_path, "x\n1.5\ninf\n-2\n"))["columns"][0]

    assert (col["type"], col["min"], col["max"], col["mean"]) == ("float", -2.0, None, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n3,4,5\n", "more fields than the header"),
        (b"a,b\n1,x\n2,\xff\xfe\n", "not valid UTF-8"),
        (b"a,\xff\n1,2\n", "not valid UTF-8"),
        (b'a,b\n1,"open\n2,3\n', "unbalanced quotes"),
    ],
)
def test_malformed_files_are_refused_with_a_clear_reason(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(MalformedCSV, match=message):
        analyze(write(tmp_path, content))


def test_progress_is_written_where_the_caller_reads_it(tmp_path: Path) -> None:
    progress = str(tmp_path / "progress")
    Path(progress).touch()
    analyze(write(tmp_path, "a\n1\n2\n"), progress_path=progress)

    assert engine.read_progress(progress) == (engine.STAGE_SCANNING, 1.0)
    assert engine.read_progress(str(tmp_path / "absent")) is None


def test_a_file_wider_than_the_cap_is_refused_before_any_scan(tmp_path: Path) -> None:
    cap = engine.MAX_COLUMNS
    at_cap = ",".join(f"c{i}" for i in range(cap)) + "\n" + ",".join("1" for _ in range(cap)) + "\n"
    wider = ",".join(f"c{i}" for i in range(cap + 1)) + "\n" + ",".join("1" for _ in range(cap + 1)) + "\n"

    assert len(analyze(write(tmp_path, at_cap, "at_cap.csv"))["columns"]) == cap
    with pytest.raises(TooManyColumns, match=rf"^too many columns \({cap + 1} > {cap}\)$"):
        analyze(write(tmp_path, wider, "wider.csv"))


def test_the_engine_enforces_the_published_cap() -> None:
    assert engine.MAX_COLUMNS == dataset_spec.MAX_COLUMNS
    assert DatasetResult.model_json_schema()["properties"]["columns"]["maxItems"] == dataset_spec.MAX_COLUMNS


def test_the_widest_result_stays_under_the_stored_result_cap(tmp_path: Path) -> None:
    """Long names and long string values (characters JSON escapes at 6 bytes each) are cut, so a file at the
    column cap still gives a result far below the default RESULT_MAX_BYTES."""
    cap = engine.MAX_COLUMNS
    long = "\x01" * 5000
    header = ",".join(f"{i}{long}" for i in range(cap))
    rows = [",".join(f"{'a' if r else 'z'}{long}" for _ in range(cap)) for r in range(2)]
    result = analyze(write(tmp_path, "\n".join([header, *rows]) + "\n"))

    assert len(json.dumps(result).encode()) < JobStoreConfig().result_max_bytes
    column = result["columns"][7]
    assert column["name"] == ("7" + long)[: engine.MAX_TEXT_CHARS - 1] + "…"
    assert column["min"] == ("a" + long)[: engine.MAX_TEXT_CHARS - 1] + "…"
    assert column["max"].startswith("z")
    DatasetResult.model_validate(result)


def test_rescans_are_bounded_however_many_columns_widen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every column gets a value past the inferred rows that widens it: each pass finds one, so without a
    bound the scans would grow with the width. After MAX_RESCANS rescans the last one reads text."""
    monkeypatch.setattr(engine, "INFER_ROWS", 2)
    monkeypatch.setattr(engine, "DATE_INFER_ROWS", 2)
    scans = []
    real_scan = engine._scan

    def counted(*args: Any) -> Any:
        scans.append(args)
        return real_scan(*args)

    monkeypatch.setattr(engine, "_scan", counted)
    width = 3 * engine.MAX_RESCANS
    lines = [",".join(f"c{i}" for i in range(width))] + [",".join("1" for _ in range(width))] * 3
    lines += [",".join(f"x{i}" for i in range(width))]
    result = analyze(write(tmp_path, "\n".join(lines) + "\n"))

    assert len(scans) == 1 + engine.MAX_RESCANS
    assert result["rows"] == 4
    assert {c["type"] for c in result["columns"]} == {"string"}, "settled as text on the last rescan"
    assert all((c["min"], c["distinct_estimate"]) == ("1", 2) for c in result["columns"])
