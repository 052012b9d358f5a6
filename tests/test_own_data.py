"""A user's own data: QA banks through a field mapping (``qa``), user evaluation tasks, text corpora
and chat-format instruction data, each on small files written here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medtune.data.records import QARecord  # noqa: E402
from medtune.data.registry import QA_ADAPTERS, load_source  # noqa: E402
from medtune.data.rejects import Rejects  # noqa: E402
from medtune.data.spec import SourceConfig  # noqa: E402
from medtune.errors import ConfigError, DataError  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures"

EXAM = [  # a hospital exam bank: stem, five options as columns, the key as a letter
    {"stem": "Which drug reverses heparin?", "a": "Protamine", "b": "Vitamin K", "c": "Naloxone", "d": "Flumazenil",
     "e": "Glucagon", "key": "A"},
    {"stem": "First-line test for suspected DVT?", "a": "CT", "b": "Compression ultrasound", "c": "MRI",
     "d": "X-ray", "e": "", "key": "b"},
    {"stem": "Normal adult resting heart rate?", "a": "20-40", "b": "40-50", "c": "60-100", "d": "120-160",
     "e": "200-220", "key": "C"},
]
COLUMNS = {"question": "stem", "options": ["a", "b", "c", "d", "e"], "answer": "key"}


@pytest.fixture(autouse=True)
def _builtin_tasks_after() -> Any:
    """Each test's user tasks leave the process registry when it ends (later test files see the built-in ones)."""
    yield
    from medtune.evaluate.tasks import define_tasks

    define_tasks({})


def load(path: Path, fields: dict[str, Any], rejects: Rejects | None = None, **kw: Any) -> list[QARecord]:
    src = SourceConfig(adapter="qa", path=str(path), fields=fields, **kw)
    return load_source(src, None, rejects if rejects is not None else Rejects())  # type: ignore[return-value]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]], bom: bool = False) -> Path:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def error_of(path: Path, fields: dict[str, Any]) -> DataError:
    with pytest.raises(DataError) as exc:
        load(path, fields)
    return exc.value


# --- the qa adapter -------------------------------------------------------------------------------


def test_qa_is_a_qa_adapter_and_needs_a_mapping(tmp_path: Path) -> None:
    """qa / qa_hub read QA records; a qa source without `fields`, or `fields` on another adapter, is refused."""
    assert {"qa", "qa_hub"} <= QA_ADAPTERS
    with pytest.raises(ValueError, match="fields"):
        SourceConfig(adapter="qa", path="x.csv")
    with pytest.raises(ValueError, match="fields"):
        SourceConfig(adapter="medqa", path="x.jsonl", fields={"question": "q"})


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_qa_reads_each_format_alike(tmp_path: Path, fmt: str) -> None:
    """The same bank as JSON-lines, a JSON array, CSV and Parquet gives the same records (letters in any
    case, an empty trailing option column dropped)."""
    path = tmp_path / f"exam.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, EXAM)
    elif fmt == "json":
        path.write_text(json.dumps(EXAM, indent=2), encoding="utf-8")
    elif fmt == "csv":
        write_csv(path, EXAM)
    else:
        write_parquet(path, EXAM)
    recs = load(path, COLUMNS)
    assert [r.answer for r in recs] == [0, 1, 2]
    assert [len(r.options) for r in recs] == [5, 4, 5]
    assert recs[1].options[1] == "Compression ultrasound" and recs[1].option_labels == ("A", "B", "C", "D")
    assert recs[0].question == "Which drug reverses heparin?" and recs[0].dataset == "qa"
    assert len({r.id for r in recs}) == 3 and all(r.id.startswith("exam:") for r in recs)


@pytest.mark.parametrize("fmt, answers, expected", [
    ("index0", [0, 3, "1"], [0, 3, 1]),
    ("index1", [1, 4, "2"], [0, 3, 1]),
    ("text", ["red", " blue ", "green"], [0, 3, 1]),
    ("letter", ["A", "d", " B "], [0, 3, 1]),
])
def test_qa_answer_formats(tmp_path: Path, fmt: str, answers: list[Any], expected: list[int]) -> None:
    """An answer as a letter, a 0- or 1-based index (numbers or digit strings) or the option's text."""
    rows = [{"q": f"Q{i}?", "opts": ["red", "green", "yellow", "blue"], "ans": a} for i, a in enumerate(answers)]
    recs = load(write_jsonl(tmp_path / "x.jsonl", rows), {"question": "q", "options": "opts", "answer": "ans",
                                                         "answer_format": fmt})
    assert [r.answer for r in recs] == expected


