"""ARC (AI2 Reasoning Challenge): the official JSON-lines release and the Hub ``allenai/ai2_arc``.

``answerKey`` is matched against each choice's own label: most items use A..D, some use 1..4, and
a few have 3 or 5 choices, so nothing assumes four letters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError


def dataset_name(name: str) -> str:
    """arc_challenge / arc_easy from a file name or Hub config (``ARC-Challenge-Test.jsonl``)."""
    lowered = name.lower()
    return "arc_challenge" if "challenge" in lowered else "arc_easy" if "easy" in lowered else "arc"


def _record(item_id: Any, stem: str, labels: Any, texts: Any, key: Any, where: str, path: str,
            dataset: str, meta: dict[str, Any]) -> QARecord:
    if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts) or len(labels) < 2:
        raise DataError(path, where, "choices", "expected at least 2 choices, each with a text and a label")
    if len(set(labels)) != len(labels) or not all(isinstance(x, str) for x in labels):
        raise DataError(path, where, "choices", f"choice labels must be distinct strings, got {labels}")
    options = rows.option_texts(texts, "choices", path, where)
    answer = rows.index_of(key, labels, "answerKey", path, where)
    return QARecord(id=str(item_id), dataset=dataset, question=stem, context=None, options=options,
                    answer=answer, option_labels=tuple(labels), meta=meta)


def load_arc(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Official JSON-lines: ``{id, question: {stem, choices: [{text, label}]}, answerKey}``."""
    assert path is not None
    p, dataset = str(path), dataset_name(path.name)
    meta = {"source": p, "split": src.split or rows.split_from_name(path)}

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        question = rows.get_field(row, "question", p, where)
        stem = rows.text(question, "stem", p, where)
        choices = rows.get_field(question, "choices", p, where)
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise DataError(p, where, "choices", "expected a list of {text, label} objects")
        labels, texts = [c.get("label") for c in choices], [c.get("text") for c in choices]
        key = rows.get_field(row, "answerKey", p, where)
        return _record(rows.get_field(row, "id", p, where), stem, labels, texts, key, where, p, dataset, dict(meta))

    return rows.convert_rows(rows.jsonl_rows(path, rejects), convert, rejects, path)


def load_arc_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Hub ``allenai/ai2_arc`` (configs ARC-Challenge / ARC-Easy): ``choices = {text: [], label: []}``."""
    ds = hub.load_hub(src, "test")
    split = hub.hub_split(src, "test")
    label = hub.hub_label(src, split)
    hub.require_columns(ds, ["id", "question", "choices", "answerKey"], label)
    dataset = dataset_name(src.hub_config or src.hub or "")
    meta = {"source": src.hub, "split": split}

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        choices = rows.get_field(row, "choices", label, where)
        labels, texts = (choices.get("label"), choices.get("text")) if isinstance(choices, dict) else (None, None)
        stem = rows.text(row, "question", label, where)
        return _record(row["id"], stem, labels, texts, row["answerKey"], where, label, dataset, dict(meta))

    return rows.convert_rows(hub.hub_rows(ds), convert, rejects, label)
