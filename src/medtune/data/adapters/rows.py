"""Reading rows with their locations, and checking fields, shared by the adapters.

A row's location is ``line N`` (JSON-lines, 1-based), ``key K`` (JSON objects keyed by id),
``row N`` (CSV, 1-based, header excluded) or ``index N`` (Hub datasets, the 0-based ``ds[N]``).
Converters raise :class:`DataError`; :func:`convert_rows` sends each one to ``rejects``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from medtune.data.adapters import strict_json
from medtune.data.rejects import Rejects
from medtune.errors import DataError


class HasId(Protocol):
    """A record (:class:`QARecord`, :class:`TextDoc`): its id must be unique in its source."""

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=HasId)
Row = tuple[str, Any]
"""(location, raw row)."""


def read_text(path: Path) -> str:
    """The whole file as text; a leading UTF-8 byte-order mark (as Windows editors write) is dropped."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, None, None, f"cannot read file: {err}") from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number from 1, line)`` lazily, split on ``\\n`` only, without ``\\n``/``\\r\\n``.

    Hand-written rather than ``str.splitlines()``: that also splits on U+2028, U+0085, form feed and
    other characters that are valid inside a JSON string or a document, so one line would become
    several and line numbers would drift. The file is read as bytes (Python splits bytes on ``\\n``
    only) and decoded per line, so an invalid UTF-8 byte names its own line. A UTF-8 byte-order
    mark at the start is dropped.
    """
    try:
        fh = path.open("rb")
    except OSError as err:
        raise DataError(path, None, None, f"cannot read file: {err}") from None
    with fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(path, f"line {n}", None, f"not valid UTF-8 (byte {err.start + 1} of the line)") from None
            yield n, line.removesuffix("\n").removesuffix("\r")


def _loads(path: Path, where: str | None, text: str) -> Any:
    """Parse strictly (see :mod:`strict_json`); ``where`` is the row's location, None for a whole file.

    In a whole file a repeated top-level key (a PMID) names both of its lines."""
    try:
        return strict_json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, where or f"line {err.lineno}", None, f"invalid JSON: {err.msg}") from None
    except strict_json.DuplicateKey as err:
        lines = strict_json.top_level_key_lines(text).get(err.key, []) if where is None else []
        if len(lines) > 1:
            raise DataError(path, f"key {err.key}", None, f"duplicate key at lines {lines[0]} and {lines[1]}: JSON "
                            "readers keep only the last, so one item would be lost silently") from None
        raise DataError(path, where, err.key, "duplicate key in one object: JSON readers keep only the last "
                        "value, so one would be lost silently") from None
    except ValueError as err:
        raise DataError(path, where, None, f"invalid JSON: {err}") from None


def _surrogate_message(escape: str) -> str:
    return (f"lone surrogate escape {escape}: valid JSON, but half of a UTF-16 pair, which is not text "
            "(no tokenizer can encode it); replace it (e.g. with U+FFFD) in the source")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Parse a whole-file JSON object (e.g. PubMedQA keyed by PMID); anything else names the file.

    Strict: a repeated top-level key names both lines, a lone surrogate names the key and field."""
    text = read_text(path)
    data = _loads(path, None, text)
    if not isinstance(data, dict):
        raise DataError(path, None, None, f"expected a JSON object {what}, got a JSON {type(data).__name__}")
    for key, item in data.items():
        hit = strict_json.surrogate_field(text, {key: item})
        if hit:
            field = hit[0].removeprefix(key).lstrip(".") or None
            raise DataError(path, f"key {key}", field, _surrogate_message(hit[1]))
    return data


def json_array_rows(path: Path, rejects: Rejects) -> Iterator[Row]:
    """Yield ``("line N", obj)`` for each item of a whole-file JSON array, N the line the item starts
    at; an item that is not an object, or holds a lone surrogate, is rejected. A file that is not a
    strict JSON array is an error naming the file."""
    text = read_text(path)
    data = _loads(path, None, text)
    if not isinstance(data, list):
        raise DataError(path, None, None, f"expected a JSON array of items (or JSON-lines, one object per line), "
                        f"got a JSON {type(data).__name__}")
    for line, item in zip(strict_json.array_item_lines(text), data):
        where = f"line {line}"
        if not isinstance(item, dict):
            rejects.reject(DataError(path, where, None, f"expected a JSON object, got {type(item).__name__}"), item)
            continue
        hit = strict_json.surrogate_field(json.dumps(item), item)
        if hit:
            rejects.reject(DataError(path, where, hit[0], _surrogate_message(hit[1])), json.dumps(item))
            continue
        yield where, item


