"""MedMCQA: the official JSON-lines release and the Hub layout ``openlifescienceai/medmcqa``.

The two differ in the base of ``cop`` (the correct option): the official files (and MIRAGE's copy)
use 1-based ``cop`` 1..4 (1 = opa), the Hub uses 0-based ``cop`` 0..3 (0 = opa). The Hub test split
hides its labels as ``cop = -1``, which is rejected like any other out-of-range value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig

OPTION_KEYS = ("opa", "opb", "opc", "opd")
LABELS = ("A", "B", "C", "D")


def _record(row: dict[str, Any], where: str, path: str, base: int, meta: dict[str, Any]) -> QARecord:
    """One item; ``base`` is the value of ``cop`` that means ``opa`` (1 official, 0 Hub)."""
    question = rows.text(row, "question", path, where)
    options = tuple(rows.text(row, key, path, where) for key in OPTION_KEYS)
    note = " (1-based, official release)" if base == 1 else " (0-based, Hub layout; Hub test labels are hidden as -1)"
    cop = rows.int_in_range(rows.get_field(row, "cop", path, where), base, base + 3, "cop", path, where, note)
    item_id = rows.get_field(row, "id", path, where)
    meta |= {"subject": row.get("subject_name"), "topic": row.get("topic_name"),
             "choice_type": row.get("choice_type"), "exp": row.get("exp")}
    return QARecord(id=str(item_id), dataset="medmcqa", question=question, context=None, options=options,
                    answer=cop - base, option_labels=LABELS, meta=meta)


def load_medmcqa(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Official JSON-lines (``dev.json``, one object per line despite the name); ``cop`` is 1-based."""
    assert path is not None
    split = src.split or rows.split_from_name(path)
    meta = {"source": str(path), "split": split}
    return rows.convert_rows(rows.jsonl_rows(path, rejects),
                             lambda where, row: _record(row, where, str(path), 1, dict(meta)), rejects, path)


def load_medmcqa_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Hub ``openlifescienceai/medmcqa`` (train / validation / test); ``cop`` is 0-based."""
    ds = hub.load_hub(src, "validation")
    split = hub.hub_split(src, "validation")
    label = hub.hub_label(src, split)
    hub.require_columns(ds, ["id", "question", *OPTION_KEYS, "cop"], label)
    meta = {"source": src.hub, "split": split}
    return rows.convert_rows(hub.hub_rows(ds), lambda where, row: _record(row, where, label, 0, dict(meta)), rejects, label)