def test_qa_object_options_and_optional_fields(tmp_path: Path) -> None:
    """Options as an object label -> text (MedQA's layout) use its labels; context, explanation, id and
    subject land in the record; extra fields in a row are ignored."""
    row = {"uid": "q-17", "passage": "A trial of 200 patients.", "q": "Did it work?",
           "choices": {"A": "yes", "B": "no", "C": "maybe"}, "gold": "B", "why": "The primary end point was missed.",
           "area": "cardiology", "unrelated": [1, 2, 3]}
    fields = {"question": "q", "options": "choices", "answer": "gold", "context": "passage", "explanation": "why",
              "id": "uid", "subject": "area"}
    (rec,) = load(write_jsonl(tmp_path / "x.jsonl", [row]), fields)
    assert (rec.id, rec.context, rec.options, rec.answer) == ("q-17", "A trial of 200 patients.", ("yes", "no", "maybe"), 1)
    assert rec.meta["explanation"] == "The primary end point was missed." and rec.meta["subject"] == "cardiology"
    recs = load(write_jsonl(tmp_path / "y.jsonl", [row]), fields, subjects=["cardiology"])
    assert len(recs) == 1


@pytest.mark.parametrize("row, field, words", [
    ({"opts": ["a", "b"], "ans": "A"}, "q", "missing field"),
    ({"q": "Q?", "ans": "A"}, "opts", "missing field"),
    ({"q": "Q?", "opts": ["a", "b"]}, "ans", "missing field"),
    ({"q": "Q?", "opts": ["a", "b"], "ans": "C"}, "ans", "'C' is not one of the allowed values A, B"),
    ({"q": "Q?", "opts": ["a", ""], "ans": "A"}, "opts", "option 2 is empty"),
    ({"q": "Q?", "opts": ["a"], "ans": "A"}, "opts", "expected 2 to 10 options, got 1"),
    ({"q": "Q?", "opts": "a, b", "ans": "A"}, "opts", "expected a list of option texts"),
    ({"q": "", "opts": ["a", "b"], "ans": "A"}, "q", "empty text"),
])
def test_qa_row_errors_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], field: str, words: str) -> None:
    """A malformed JSON-lines row names the file, its line and the mapped field."""
    path = write_jsonl(tmp_path / "bank.jsonl", [{"q": "Fine?", "opts": ["a", "b"], "ans": "A"}, row])
    err = error_of(path, {"question": "q", "options": "opts", "answer": "ans"})
    assert (err.path, err.location, err.field) == (str(path), "line 2", field)
    assert words in err.message


def test_qa_answer_text_must_match_one_option(tmp_path: Path) -> None:
    """A text answer that matches no option, or two, is an error naming the answer field."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "Q?", "o": ["x", "y"], "a": "z"}])
    err = error_of(path, {"question": "q", "options": "o", "answer": "a", "answer_format": "text"})
    assert err.field == "a" and "matches no option" in err.message
    path = write_jsonl(tmp_path / "y.jsonl", [{"q": "Q?", "o": ["x", "x"], "a": "x"}])
    err = error_of(path, {"question": "q", "options": "o", "answer": "a", "answer_format": "text"})
    assert "matches 2 options (A, B)" in err.message


def test_qa_index_out_of_range_names_the_base(tmp_path: Path) -> None:
    """A 1-based index of 0 is refused, the message naming the base and the allowed values."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "Q?", "o": ["x", "y", "z"], "a": 0}])
    err = error_of(path, {"question": "q", "options": "o", "answer": "a", "answer_format": "index1"})
    assert err.field == "a" and "1..3" in err.message and "1-based" in err.message


