"""PubMedQA (PQA-L): the official ``ori_pqal.json`` / ``test_set.json`` and the Hub layout.

Official files are one JSON object keyed by PMID. ``split``: ``all`` (default), ``test`` (the PMIDs
of ``test_ground_truth.json`` next to the file) or ``trainval`` (all others).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.adapters import hub, rows
from medtune.data.records import QARecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import ConfigError, DataError

OPTIONS = ("yes", "no", "maybe")
SPLITS = ("all", "test", "trainval")
GROUND_TRUTH = "test_ground_truth.json"


def _record(pmid: str, question: str, contexts: Any, decision: Any, where: str, path: str, meta: dict[str, Any],
            ctx_field: str = "CONTEXTS") -> QARecord:
    """``contexts`` is the list of abstract sections; ``decision`` must be yes/no/maybe."""
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
        raise DataError(path, where, ctx_field, f"expected a non-empty list of strings, got {contexts!r:.60}")
    return QARecord(
        id=pmid, dataset="pubmedqa", question=question, context="\n".join(contexts),
        options=OPTIONS, answer=rows.index_of(decision, OPTIONS, "final_decision", path, where),
        context_parts=tuple(contexts), meta=meta,
    )


def read_ground_truth(path: Path) -> dict[str, str] | None:
    """PMID -> label from ``test_ground_truth.json`` next to ``path``, or None if there is none."""
    gt_path = path.parent / GROUND_TRUTH
    if not gt_path.is_file():
        return None
    gt = rows.read_json_object(gt_path, "mapping PMID to yes/no/maybe")
    for pmid, label in gt.items():
        if label not in OPTIONS:
            raise DataError(gt_path, f"key {pmid}", None, f"{label!r} is not one of the allowed values yes, no, maybe")
    return gt


def load_pubmedqa(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Official PQA-L JSON keyed by PMID; checks test items against the ground-truth file."""
    assert path is not None
    split = src.split or "all"
    if split not in SPLITS:
        raise ConfigError(f"split: invalid value {split!r} for adapter pubmedqa (allowed: {', '.join(SPLITS)})")
    data = rows.read_json_object(path, "keyed by PMID")
    gt = read_ground_truth(path)
    if gt is None and split != "all":
        raise DataError(path, None, "split", f"split {split!r} needs {GROUND_TRUTH} next to the file")
    if gt is not None and split == "test" and set(gt) - set(data):
        missing = sorted(set(gt) - set(data))
        raise DataError(path, None, None,
                        f"{len(missing)} PMIDs of {GROUND_TRUTH} are not in the file, e.g. {missing[0]}")
    wanted = [k for k in data if split == "all" or (gt is not None and (k in gt) == (split == "test"))]

    def convert(where: str, item: Any) -> QARecord:
        pmid, p = where.removeprefix("key "), str(path)
        decision = rows.get_field(item, "final_decision", p, where)
        if gt is not None and pmid in gt and decision != gt[pmid]:
            raise DataError(p, where, "final_decision", f"{decision!r} differs from {GROUND_TRUTH} label {gt[pmid]!r}")
        membership = split if gt is None else "test" if pmid in gt else "trainval"
        meta = {"source": p, "split": membership,
                "long_answer": item.get("LONG_ANSWER"), "year": item.get("YEAR"), "meshes": item.get("MESHES")}
        question = rows.text(item, "QUESTION", p, where)
        return _record(pmid, question, rows.get_field(item, "CONTEXTS", p, where), decision, where, p, meta)

    return rows.convert_rows(((f"key {k}", data[k]) for k in wanted), convert, rejects, path)


def load_pubmedqa_hub(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[QARecord]:
    """Hub ``qiaojin/PubMedQA`` (pqa_labeled / pqa_artificial; pqa_artificial has only yes/no)."""
    ds = hub.load_hub(src, "train")
    split = hub.hub_split(src, "train")
    label = hub.hub_label(src, split)
    hub.require_columns(ds, ["pubid", "question", "context", "final_decision"], label)

    def convert(where: str, row: dict[str, Any]) -> QARecord:
        context = rows.get_field(row, "context", label, where)
        contexts = context.get("contexts") if isinstance(context, dict) else None
        meta = {"source": src.hub, "split": split, "config": src.hub_config, "long_answer": row.get("long_answer")}
        question = rows.text(row, "question", label, where)
        decision = rows.get_field(row, "final_decision", label, where)
        return _record(str(row["pubid"]), question, contexts, decision, where, label, meta, "context.contexts")

    return rows.convert_rows(hub.hub_rows(ds), convert, rejects, label)
