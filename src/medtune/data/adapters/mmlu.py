"""MMLU: a directory of ``<subject>_<split>.csv`` files (or a single CSV), subject from the file name.

Two CSV styles are read: the original hendrycks files (no header; ``question, A, B, C, D, answer``
with a letter answer) and the re-formatted ones with a header
``question,choice0,choice1,choice2,choice3,answer`` and a 0-based integer answer. Rows are numbered
from 1, header excluded.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from medtune.data.adapters import rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError

HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LABELS = ("A", "B", "C", "D")

MULTIMEDQA_MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                            "professional_medicine")
"""The six MMLU subjects of MultiMedQA (Singhal et al., 2023) and the Open Medical-LLM Leaderboard: the usual
"MMLU medical" score, evaluated as the ``mmlu_<subject>`` tasks and the ``mmlu_medical`` group."""
MEDICAL_MMLU_SUBJECTS = MULTIMEDQA_MMLU_SUBJECTS + ("nutrition", "virology", "human_aging")
"""Every health-related MMLU subject, which ``exclude_subjects: medical`` drops so that a general (non-medical)
MMLU score counts none of them. Three more than the scored six: nutrition, virology and human aging are health
knowledge that medical training may move, though MultiMedQA does not score them."""


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


def _swallowed_row(cells: list[str], header: bool) -> bool:
    """True if a cell holds a line that is itself a whole MMLU row (6+ cells ending in an answer).

    That is what an unbalanced quote leaves behind when it happens to close at a cell boundary: the
    next row merged into this one, with the right column count. Line breaks alone are normal (code,
    passages: 1,159 of the 14,327 official test + dev rows in ../shared/data/general/mmlu have one);
    a whole row inside a cell is not (none of those rows).
    """
    answers = ("0", "1", "2", "3") if header else LABELS
    for cell in cells:
        for segment in cell.split("\n") if "\n" in cell else ():
            parts = next(csv.reader([segment]), [])
            if len(parts) >= 6 and parts[-1].strip() in answers:
                return True
    return False


def _read_file(file: Path, split: str, rejects: Rejects) -> list[QARecord]:
    table = rows.csv_records(file)
    header = bool(table) and [c.strip() for c in table[0][2]] == HEADER
    body = table[1:] if header else table
    lines: dict[str, tuple[int, int]] = {}  # "row N" -> (first, last) line of the file
    for n, (first, last, cells) in enumerate(body, start=1):  # blank rows keep their number
        if any(c.strip() for c in cells):
            lines[f"row {n}"] = (first, last)
    if not lines:
        raise DataError(file, None, None, "no rows" + (" (only the header)" if header else " (empty file)"))
    meta = {"source": str(file), "split": split}
    subject = subject_of(file, split)

    def convert(where: str, cells: list[str]) -> QARecord:
        first, last = lines[where]
        spans = f" (the row spans lines {first}-{last}: probably an unbalanced quote at line {first})"
        if last > first and len(cells) != 6:
            raise DataError(file, where, None, f"expected 6 columns, got {len(cells)}{spans}")
        if last > first and _swallowed_row(cells, header):
            raise DataError(file, where, None, f"a cell holds a whole row{spans}")
        return _record(cells, where, str(file), header, subject, meta)

    numbered = ((f"row {n}", cells) for n, (_, _, cells) in enumerate(body, start=1) if f"row {n}" in lines)
    return rows.convert_rows(numbered, convert, rejects, file)


def load_mmlu(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """All subjects of one split (``test`` by default, or ``dev``/``val``), in file-name order."""
    assert path is not None
    split = src.split or "test"
    return [rec for file in csv_files(path, split) for rec in _read_file(file, split, rejects)]