def test_qa_csv_errors(tmp_path: Path) -> None:
    """CSV: a header without a mapped column is one error naming it and the columns there are; a malformed
    row names its line (the line it starts at) and field; a middle option left empty names its column."""
    path = write_csv(tmp_path / "exam.csv", EXAM)
    err = error_of(path, COLUMNS | {"answer": "correct"})
    assert err.field == "correct" and "column missing (available: stem, a, b, c, d, e, key)" in err.message
    bad = [*EXAM, {**EXAM[0], "stem": "Multi-line\nstem?", "key": "F"}]
    err = error_of(write_csv(tmp_path / "bad.csv", bad), COLUMNS)
    assert (err.location, err.field) == ("line 5", "key")
    hole = [{**EXAM[0], "c": ""}]
    err = error_of(write_csv(tmp_path / "hole.csv", hole), COLUMNS)
    assert (err.location, err.field) == ("line 2", "c") and "option is empty" in err.message
    (tmp_path / "ragged.csv").write_text("stem,a,b,c,d,e,key\nQ?,x,y,z,w,v,A,extra\n", encoding="utf-8")
    err = error_of(tmp_path / "ragged.csv", COLUMNS)
    assert err.location == "line 2" and "expected 7 cells" in err.message


def test_qa_json_array_errors_name_the_items_line(tmp_path: Path) -> None:
    """A JSON array's bad item names the line it starts at; a file that is not an array says so."""
    path = tmp_path / "bank.json"
    path.write_text(json.dumps([{"q": "A?", "o": ["x", "y"], "a": "A"}, {"q": "B?", "o": ["x", "y"], "a": "Q"}],
                               indent=2), encoding="utf-8")
    err = error_of(path, {"question": "q", "options": "o", "answer": "a"})
    assert (err.location, err.field) == ("line 10", "a")
    path.write_text('{"q": "A?"}', encoding="utf-8")
    assert "expected a JSON array" in error_of(path, {"question": "q", "options": "o", "answer": "a"}).message


def test_qa_parquet_errors_name_the_row(tmp_path: Path) -> None:
    """Parquet: a bad row names its 1-based row and field; a missing column names the schema's columns."""
    rows = [{"q": "A?", "o": ["x", "y"], "a": 1}, {"q": "B?", "o": ["x", "y"], "a": 5}]
    path = write_parquet(tmp_path / "bank.parquet", rows)
    err = error_of(path, {"question": "q", "options": "o", "answer": "a", "answer_format": "index0"})
    assert (err.location, err.field) == ("row 2", "a")
    err = error_of(path, {"question": "stem", "options": "o", "answer": "a"})
    assert err.field == "stem" and "available: q, o, a" in err.message
    (tmp_path / "not.parquet").write_text("not parquet", encoding="utf-8")
    assert "cannot read Parquet" in error_of(tmp_path / "not.parquet", {"question": "q"}).message


