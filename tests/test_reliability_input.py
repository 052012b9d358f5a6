"""Bad input is refused with a message naming file, line and field (issue 11, findings 7-12 and 14).

Every fixture is written by its test, in the official format of its source (see tests/fixtures), so
each test shows the one defect it is about next to an otherwise valid file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medtune.data.registry import load_source
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import DataError

BOM = "\ufeff"


def medmcqa_row(n: int, **kw: Any) -> dict[str, Any]:
    """One MedMCQA official JSON-lines row (``cop`` 1-based)."""
    return {"question": f"Question {n}?", "exp": None, "cop": 1, "opa": "alpha", "opb": "beta", "opc": "gamma",
            "opd": "delta", "subject_name": "Anatomy", "topic_name": None, "id": f"id-{n}",
            "choice_type": "single"} | kw


def pubmedqa_item(question: str = "Does tea lower heart rate?") -> dict[str, Any]:
    return {"QUESTION": question, "CONTEXTS": ["We followed 120 adults."], "LABELS": ["METHODS"],
            "MESHES": ["Tea"], "YEAR": "2011", "final_decision": "yes", "LONG_ANSWER": "It did."}


def jsonl_text(rows: list[Any]) -> str:
    """JSON lines as the official files write them: non-ASCII characters as they are, not escaped."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def load(path: Path, adapter: str, rejects: Rejects | None = None, **kw: Any) -> list[Any]:
    return load_source(SourceConfig(adapter=adapter, path=str(path), **kw), None, rejects or Rejects())


def error_of(path: Path, adapter: str, **kw: Any) -> DataError:
    with pytest.raises(DataError) as exc:
        load(path, adapter, **kw)
    return exc.value


# --- finding 8: lines are split on "\n" only ------------------------------------------------------


def test_jsonl_row_containing_line_separators_is_one_valid_row(tmp_path: Path) -> None:
    odd = "Left\u2028right, next\u0085line, page\x0cbreak?"
    path = write(tmp_path / "dev.json", jsonl_text([medmcqa_row(1, question=odd), medmcqa_row(2)]))
    records = load(path, "medmcqa")
    assert [r.id for r in records] == ["id-1", "id-2"]
    assert records[0].question == odd


def test_txt_document_with_separator_characters_stays_one_document(tmp_path: Path) -> None:
    path = write(tmp_path / "wiki.txt", "One\u2028document\x0cwith\u0085breaks.\r\n\nSecond document.\n")
    docs = load(path, "text")
    assert [(d.id, d.text) for d in docs] == [("wiki:1", "One\u2028document\x0cwith\u0085breaks."),
                                               ("wiki:3", "Second document.")]


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_bytes(jsonl_text([medmcqa_row(1)]).encode() + b'{"question": "caf\xe9"}\n')
    err = error_of(path, "medmcqa")
    assert (err.path, err.location) == (str(path), "line 2") and "UTF-8" in err.message


def test_report_reads_predictions_with_line_separators(tmp_path: Path) -> None:
    from medtune import atomic
    from medtune.report.build import _correct

    atomic.write_jsonl(tmp_path / "predictions.jsonl", [{"task": "t", "id": "a\u2028b", "pred": 1, "gold": 1},
                                                         {"task": "t", "id": "c", "pred": 0, "gold": 1}])
    assert _correct(tmp_path / "predictions.jsonl") == {("t", "a\u2028b"): 1.0, ("t", "c"): 0.0}


# --- finding 11: a UTF-8 byte-order mark is accepted and dropped -----------------------------------


def test_bom_in_jsonl_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.json", BOM + jsonl_text([medmcqa_row(1), medmcqa_row(2)]))
    assert [r.question for r in load(path, "medmcqa")] == ["Question 1?", "Question 2?"]


def test_bom_in_json_object_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "ori_pqal.json", BOM + json.dumps({"10000001": pubmedqa_item()}, indent=4))
    assert [r.id for r in load(path, "pubmedqa")] == ["10000001"]


@pytest.mark.parametrize("header", [True, False], ids=["with-header", "hendrycks-no-header"])
def test_bom_in_mmlu_csv_is_dropped(tmp_path: Path, header: bool) -> None:
    body = "Which bone protects the brain?,skull,femur,rib,patella," + ("0" if header else "A") + "\n"
    head = "question,choice0,choice1,choice2,choice3,answer\n" if header else ""
    records = load(write(tmp_path / "anatomy_test.csv", BOM + head + body), "mmlu")
    assert [(r.id, r.question, r.answer) for r in records] == [("anatomy:1", "Which bone protects the brain?", 0)]


def test_bom_in_txt_is_dropped(tmp_path: Path) -> None:
    docs = load(write(tmp_path / "wiki.txt", BOM + "First document.\nSecond.\n"), "text")
    assert [d.text for d in docs] == ["First document.", "Second."]
