"""MedQA-USMLE (US, English): the official JSON-lines files and the Hub ``GBaker/MedQA-USMLE-4-options``.

Each row has ``question``, ``options`` (a dict A..D or A..E), ``answer_idx`` (the letter) and usually
``answer`` (the option text, cross-checked). The dataset name follows the option count: medqa4 / medqa5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError

LETTERS = "ABCDE"


def _record(row: dict[str, Any], where: str, path: str, item_id: str, meta: dict[str, Any]) -> QARecord:
    question = rows.text(row, "question", path, where)
    options = rows.get_field(row, "options", path, where)
    if not isinstance(options, dict):
        raise DataError(path, where, "options", f"expected an object of letter -> text, got {type(options).__name__}")
    letters = tuple(k for k in options if options[k] is not None)  # the Hub fills absent struct keys with None
    if len(letters) not in (4, 5) or sorted(letters) != list(LETTERS[: len(letters)]):
        raise DataError(path, where, "options", f"expected 4 or 5 options labelled A..D or A..E, got {len(letters)} "
                        f"({', '.join(map(str, letters))})")
    letters = tuple(sorted(letters))
    texts = rows.option_texts([options[k] for k in letters], "options", path, where)
    answer = rows.index_of(rows.get_field(row, "answer_idx", path, where), letters, "answer_idx", path, where)
    if row.get("answer") is not None and row["answer"] != texts[answer]:
        raise DataError(path, where, "answer", f"{row['answer']!r:.60} differs from option "
                        f"{letters[answer]} {texts[answer]!r:.60}")
    meta |= {"meta_info": row.get("meta_info")}
    return QARecord(id=item_id, dataset=f"medqa{len(letters)}", question=question, context=None,
                    options=texts, answer=answer, option_labels=letters, meta=meta)


def load_medqa(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Official JSON-lines; the file has no ids, so an item's id is ``<file stem>:<line number>``."""
    assert path is not None
    meta = {"source": str(path), "split": src.split or rows.split_from_name(path)}

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        return _record(row, where, str(path), f"{path.stem}:{where.removeprefix('line ')}", dict(meta))

    return rows.convert_rows(rows.jsonl_rows(path, rejects), convert, rejects, path)


def load_medqa_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Hub layout (train / test); an item's id is ``<split>:<row index>``."""
    ds = hub.load_hub(src, "test")
    split = hub.hub_split(src, "test")
    label = hub.hub_label(src, split)
    hub.require_columns(ds, ["question", "options", "answer_idx"], label)
    meta = {"source": src.hub, "split": split}

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        return _record(row, where, label, f"{split}:{where.removeprefix('index ')}", dict(meta))

    return rows.convert_rows(hub.hub_rows(ds), convert, rejects, label)
