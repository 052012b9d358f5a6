"""MMLU: a directory of ``<subject>_<split>.csv`` files (or a single CSV), subject from the file name.

Two CSV styles are read: the original hendrycks files (no header; ``question, A, B, C, D, answer``
with a letter answer) and the re-formatted ones with a header
``question,choice0,choice1,choice2,choice3,answer`` and a 0-based integer answer. Rows are numbered
from 1, header excluded.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medtune.data.adapters import rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError

HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LABELS = ("A", "B", "C", "D")


def csv_files(path: Path, split: str) -> list[Path]:
    """The ``*_<split>.csv`` files in ``path`` or in ``path/<split>/``, or ``path`` itself if a file."""
    if path.is_file():
        return [path]
    folder = path / split if (path / split).is_dir() else path
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise DataError(path, None, None, f"no MMLU files *_{split}.csv in {folder}")
    return files


def subject_of(file: Path, split: str) -> str:
    return file.stem.removesuffix(f"_{split}")


def _record(cells: list[str], where: str, path: str, header: bool, subject: str, meta: dict[str, Any]) -> QARecord:
    if len(cells) != 6:
        raise DataError(path, where, "choices", f"expected 6 columns (question, 4 choices, answer), got {len(cells)}")
    if not cells[0].strip():
        raise DataError(path, where, "question", "empty text")
    options = rows.option_texts(cells[1:5], "choices", path, where)
    if header:  # re-formatted style: 0-based integer
        answer = rows.int_in_range(cells[5].strip(), 0, 3, "answer", path, where, " (0-based)")
    else:  # hendrycks style: a letter
        answer = rows.index_of(cells[5].strip(), LABELS, "answer", path, where)
    return QARecord(id=f"{subject}:{where.removeprefix('row ')}", dataset="mmlu", question=cells[0], context=None,
                    options=options, answer=answer, option_labels=LABELS, meta=meta | {"subject": subject})


def _read_file(file: Path, split: str, rejects: Rejects) -> list[QARecord]:
    table = list(csv.reader(io.StringIO(rows.read_text(file), newline="")))
    header = bool(table) and [c.strip() for c in table[0]] == HEADER
    body = table[1:] if header else table
    meta = {"source": str(file), "split": split}
    subject = subject_of(file, split)
    numbered = ((f"row {n}", cells) for n, cells in enumerate(body, start=1) if any(c.strip() for c in cells))
    return rows.convert_rows(
        numbered, lambda where, cells: _record(cells, where, str(file), header, subject, meta), rejects)


def load_mmlu(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """All subjects of one split (``test`` by default, or ``dev``/``val``), in file-name order."""
    assert path is not None
    split = src.split or "test"
    return [rec for file in csv_files(path, split) for rec in _read_file(file, split, rejects)]