def test_qa_bom_and_empty_files(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (Excel's CSV) is not part of the first column name; an empty file is an
    error naming the source."""
    recs = load(write_csv(tmp_path / "bom.csv", EXAM, bom=True), COLUMNS)
    assert len(recs) == 3
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(EXAM[0]).encode() + b"\n")
    assert len(load(tmp_path / "bom.jsonl", COLUMNS)) == 1
    for name in ("empty.jsonl", "empty.csv"):
        (tmp_path / name).write_text("", encoding="utf-8")
        err = error_of(tmp_path / name, COLUMNS)
        assert err.path == str(tmp_path / name) and ("empty" in err.message)


def test_qa_skip_invalid_keeps_the_rest_and_rejects_duplicates(tmp_path: Path) -> None:
    """--skip-invalid: bad rows and a repeated id go to the rejects with their lines; the rest load."""
    rows = [{"id": 1, "q": "A?", "o": ["x", "y"], "a": "A"}, {"id": 2, "q": "B?", "o": ["x"], "a": "A"},
            {"id": 1, "q": "C?", "o": ["x", "y"], "a": "B"}, "{not json", {"id": 3, "q": "D?", "o": ["x", "y"], "a": "B"}]
    rejects = Rejects(skip_invalid=True)
    recs = load(write_jsonl(tmp_path / "x.jsonl", rows), {"question": "q", "options": "o", "answer": "a", "id": "id"},
                rejects)
    assert [r.id for r in recs] == ["1", "3"]
    assert [(r["location"], r["field"]) for r in rejects.rows] == [("line 2", "o"), ("line 3", "id"), ("line 4", None)]
    assert "duplicate id '1', first seen at line 1" in rejects.rows[1]["error"]


def test_qa_folds_and_limits(tmp_path: Path) -> None:
    """A qa source folds and limits like a built-in one: held_out and rest partition it."""
    rows = [{"q": f"Q{i}?", "o": ["x", "y"], "a": "AB"[i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    f = {"question": "q", "options": "o", "answer": "a"}
    held = load(path, f, fold={"share": 0.25, "take": "held_out", "stratify": "answer"})
    rest = load(path, f, fold={"share": 0.25, "take": "rest", "stratify": "answer"})
    assert len(held) == 4 and len(rest) == 16  # round(0.25 x 10) = 2 per answer and not {r.id for r in held} & {r.id for r in rest}
    assert len(load(path, f, limit=3)) == 3


def test_qa_hub_layout_and_parquet_file_match_medqa(tmp_path: Path) -> None:
    """The MedQA Hub fixture read by qa_hub (and its Parquet file by qa) with a MedQA mapping gives the
    questions, options and answers that the medqa_hub adapter gives."""
    hub_dir = FIX / "hub" / "GBaker" / "MedQA-USMLE-4-options"
    fields = {"question": "question", "options": "options", "answer": "answer_idx"}
    mine = load_source(SourceConfig(adapter="qa_hub", hub=str(hub_dir), split="test", fields=fields), None, Rejects())
    theirs = load_source(SourceConfig(adapter="medqa_hub", hub=str(hub_dir), split="test"), None, Rejects())
    as_file = load(hub_dir / "data" / "test-00000-of-00001.parquet", fields)
    key = lambda r: (r.question, r.options, r.answer, r.option_labels)  # noqa: E731
    assert [key(r) for r in mine] == [key(r) for r in theirs] == [key(r) for r in as_file]
    assert [r.id for r in mine] == [r.id for r in theirs]


def test_qa_unsupported_suffix_and_directory(tmp_path: Path) -> None:
    """A file type the adapter does not read, or a directory, names what it reads."""
    (tmp_path / "bank.xlsx").write_text("x", encoding="utf-8")
    assert ".jsonl, .json, .csv, .parquet" in error_of(tmp_path / "bank.xlsx", COLUMNS).message
    assert "not a directory" in error_of(tmp_path, COLUMNS).message


def test_qa_mapping_is_validated() -> None:
    """A list of option fields needs two distinct names; an unknown mapping key is refused."""
    with pytest.raises(ValueError, match="at least two"):
        SourceConfig(adapter="qa", path="x.csv", fields={"options": ["a"]})
    with pytest.raises(ValueError, match="named twice"):
        SourceConfig(adapter="qa", path="x.csv", fields={"options": ["a", "a"]})
    with pytest.raises(ValueError, match="answer_key"):
        SourceConfig(adapter="qa", path="x.csv", fields={"answer_key": "k"})


# --- a user's own evaluation task -----------------------------------------------------------------

MEDQA_FIX = FIX / "medqa" / "4_options"
MEDQA_FIELDS = {"question": "question", "options": "options", "answer": "answer_idx"}


def medqa_file() -> Path:
    (path,) = sorted(MEDQA_FIX.glob("*test*.jsonl"))
    return path


def user_task(name: str, formulation: str, path: Path, **kw: Any) -> dict[str, Any]:
    return {name: {"source": {"adapter": "qa", "path": str(path), "fields": MEDQA_FIELDS}, "formulation": formulation, **kw}}


def scored(tiny_llama: Path, cfg: Any) -> dict[str, list[Any]]:
    """Per task: the per-item (id, gold, log-likelihoods) rows of ``cfg``'s tasks on the tiny model."""
    from medtune import models
    from medtune.evaluate.run import score_model

    _, rows = score_model(models.load_model(str(tiny_llama)), models.load_tokenizer(str(tiny_llama)), cfg)
    out: dict[str, list[Any]] = {}
    for r in rows:
        out.setdefault(r["task"], []).append((r["id"], r["gold"], r["loglikelihoods"]))
    return out


def test_user_task_scores_equal_the_builtin_task_item_by_item(tiny_llama: Path) -> None:
    """MedQA items re-described with a qa mapping, as a user task in both formulations, get exactly the
    per-item log-likelihoods of medqa4 and medqa4_cloze on the same file."""
    from medtune.evaluate.run import EvalConfig

    medqa = {"adapter": "medqa", "path": str(medqa_file())}
    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "medqa4,medqa4_cloze,exam_parity,exam_parity_cloze",
        "task_defs": user_task("exam_parity", "both", medqa_file()),
        "task_sources": {"medqa4": medqa, "medqa4_cloze": medqa}, "progress": False})
    got = scored(tiny_llama, cfg)
    assert len(got["medqa4"]) >= 2
    assert got["exam_parity"] == got["medqa4"]
    assert got["exam_parity_cloze"] == got["medqa4_cloze"]
    assert got["exam_parity"] != got["exam_parity_cloze"]


