"""A user's own multiple-choice bank, read through a field mapping (``fields:``, :class:`QAFields`).

Formats by file suffix: ``.jsonl`` (one object per line), ``.json`` (an array of objects), ``.csv``
(a header row naming the columns), ``.parquet``; or a Hub dataset (``adapter: qa`` with ``hub``). Every
invalid row names file, location and field, as the built-in adapters do: ``line N`` for JSON-lines,
for a JSON array (the line the item starts at) and for CSV (the line the record starts at), ``row N``
for Parquet (1-based), ``index N`` for the Hub. A mapped column that a CSV header, Parquet schema or
Hub dataset lacks is one error for the whole source, naming the column and the ones there are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.fields import QAFields
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import ConfigError, DataError

LETTERS = "ABCDEFGHIJ"
"""Option labels by position; an item has at most 10 options (the scorer's letter choices)."""
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _optional(row: dict[str, Any], key: str | None, path: str, where: str) -> str | None:
    """An optional text field: absent, null or blank is None; anything else must be a string."""
    if key is None or row.get(key) is None:
        return None
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, where, key, f"expected a string, got {type(value).__name__}")
    return value if value.strip() else None


def _columns(row: dict[str, Any], keys: list[str], path: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Options from one field per option; empty trailing cells dropped (4- and 5-option items in one file)."""
    cells = [rows.get_field(row, k, path, where) if i < 2 else row.get(k) for i, k in enumerate(keys)]
    while cells and (cells[-1] is None or (isinstance(cells[-1], str) and not cells[-1].strip())):
        cells.pop()
    for key, cell in zip(keys, cells):
        if not isinstance(cell, str) or not cell.strip():
            raise DataError(path, where, key, f"option is empty or not a string: {cell!r}")
    return tuple(LETTERS[: len(cells)]), tuple(cells)


def _options(row: dict[str, Any], f: QAFields, path: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, texts) of an item's options."""
    if isinstance(f.options, list):
        labels, texts = _columns(row, f.options, path, where)
    else:
        value = rows.get_field(row, f.options, path, where)
        if isinstance(value, dict):  # label -> text, as MedQA's {"A": ..., "B": ...}
            labels = tuple(str(k) for k in value)
            texts = rows.option_texts(list(value.values()), f.options, path, where)
        elif isinstance(value, list):
            texts = rows.option_texts(value, f.options, path, where)
            labels = tuple(LETTERS[: len(texts)])
        else:
            raise DataError(path, where, f.options, f"expected a list of option texts (or an object label -> text), "
                            f"got {type(value).__name__}")
    if not 2 <= len(texts) <= len(LETTERS):
        field = f.options if isinstance(f.options, str) else None
        raise DataError(path, where, field, f"expected 2 to {len(LETTERS)} options, got {len(texts)}")
    return labels, texts


def _answer(value: Any, labels: tuple[str, ...], texts: tuple[str, ...], f: QAFields, path: str, where: str) -> int:
    """The 0-based index of the correct option, read as ``f.answer_format`` says."""
    if f.answer_format in ("index0", "index1"):
        base = 0 if f.answer_format == "index0" else 1
        return rows.int_in_range(value, base, base + len(texts) - 1, f.answer, path, where,
                                 f" ({base}-based index of {len(texts)} options)") - base
    if not isinstance(value, str):
        raise DataError(path, where, f.answer, f"expected a {'letter' if f.answer_format == 'letter' else 'string'}, "
                        f"got {type(value).__name__} {value!r}")
    if f.answer_format == "letter":
        key = value.strip()
        key = key if key in labels else key.upper()
        return rows.index_of(key, labels, f.answer, path, where)
    hits = [i for i, t in enumerate(texts) if t.strip() == value.strip()]
    if len(hits) != 1:
        why = "matches no option" if not hits else f"matches {len(hits)} options ({', '.join(labels[i] for i in hits)})"
        raise DataError(path, where, f.answer, f"answer text {value!r:.60} {why}")
    return hits[0]


def _record(row: Any, where: str, path: str, default_id: str, f: QAFields, meta: dict[str, Any]) -> QARecord:
    question = rows.text(row, f.question, path, where)
    labels, texts = _options(row, f, path, where)
    answer = _answer(rows.get_field(row, f.answer, path, where), labels, texts, f, path, where)
    item_id = rows.get_field(row, f.id, path, where) if f.id else default_id
    if f.id and (isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip()):
        raise DataError(path, where, f.id, f"expected a non-empty string or an integer id, got {item_id!r:.60}")
    explanation, subject = _optional(row, f.explanation, path, where), _optional(row, f.subject, path, where)
    meta = meta | ({"explanation": explanation} if explanation else {}) | ({"subject": subject} if f.subject else {})
    return QARecord(id=str(item_id), dataset="qa", question=question, context=_optional(row, f.context, path, where),
                    options=texts, answer=answer, option_labels=labels, meta=meta)


def _mapped(f: QAFields) -> list[str]:
    """Every column the mapping names."""
    return [*f.required, *(k for k in (f.context, f.explanation, f.id, f.subject) if k)]


def _require(have: list[str], f: QAFields, label: str | Path) -> None:
    """A CSV header or Hub dataset must have every mapped column (once, not per row)."""
    for col in _mapped(f):
        if col not in have:
            raise DataError(label, None, col, f"column missing (available: {', '.join(have)})")


def _csv_rows(path: Path, f: QAFields, rejects: Rejects) -> Iterator[rows.Row]:
    """``("line N", {column: cell})`` per CSV record, N the line it starts at; blank records skipped, a
    record with another cell count than the header rejected."""
    table = rows.csv_records(path)
    if not table:
        raise DataError(path, None, None, "no rows (empty file)")
    header = [c.strip() for c in table[0][2]]
    if len(set(header)) != len(header):
        raise DataError(path, "line 1", None, f"a column name repeats in the header ({', '.join(header)})")
    _require(header, f, path)
    for first, last, cells in table[1:]:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            spans = f" (the record spans lines {first}-{last}: probably an unbalanced quote)" if last > first else ""
            rejects.reject(DataError(path, f"line {first}", None,
                                     f"expected {len(header)} cells as the header has, got {len(cells)}{spans}"), cells)
            continue
        yield f"line {first}", dict(zip(header, cells))


def _file_rows(path: Path, f: QAFields, rejects: Rejects) -> Iterator[rows.Row]:
    if path.suffix == ".jsonl":
        return rows.jsonl_rows(path, rejects)
    if path.suffix == ".json":
        return rows.json_array_rows(path, rejects)
    if path.suffix == ".csv":
        return _csv_rows(path, f, rejects)
    if path.suffix == ".parquet":
        return rows.parquet_rows(path, _mapped(f))
    raise DataError(path, None, None, f"unsupported file type {path.suffix!r} for adapter qa "
                    f"(expected {', '.join(SUFFIXES)})")


def mapping(src: SourceConfig) -> QAFields:
    if src.fields is None:
        raise ConfigError(f"source {src.label}: adapter qa needs 'fields' (which column holds the question, "
                          "the options and the answer)")
    return src.fields


def load_qa(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """A local file through ``src.fields``; ids default to ``<file stem>:<line or row>``."""
    assert path is not None
    f, p = mapping(src), str(path)
    if path.is_dir():
        raise DataError(path, None, None, f"adapter qa reads one file ({', '.join(SUFFIXES)}), not a directory")
    meta = {"source": p, "split": src.split or rows.split_from_name(path)}

    def convert(where: str, row: Any) -> QARecord:
        number = where.split(" ", 1)[1]
        return _record(row, where, p, f"{path.stem}:{number}", f, dict(meta))

    return rows.convert_rows(_file_rows(path, f, rejects), convert, rejects, path)


def load_qa_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """A Hub dataset (or a local directory in Hub layout) through ``src.fields``; ids default to
    ``<split>:<row index>``."""
    f = mapping(src)
    ds = hub.load_hub(src, "test")
    split = hub.hub_split(src, "test")
    label = hub.hub_label(src, split)
    names = ds.column_names if ds.column_names is not None else list(next(iter(ds), {}))
    _require(list(names), f, label)
    meta = {"source": src.hub, "split": split}

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        return _record(row, where, label, f"{split}:{where.removeprefix('index ')}", f, dict(meta))

    return rows.convert_rows(hub.hub_rows(ds), convert, rejects, label)