def parquet_rows(path: Path, need: Sequence[str], read: Sequence[str] | None = None) -> Iterator[Row]:
    """``("row N", row)`` per Parquet row (N from 1), batch by batch (only ``read`` columns, default all). A
    column of ``need`` that the file lacks is one error naming it and the columns there are."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(path, None, None, f"cannot read Parquet file: {type(err).__name__}: {err}") from None
    have = pf.schema_arrow.names
    for col in need:
        if col not in have:
            raise DataError(path, None, col, f"column missing (available: {', '.join(have)})")
    n = 0
    for batch in pf.iter_batches(batch_size=1024, columns=list(read) if read is not None else None):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _parse_line(path: Path, n: int, line: str) -> Any:
    """One JSON-lines row, strictly; raises the :class:`DataError` that names line and field."""
    obj = _loads(path, f"line {n}", line)
    if not isinstance(obj, dict):
        raise DataError(path, f"line {n}", None, f"expected a JSON object, got {type(obj).__name__}")
    hit = strict_json.surrogate_field(line, obj)
    if hit:
        raise DataError(path, f"line {n}", hit[0], _surrogate_message(hit[1]))
    return obj


def jsonl_rows(path: Path, rejects: Rejects) -> Iterator[Row]:
    """Yield ``("line N", obj)`` for each non-blank line; a line that is not a strict JSON object is rejected."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            yield f"line {n}", _parse_line(path, n, line)
        except DataError as err:
            rejects.reject(err, line)


def iter_converted(rows: Iterable[Row], convert: Callable[[str, Any], R], rejects: Rejects) -> Iterator[R]:
    """Apply ``convert(location, raw)`` to each row lazily; a :class:`DataError` rejects that row only.

    No duplicate-id check (it would keep every id in memory): for sources whose ids are their
    positions (text lines, Hub row indices), which cannot repeat. Records with real ids use
    :func:`convert_rows`.
    """
    for where, raw in rows:
        try:
            yield convert(where, raw)
        except DataError as err:
            rejects.reject(err, raw)


def convert_rows(rows: Iterable[Row], convert: Callable[[str, Any], R], rejects: Rejects, source: str | Path) -> list[R]:
    """Apply ``convert(location, raw)`` to each row; a :class:`DataError` rejects that row only.

    An id seen before is rejected too, naming both locations: a repeated row would be trained on or
    scored twice, and two different items under one id break folds, leakage checks and paired deltas.
    """
    out: list[R] = []
    first: dict[str, str] = {}  # id -> location of its first row
    for where, raw in rows:
        try:
            rec = convert(where, raw)
            rec_id = rec.id
            if rec_id in first:
                raise DataError(source, where, "id", f"duplicate id {rec_id!r}, first seen at {first[rec_id]}")
            first[rec_id] = where
            out.append(rec)
        except DataError as err:
            rejects.reject(err, raw)
    return out


def get_field(row: dict[str, Any], key: str, path: str | Path, where: str) -> Any:
    if not isinstance(row, dict):
        raise DataError(path, where, None, f"expected an object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise DataError(path, where, key, "missing field")
    return row[key]


def text(row: dict[str, Any], key: str, path: str | Path, where: str) -> str:
    """A required, non-empty string field."""
    value = get_field(row, key, path, where)
    if not isinstance(value, str):
        raise DataError(path, where, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, where, key, "empty text")
    return value


def option_texts(values: Sequence[Any], field: str, path: str | Path, where: str) -> tuple[str, ...]:
    """Check every option is a non-empty string."""
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise DataError(path, where, field, f"option {i + 1} is empty or not a string: {value!r}")
    return tuple(values)


def index_of(label: Any, labels: Sequence[str], field: str, path: str | Path, where: str) -> int:
    """Position of ``label`` among ``labels``; otherwise an error listing the allowed labels."""
    if label not in labels:
        raise DataError(path, where, field, f"{label!r} is not one of the allowed values {', '.join(labels)}")
    return list(labels).index(label)


def int_in_range(value: Any, lo: int, hi: int, field: str, path: str | Path, where: str, note: str = "") -> int:
    """An int (or integral string) in ``lo..hi``; the error names the allowed values."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DataError(path, where, field, f"{value!r} is not an allowed value {lo}..{hi}{note}")
    return value


def csv_records(file: Path) -> list[tuple[int, int, list[str]]]:
    """``(first line, last line, cells)`` of each CSV record, lines counted on ``\\n`` from 1.

    ``strict=True`` turns a quote that is never closed (or text right after a closing quote) into an
    error; it names the line where that record starts, which is where the stray quote is.
    """
    reader = csv.reader(io.StringIO(read_text(file), newline="\n"), strict=True)
    out: list[tuple[int, int, list[str]]] = []
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return out
        except csv.Error as err:
            raise DataError(file, f"line {start}", None, f"malformed CSV ({err}, at line {reader.line_num}): "
                            "probably a quote opened here and never closed") from None
        out.append((start, reader.line_num, cells))
        start = reader.line_num + 1


_SPLIT_WORDS = ("train", "dev", "validation", "valid", "val", "test")


def split_from_name(path: Path) -> str | None:
    """Guess the split from a file name (``phrases_no_exclude_test.jsonl`` -> ``test``)."""
    for word in re.split(r"[_\-.\s]+", path.stem.lower()):
        if word in _SPLIT_WORDS:
            return word
    return None
