"""General-domain text for replay and perplexity: plain text, Markdown, JSON-lines, Parquet, a
directory of them, or a Hub text dataset.

Plain ``.txt`` files hold one document per non-empty line (as ``wiki_demo.txt``: one article per
line; for WikiText each line is a paragraph or heading); a ``.md`` file is one document; a JSON-lines
or Parquet row is one document (its ``text_field``). ``separator`` splits each of these texts
further (a file of guidelines into paragraphs). A directory is read file by file (``glob``, recursive
by default, sorted). Documents are stripped of surrounding space; empty ones are skipped, like blank
lines; a missing or non-string text field is an error.
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

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


def _body(row: dict[str, Any], field: str, path: str, where: str) -> str:
    value = rows.get_field(row, field, path, where)
    if not isinstance(value, str):
        raise DataError(path, where, field, f"expected a string, got {type(value).__name__}")
    return value.strip()


def _non_empty(docs: Iterable[TextDoc]) -> Iterator[TextDoc]:
    return (d for d in docs if d.text)


def _split(docs: Iterable[TextDoc], separator: str | None) -> Iterator[TextDoc]:
    """Each document cut at ``separator`` into parts ``<id>.<k>`` (k from 1); unchanged without one."""
    for doc in docs:
        if separator is None:
            yield doc
            continue
        parts = [p.strip() for p in doc.text.split(separator)]
        for k, part in enumerate((p for p in parts if p), start=1):
            yield TextDoc(id=f"{doc.id}.{k}", dataset=doc.dataset, text=part, meta=doc.meta)


def files_of(path: Path, glob: str) -> list[Path]:
    """``path`` itself, or the readable files under the directory ``path`` that ``glob`` matches, sorted."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.glob(glob) if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(path, None, None, f"no {', '.join(SUFFIXES)} files match glob {glob!r} in this directory")
    return files


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise DataError(path, None, None, f"unsupported file type {path.suffix!r} (expected {', '.join(SUFFIXES)})")


def _file_docs(src: SourceConfig, path: Path, stem: str, dataset: str, rejects: Rejects) -> Iterator[TextDoc]:
    """One file's documents, before ``separator``; ids are ``<stem>:<line or row>`` (``<stem>:1`` for a .md)."""
    _check_suffix(path)
    p = str(path)
    meta = {"source": p, "split": src.split}
    if path.suffix == ".txt" and src.separator is None:
        return (TextDoc(id=f"{stem}:{n}", dataset=dataset, text=text, meta=dict(meta))
                for n, line in rows.iter_lines(path) if (text := line.strip()))
    if path.suffix in (".txt", ".md"):
        return iter([TextDoc(id=f"{stem}:1", dataset=dataset, text=rows.read_text(path).strip(), meta=dict(meta))])

    def convert(where: str, row: dict[str, Any]) -> TextDoc:
        body = _body(row, src.text_field, p, where)
        return TextDoc(id=f"{stem}:{where.split(' ', 1)[1]}", dataset=dataset, text=body, meta=dict(meta))

    raw = rows.jsonl_rows(path, rejects) if path.suffix == ".jsonl" else rows.parquet_rows(path, [src.text_field], [src.text_field])
    return rows.iter_converted(raw, convert, rejects)


def iter_text(src: SourceConfig, path: Path | None, rejects: Rejects) -> Iterator[TextDoc]:
    """A file, or a directory's files, read lazily (a .txt or JSON-lines line by line, Parquet batch by batch),
    so a corpus of any size costs one document of memory. Ids are ``<file stem>:<line or row>`` for a
    file, ``<path below the directory>:<line or row>`` in a directory; a separator's parts add ``.<k>``."""
    assert path is not None
    files = files_of(path, src.glob)
    _check_suffix(files[0])  # now, not at the first document
    dataset = src.name or path.stem if not path.is_dir() else src.name or path.name

    def docs() -> Iterator[TextDoc]:
        for file in files:
            stem = file.stem if file == path else file.relative_to(path).as_posix()
            yield from _file_docs(src, file, stem, dataset, rejects)

    return _non_empty(_split(docs(), src.separator))


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

    return _non_empty(_split(rows.iter_converted(hub.hub_rows(ds), convert, rejects), src.separator))


def load_text_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[TextDoc]:
    """:func:`iter_text_hub`, every document at once."""
    return list(iter_text_hub(src, path, rejects))