def test_user_task_with_fewshot_and_context_prompt(tiny_llama: Path, tmp_path: Path) -> None:
    """A user task's few-shot source gives the exemplars, and an item's context is shown before the question."""
    from medtune.data.prompts import eval_prompt, template_for

    rows = [{"passage": "Aspirin inhibits COX.", "q": "Is aspirin antiplatelet?", "o": ["yes", "no"], "a": "A"}]
    (rec,) = load(write_jsonl(tmp_path / "x.jsonl", rows), {"question": "q", "options": "o", "answer": "a",
                                                          "context": "passage"})
    prompt = eval_prompt(rec, template_for(rec))
    assert prompt.context == "Context: Aspirin inhibits COX.\nQuestion: Is aspirin antiplatelet?\nA. yes\nB. no\nAnswer:"
    assert prompt.continuations == (" A", " B")
    from medtune.evaluate.run import EvalConfig

    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "exam_shots", "fewshot": 1, "progress": False,
        "task_defs": user_task("exam_shots", "letter", medqa_file(),
                               fewshot_source={"adapter": "qa", "path": str(tmp_path / "x.jsonl"),
                                               "fields": {"question": "q", "options": "o", "answer": "a"}})})
    assert len(scored(tiny_llama, cfg)["exam_shots"]) >= 2


def test_user_group_is_size_weighted_and_reported(tiny_llama: Path, tmp_path: Path) -> None:
    """A user group of two user tasks scores both and adds the accuracy over all their items, in results.json."""
    import shutil

    from medtune.evaluate.records import EvalResult
    from medtune.evaluate.run import EvalConfig, evaluate

    second = tmp_path / "second.jsonl"
    shutil.copy(medqa_file(), second)
    write_jsonl(second, [json.loads(line) for line in medqa_file().read_text().splitlines()[:1]])
    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "hospital", "progress": False, "out": str(tmp_path / "eval"),
        "task_defs": user_task("exam_one", "letter", medqa_file()) | user_task("exam_two", "cloze", second),
        "task_groups": {"hospital": ["exam_one", "exam_two"]}})
    report = evaluate(cfg)
    one, two = report["tasks"]["exam_one"]["acc"], report["tasks"]["exam_two"]["acc"]
    group = report["groups"]["hospital"]["acc"]
    assert group["n"] == one["n"] + two["n"] and two["n"] == 1
    assert group["value"] == pytest.approx((one["value"] * one["n"] + two["value"] * two["n"]) / group["n"])
    saved = EvalResult.load(tmp_path / "eval" / "results.json")
    assert set(saved.tasks) == {"exam_one", "exam_two"}


def test_user_task_names_are_checked() -> None:
    """A user task may not take a built-in name; an unknown name lists the user's own tasks too; a text
    source is not a multiple-choice task."""
    from pydantic import ValidationError

    from medtune.evaluate.run import EvalConfig

    with pytest.raises(ValidationError, match="built-in"):
        EvalConfig.model_validate({"task_defs": user_task("medqa4", "letter", medqa_file()), "tasks": "medqa4"})
    with pytest.raises(ValidationError, match="built-in"):
        EvalConfig.model_validate({"task_defs": user_task("pubmedqa", "both", medqa_file()) , "tasks": "medqa4"})
    with pytest.raises(ValidationError, match="unknown task 'exam_nmaed'.*Did you mean 'exam_named'"):
        EvalConfig.model_validate({"task_defs": user_task("exam_named", "letter", medqa_file()), "tasks": "exam_nmaed"})
    with pytest.raises(ValidationError, match="reads text"):
        EvalConfig.model_validate({"task_defs": {"t": {"source": {"adapter": "text", "path": "x.txt"}}}, "tasks": "t"})
    with pytest.raises(ValidationError, match="unknown task 'nope'"):
        EvalConfig.model_validate({"task_groups": {"g": ["nope"]}, "tasks": "pubmedqa"})


