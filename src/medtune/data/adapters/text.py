"""General-domain text for replay and perplexity: plain text, JSON-lines, or a Hub text dataset.

Plain ``.txt`` files hold one document per non-empty line (as ``wiki_demo.txt``: one article per
line; for WikiText each line is a paragraph or heading). Lines are stripped of surrounding space.
Empty documents (blank lines, or an empty text field as in the Hub's WikiText) are skipped, like
blank lines; a missing or non-string text field is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.records import TextDoc
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError

SUFFIXES = (".txt", ".jsonl")


def _body(row: dict[str, Any], field: str, path: str, where: str) -> str:
    value = rows.get_field(row, field, path, where)
    if not isinstance(value, str):
        raise DataError(path, where, field, f"expected a string, got {type(value).__name__}")
    return value.strip()


def _non_empty(docs: Iterable[TextDoc]) -> Iterator[TextDoc]:
    return (d for d in docs if d.text)


def iter_text(src: SourceConfig, path: Path | None, rejects: Rejects) -> Iterator[TextDoc]:
    """``.txt`` (non-empty lines) or ``.jsonl`` (``src.text_field``), read lazily line by line, so a
    corpus of any size costs one line of memory; ids are ``<file stem>:<line>``."""
    assert path is not None
    if path.suffix not in SUFFIXES:
        raise DataError(path, None, None, f"unsupported file type {path.suffix!r} (expected {', '.join(SUFFIXES)})")
    stem, p = path.stem, str(path)  # once, not per line: a replay corpus has millions of lines
    dataset = src.name or stem
    meta = {"source": p, "split": src.split}
    if path.suffix == ".txt":
        return (TextDoc(id=f"{stem}:{n}", dataset=dataset, text=text, meta=dict(meta))
                for n, line in rows.iter_lines(path) if (text := line.strip()))

    def convert(where: str, row: dict[str, Any]) -> TextDoc:
        body = _body(row, src.text_field, p, where)
        return TextDoc(id=f"{stem}:{where.removeprefix('line ')}", dataset=dataset, text=body, meta=dict(meta))

    return _non_empty(rows.iter_converted(rows.jsonl_rows(path, rejects), convert, rejects))


def load_text(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[TextDoc]:
    """:func:`iter_text`, every document at once."""
    return list(iter_text(src, path, rejects))


def iter_text_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> Iterator[TextDoc]:
    """A Hub dataset with a text column (``src.text_field``), row by row; streamed from the Hub (or
    a local directory in Hub layout) with ``streaming: true``. Ids are ``<split>:<row index>``."""
    ds = hub.load_hub(src, "train")
    split = hub.hub_split(src, "train")
    label = hub.hub_label(src, split)
    hub.require_columns(ds, [src.text_field], label)
    dataset = src.name or (src.hub or "").rstrip("/").split("/")[-1]
    meta = {"source": src.hub, "split": split}

    def convert(where: str, row: dict[str, Any]) -> TextDoc:
        body = _body(row, src.text_field, label, where)
        return TextDoc(id=f"{split}:{where.removeprefix('index ')}", dataset=dataset, text=body, meta=dict(meta))

    return _non_empty(rows.iter_converted(hub.hub_rows(ds), convert, rejects))


def load_text_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[TextDoc]:
    """:func:`iter_text_hub`, every document at once."""
    return list(iter_text_hub(src, path, rejects))