# --- text corpora -----------------------------------------------------------------------------------


def text_docs(path: Path, **kw: Any) -> list[Any]:
    return load_source(SourceConfig(adapter="text", path=str(path), **kw), None, Rejects())


def test_text_directory_of_markdown_and_text_recursive_with_glob(tmp_path: Path) -> None:
    """A directory is read recursively in sorted order: a .md file is one document, a .txt file one per line;
    glob narrows the files; ids name the file below the directory."""
    (tmp_path / "cardio").mkdir()
    (tmp_path / "cardio" / "afib.md").write_text("# Atrial fibrillation\n\nAnticoagulate by CHA2DS2-VASc.\n")
    (tmp_path / "sepsis.md").write_text("\ufeff# Sepsis\n\nAntibiotics within one hour.\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("first note\n\nsecond note\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = text_docs(tmp_path)
    assert [d.id for d in docs] == ["cardio/afib.md:1", "notes.txt:1", "notes.txt:3", "sepsis.md:1"]
    assert docs[3].text == "# Sepsis\n\nAntibiotics within one hour." and {d.dataset for d in docs} == {tmp_path.name}
    assert [d.id for d in text_docs(tmp_path, glob="*.md")] == ["sepsis.md:1"]
    with pytest.raises(DataError, match="no .txt, .md, .jsonl, .parquet files match glob '\\*.pdf'"):
        text_docs(tmp_path, glob="*.pdf")


def test_text_separator_splits_documents(tmp_path: Path) -> None:
    """separator cuts each text (a file, a JSON-lines or Parquet row) into documents, empty parts skipped."""
    (tmp_path / "guide.md").write_text("Para one.\n\nPara two.\n\n\n\nPara three.\n")
    docs = text_docs(tmp_path / "guide.md", separator="\n\n")
    assert [(d.id, d.text) for d in docs] == [("guide:1.1", "Para one."), ("guide:1.2", "Para two."),
                                              ("guide:1.3", "Para three.")]
    write_jsonl(tmp_path / "c.jsonl", [{"body": "a ||| b"}, {"body": "c"}])
    assert [d.text for d in text_docs(tmp_path / "c.jsonl", text_field="body", separator="|||")] == ["a", "b", "c"]


def test_text_parquet_named_field_and_errors(tmp_path: Path) -> None:
    """Parquet text: the named column, one document per row; a missing column or a non-string row names
    file, row and field."""
    path = write_parquet(tmp_path / "corpus.parquet", [{"content": "doc one", "n": 1}, {"content": " ", "n": 2},
                                                       {"content": "doc three", "n": 3}])
    assert [(d.id, d.text) for d in text_docs(path, text_field="content")] == [("corpus:1", "doc one"),
                                                                              ("corpus:3", "doc three")]
    with pytest.raises(DataError, match="field 'text': column missing \\(available: content, n\\)"):
        text_docs(path)
    bad = write_parquet(tmp_path / "bad.parquet", [{"content": "ok"}, {"content": None}])
    with pytest.raises(DataError) as exc:
        text_docs(bad, text_field="content")
    assert (exc.value.location, exc.value.field) == ("row 2", "content")


def test_text_options_only_where_they_apply() -> None:
    """glob and separator are text-source options; elsewhere they are refused, not ignored."""
    with pytest.raises(ValueError, match="glob"):
        SourceConfig(adapter="medqa", path="x", glob="*.jsonl")
    with pytest.raises(ValueError, match="separator"):
        SourceConfig(adapter="qa", path="x", separator="\n\n", fields={})


# --- chat-format instruction data -------------------------------------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""ChatML (SmolLM2-Instruct's, Qwen's layout), for the tiny tokenizer, which has no chat template."""

CHATS = [
    {"instruction": "Name the antidote to heparin.", "input": "Adult patient, 70 kg.", "output": "Protamine sulfate."},
    {"conversations": [{"from": "system", "value": "You are a careful clinician."},
                       {"from": "human", "value": "Normal resting heart rate?"}, {"from": "gpt", "value": "60-100 bpm."}]},
    {"messages": [{"role": "user", "content": "First-line DVT test?"}, {"role": "assistant", "content": "Ultrasound."},
                  {"role": "user", "content": "And if negative but suspicion stays high?"},
                  {"role": "assistant", "content": "Repeat it in a week, or get a D-dimer."}]},
]


def chat_load(path: Path, rejects: Rejects | None = None) -> list[Any]:
    return load_source(SourceConfig(adapter="chat", path=str(path)), None, rejects or Rejects())


def test_chat_reads_alpaca_sharegpt_and_messages(tmp_path: Path) -> None:
    """The three layouts become the same (role, content) turns; alpaca's input follows its instruction."""
    recs = chat_load(write_jsonl(tmp_path / "sft.jsonl", CHATS))
    assert recs[0].messages == (("user", "Name the antidote to heparin.\n\nAdult patient, 70 kg."),
                                ("assistant", "Protamine sulfate."))
    assert recs[1].messages[0] == ("system", "You are a careful clinician.") and recs[1].messages[2][0] == "assistant"
    assert [r for r, _ in recs[2].messages] == ["user", "assistant", "user", "assistant"]
    (tmp_path / "sft.json").write_text(json.dumps(CHATS, indent=1), encoding="utf-8")
    assert [r.messages for r in chat_load(tmp_path / "sft.json")] == [r.messages for r in recs]


@pytest.mark.parametrize("row, field, words", [
    ({"instruction": "Q?"}, "output", "missing field"),
    ({"messages": [{"role": "doctor", "content": "x"}]}, "messages[0].role", "'doctor' is not one of"),
    ({"messages": [{"role": "user", "content": "x"}]}, None, "no assistant turn"),
    ({"conversations": []}, "conversations", "non-empty list"),
    ({"prompt": "x", "completion": "y"}, None, "not a conversation: expected alpaca"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}, "content", "expected a string"),
])
def test_chat_row_errors_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], field: str | None, words: str) -> None:
    """A malformed conversation names its file, line and field."""
    path = write_jsonl(tmp_path / "sft.jsonl", [CHATS[0], row])
    with pytest.raises(DataError) as exc:
        chat_load(path)
    assert exc.value.path == str(path) and exc.value.location.startswith("line 2") and exc.value.field == field
    assert words in exc.value.message


def chat_build(tiny_llama: Path, tmp_path: Path, **kw: Any) -> Any:
    from medtune.data.build import DataConfig, prepare

    path = write_jsonl(tmp_path / "sft.jsonl", CHATS)
    cfg = DataConfig.model_validate({"tokenizer": str(tiny_llama), "block_size": 32, "out": str(tmp_path / "out"),
                                     "train": [{"adapter": "chat", "name": "sft", "path": str(path)}], **kw})
    return prepare(cfg)


def test_chat_without_a_template_names_the_option(tiny_llama: Path, tmp_path: Path) -> None:
    """A tokenizer without a chat template is a clear error naming the chat_template option."""
    with pytest.raises(ConfigError, match="has no chat template.*chat_template option"):
        chat_build(tiny_llama, tmp_path)


def test_chat_loss_is_on_assistant_turns_only_token_by_token(tiny_llama: Path, tmp_path: Path) -> None:
    """Rendered with the template, each assistant turn is one document whose masked (trained) tokens are exactly
    that turn's content and end-of-turn plus the EOS, everything before it (system, user, earlier turns, the
    assistant header) unmasked; the multi-turn conversation gives two documents; packed like the rest."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    tok.chat_template = CHATML
    prep = chat_build(tiny_llama, tmp_path, chat_template=CHATML)
    docs = {d.id: d for d in prep.mix.docs}
    answers = ["Protamine sulfate.", "60-100 bpm.", "Ultrasound.", "Repeat it in a week, or get a D-dimer."]
    recs = chat_load(tmp_path / "sft.jsonl")
    turns = {"sft:1#2": recs[0].messages, "sft:2#3": recs[1].messages, "sft:3#2": recs[2].messages[:2],
             "sft:3#4": recs[2].messages}
    assert sorted(docs) == sorted(turns)
    for (doc_id, turn), answer in zip(turns.items(), answers):
        msgs = [{"role": r, "content": c} for r, c in turn]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        whole = tok.apply_chat_template(msgs, tokenize=False)
        assert whole[len(prompt):] == answer + "<|im_end|>\n" and prompt.endswith("<|im_start|>assistant\n")
        a, b = tok.encode(prompt, add_special_tokens=False), tok.encode(whole[len(prompt):], add_special_tokens=False)
        doc = docs[doc_id]
        assert doc.tokens == a + b and doc.answer_start == len(a)  # trained: b (and the EOS packing adds)
        assert tok.decode(doc.tokens[doc.answer_start:]) == answer + "<|im_end|>\n"
    p = prep.packed
    masked = p.input_ids[(p.answer_mask == 1) & (p.attention_mask == 1)]
    assert sorted(tok.decode(masked).split(tok.eos_token))[1:] == sorted(f"{a}<|im_end|>\n" for a in answers)
    train = next(s for s in prep.sources if s.role == "train")
    assert (train.name, train.items) == ("sft", 4)


def test_a_template_that_writes_the_bos_gives_each_document_one_bos(tiny_llama: Path, tmp_path: Path) -> None:
    """Llama 3's template starts with the BOS ("<|begin_of_text|>") and its tokenizer adds one too: the packer
    leads each document with the tokenizer's BOS, so the rendered one is left out (two BOS tokens in a row are
    not what the model saw in its own instruction tuning)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from medtune.data.build import DataConfig, bos_id, prepare
    from conftest import make_tiny_tokenizer

    tok = make_tiny_tokenizer(tmp_path / "tok")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.save_pretrained(str(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    bos = bos_id(tok)
    assert bos is not None and bos == tok.bos_token_id  # this tokenizer adds a BOS, as Llama 3's does
    path = write_jsonl(tmp_path / "sft.jsonl", CHATS)
    prep = prepare(DataConfig.model_validate({
        "tokenizer": str(tmp_path / "tok"), "block_size": 16, "out": str(tmp_path / "out"),
        "chat_template": "{{ bos_token }}" + CHATML, "train": [{"adapter": "chat", "name": "sft", "path": str(path)}]}))
    docs = prep.mix.docs
    assert len(docs) == 4 and all(bos not in d.tokens for d in docs)  # the packer adds it, once
    assert tok.decode(docs[0].tokens).startswith("<|im_start|>user")
    stream = prep.packed.input_ids[prep.packed.attention_mask == 1]
    assert int((stream == bos).sum()) >= 1 and not ((stream[1:] == bos) & (stream[:-1] == bos)).any()


def test_chat_sources_train_only() -> None:
    """A chat source is training data: not an eval split (and not replay), and not a task source."""
    from medtune.data.build import DataConfig

    with pytest.raises(ValueError, match="conversations; use it under 'train'"):
        DataConfig.model_validate({"eval": [{"adapter": "chat", "path": "x.jsonl"}]})
    with pytest.raises(ValueError, match="not a text adapter"):
        DataConfig.model_validate({"replay": [{"adapter": "chat", "path": "x.jsonl"}]})


# --- the docs example -------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_own_data_example_study_runs_as_written(tiny_llama: Path, tmp_path: Path) -> None:
    """docs/own-data/study.yaml runs (on the tiny model): the chat set trains, the user exam is scored in both
    formulations with its group, and the manifest's decontamination finding is the one docs/own-data.md shows."""
    from medtune.config import load_config
    from medtune.evaluate.records import EvalResult
    from medtune.study.run import StudyRunConfig, study

    cfg = load_config(StudyRunConfig, DOCS / "own-data" / "study.yaml",
                      {"model.spec": str(tiny_llama), "out": str(tmp_path / "study"), "progress": False})
    cfg.base_dir = str(DOCS / "own-data")  # as the CLI sets it: paths are relative to the study file
    study(cfg)
    for model in ("base", "lora"):
        res = EvalResult.load(tmp_path / "study" / "eval" / model / "results.json")
        assert set(res.tasks) == {"ward_exam", "ward_exam_cloze", "everyday"}
    manifest = json.loads((tmp_path / "study" / "train" / "lora" / "data" / "manifest.json").read_text())
    found = manifest["decontamination"]["sources"]
    assert found["ward_sft"]["contaminated"] == 0 and found["guidelines"]["contaminated"] == 1
    (hit,) = found["guidelines"]["examples"]
    page = (DOCS / "own-data.md").read_text()
    for value in (hit["doc_id"], hit["eval_set"], hit["eval_id"], hit["ngram"], f'"checked": {found["guidelines"]["checked"]}'):
        assert str(value) in page
    assert (tmp_path / "study" / "report" / "report.md").read_text().count("ward_exam") >= 2
