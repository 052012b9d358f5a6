"""Data adapters on small fixtures in the official (and Hub) formats, their errors, and real-data counts."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # Hub-layout fixtures are local; never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medtune.data.adapters.mmlu import MEDICAL_MMLU_SUBJECTS  # noqa: E402
from medtune.data.records import QARecord, TextDoc  # noqa: E402
from medtune.data.registry import ADAPTERS, QA_ADAPTERS, TEXT_ADAPTERS, load_source  # noqa: E402
from medtune.data.rejects import Rejects  # noqa: E402
from medtune.data.spec import SourceConfig  # noqa: E402
from medtune.errors import ConfigError, DataError  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures"
HUB = FIX / "hub"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the datasets cache out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")


def load(data_root: Path | None = FIX, rejects: Rejects | None = None, **kw: Any) -> list[Any]:
    return load_source(SourceConfig(**kw), data_root, rejects if rejects is not None else Rejects())


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def error_of(**kw: Any) -> str:
    with pytest.raises(DataError) as exc:
        load(**kw)
    return str(exc.value)


# --- registry -------------------------------------------------------------------------------------


def test_registry_names_and_kinds() -> None:
    assert set(ADAPTERS) == {"pubmedqa", "pubmedqa_hub", "medmcqa", "medmcqa_hub", "medqa", "medqa_hub",
                             "arc", "arc_hub", "chat", "mmlu", "qa", "qa_hub", "text", "text_hub"}
    assert QA_ADAPTERS | TEXT_ADAPTERS | {"chat"} == set(ADAPTERS) and not QA_ADAPTERS & TEXT_ADAPTERS
    assert len(MEDICAL_MMLU_SUBJECTS) == 9


def test_unknown_adapter_lists_valid_names_sorted() -> None:
    from medtune.config import validate

    with pytest.raises(ConfigError) as exc:
        validate(SourceConfig, {"adapter": "pubmed", "path": "pubmedqa/ori_pqal.json"}, "test.yaml")
    assert "adapter: unknown adapter 'pubmed'" in str(exc.value)
    assert ", ".join(sorted(ADAPTERS)) in str(exc.value)


def test_missing_file_names_path() -> None:
    msg = error_of(adapter="medmcqa", path="medmcqa/nope.json")
    assert str(FIX / "medmcqa" / "nope.json") in msg and "not found" in msg


def test_path_vs_hub_mismatch_is_config_error() -> None:
    with pytest.raises(ConfigError, match="give 'hub'"):
        load(adapter="medmcqa_hub", path="medmcqa/dev.json")
    with pytest.raises(ConfigError, match="give 'path'"):
        load(adapter="medmcqa", hub="openlifescienceai/medmcqa")


def test_relative_path_resolves_against_data_root_and_limit() -> None:
    recs = load(data_root=FIX / "medmcqa", adapter="medmcqa", path="dev.json", limit=2)
    assert [r.meta["split"] for r in recs] == ["dev", "dev"] and len(recs) == 2


# --- PubMedQA ---------------------------------------------------------------------------------------


def test_pubmedqa_official_all() -> None:
    recs = load(adapter="pubmedqa", path="pubmedqa/ori_pqal.json")
    assert [r.id for r in recs] == ["10000001", "10000002", "10000003", "10000004", "10000005"]
    first = recs[0]
    assert isinstance(first, QARecord) and first.dataset == "pubmedqa"
    assert first.options == ("yes", "no", "maybe") and first.answer == 0
    assert first.context_parts == ("We followed 120 adults for six months.",
                                   "Resting heart rate fell by 2 beats per minute in tea drinkers.")
    assert first.context == "\n".join(first.context_parts)
    assert [r.answer_text for r in recs] == ["yes", "yes", "no", "no", "maybe"]
    assert first.meta["year"] == "2011" and first.meta["long_answer"].startswith("Daily tea")
    assert [r.meta["split"] for r in recs] == ["trainval", "test", "trainval", "test", "test"]


def test_pubmedqa_split_partitions_by_ground_truth() -> None:
    truth = json.loads((FIX / "pubmedqa" / "test_ground_truth.json").read_text())
    test = load(adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="test")
    trainval = load(adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="trainval")
    assert {r.id for r in test} == set(truth)
    assert {r.id for r in trainval} == {"10000001", "10000003"}
    assert {r.id: r.answer_text for r in test} == truth
    assert load(adapter="pubmedqa", path="pubmedqa/test_set.json") == test


def test_pubmedqa_split_needs_ground_truth(tmp_path: Path) -> None:
    (tmp_path / "ori_pqal.json").write_text((FIX / "pubmedqa" / "ori_pqal.json").read_text())
    assert len(load(data_root=None, adapter="pubmedqa", path=str(tmp_path / "ori_pqal.json"))) == 5
    msg = error_of(data_root=None, adapter="pubmedqa", path=str(tmp_path / "ori_pqal.json"), split="test")
    assert "test_ground_truth.json" in msg
    with pytest.raises(ConfigError, match="allowed: all, test, trainval"):
        load(adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="validation")


def test_pubmedqa_test_split_missing_ground_truth_pmids(tmp_path: Path) -> None:
    data = json.loads((FIX / "pubmedqa" / "ori_pqal.json").read_text())
    del data["10000004"]
    (tmp_path / "ori_pqal.json").write_text(json.dumps(data))
    (tmp_path / "test_ground_truth.json").write_text((FIX / "pubmedqa" / "test_ground_truth.json").read_text())
    msg = error_of(data_root=None, adapter="pubmedqa", path=str(tmp_path / "ori_pqal.json"), split="test")
    assert "1 PMIDs" in msg and "10000004" in msg


def _bad_pubmedqa(tmp_path: Path, pmid: str, **changes: Any) -> Path:
    data = json.loads((FIX / "pubmedqa" / "ori_pqal.json").read_text())
    data[pmid].update(changes)
    data[pmid] = {k: v for k, v in data[pmid].items() if v is not ...}
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"final_decision": "perhaps"}, "final_decision", ["'perhaps'", "yes, no, maybe"]),
        ({"QUESTION": ...}, "QUESTION", ["missing"]),
        ({"QUESTION": "  "}, "QUESTION", ["empty"]),
        ({"CONTEXTS": "one string"}, "CONTEXTS", ["list of strings"]),
    ],
)
def test_pubmedqa_row_errors(tmp_path: Path, changes: dict[str, Any], field: str, words: list[str]) -> None:
    path = _bad_pubmedqa(tmp_path, "10000003", **changes)
    msg = error_of(data_root=None, adapter="pubmedqa", path=str(path))
    assert "ori_pqal.json" in msg and "key 10000003" in msg and f"field '{field}'" in msg
    assert all(w in msg for w in words)


def test_pubmedqa_ground_truth_mismatch(tmp_path: Path) -> None:
    path = _bad_pubmedqa(tmp_path, "10000004", final_decision="yes")
    (tmp_path / "test_ground_truth.json").write_text((FIX / "pubmedqa" / "test_ground_truth.json").read_text())
    msg = error_of(data_root=None, adapter="pubmedqa", path=str(path))
    assert "key 10000004" in msg and "final_decision" in msg and "test_ground_truth.json" in msg


def test_pubmedqa_top_level_not_object(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text("[1, 2]")
    msg = error_of(data_root=None, adapter="pubmedqa", path=str(path))
    assert msg.startswith(str(path) + ":") and "JSON object" in msg and "list" in msg


def test_pubmedqa_hub_layout() -> None:
    recs = load(adapter="pubmedqa_hub", hub=str(HUB / "qiaojin" / "PubMedQA"), hub_config="pqa_labeled", split="train")
    official = load(adapter="pubmedqa", path="pubmedqa/ori_pqal.json")
    assert recs == official  # same ids, questions, contexts, answers
    assert recs[0].meta["split"] == "train" and recs[0].meta["config"] == "pqa_labeled"
    artificial = load(adapter="pubmedqa_hub", hub=str(HUB / "qiaojin" / "PubMedQA"), hub_config="pqa_artificial")
    assert {r.answer_text for r in artificial} == {"yes", "no"} and len(artificial) == 4


# --- MedMCQA ----------------------------------------------------------------------------------------


def test_medmcqa_official() -> None:
    recs = load(adapter="medmcqa", path="medmcqa/dev.json")
    assert len(recs) == 4 and recs[0].id == "a0000001-0000-4000-8000-000000000001"
    assert [r.answer for r in recs] == [0, 1, 2, 3]  # cop 1..4 in the file
    assert recs[0].answer_text == "Vitamin A" and recs[3].answer_text == "Pyloric"
    assert recs[0].option_labels == ("A", "B", "C", "D") and recs[0].dataset == "medmcqa"
    assert recs[0].meta["subject"] == "Biochemistry" and recs[0].meta["topic"] == "Vitamins"
    assert recs[3].meta["choice_type"] == "multi" and recs[0].meta["exp"].startswith("Retinal")


def test_medmcqa_official_and_hub_agree() -> None:
    official = {r.id: r for r in load(adapter="medmcqa", path="medmcqa/dev.json")}
    hub = load(adapter="medmcqa_hub", hub=str(HUB / "openlifescienceai" / "medmcqa"), split="validation")
    assert {r.id for r in hub} == set(official)
    for r in hub:
        assert r.answer_text == official[r.id].answer_text and r.options == official[r.id].options
    assert hub[0].meta["split"] == "validation"


def test_medmcqa_subjects_filter() -> None:
    recs = load(adapter="medmcqa", path="medmcqa/dev.json", subjects=["Anatomy", "Dental"])
    assert [r.meta["subject"] for r in recs] == ["Anatomy", "Dental"]
    recs = load(adapter="medmcqa", path="medmcqa/dev.json", exclude_subjects=["Dental"])
    assert len(recs) == 3
    with pytest.raises(ConfigError, match="Surgery not found.*available: Anatomy, Biochemistry"):
        load(adapter="medmcqa", path="medmcqa/dev.json", subjects=["Surgery"])


def _bad_medmcqa(tmp_path: Path, line: int, row: Any) -> Path:
    rows: list[Any] = jsonl(FIX / "medmcqa" / "dev.json")
    rows[line - 1] = row(rows[line - 1]) if callable(row) else row
    return write_lines(tmp_path / "dev.json", rows)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (lambda r: {**r, "cop": 0}, "cop", ["1..4"]),
        (lambda r: {**r, "cop": 5}, "cop", ["1..4", "1-based"]),
        (lambda r: {k: v for k, v in r.items() if k != "opc"}, "opc", ["missing"]),
        (lambda r: {**r, "question": ""}, "question", ["empty"]),
    ],
)
def test_medmcqa_row_errors(tmp_path: Path, row: Any, field: str, words: list[str]) -> None:
    path = _bad_medmcqa(tmp_path, 3, row)
    msg = error_of(data_root=None, adapter="medmcqa", path=str(path))
    assert "dev.json" in msg and "line 3" in msg and f"field '{field}'" in msg
    assert all(w in msg for w in words)


def test_invalid_json_line(tmp_path: Path) -> None:
    path = _bad_medmcqa(tmp_path, 2, '{"question": "cut off')
    msg = error_of(data_root=None, adapter="medmcqa", path=str(path))
    assert "dev.json" in msg and "line 2" in msg and "invalid JSON" in msg


def test_hub_test_split_hidden_labels_rejected() -> None:
    with pytest.raises(DataError) as exc:
        load(adapter="medmcqa_hub", hub=str(HUB / "openlifescienceai" / "medmcqa"), split="test")
    msg = str(exc.value)
    assert "medmcqa [default/test]" in msg and "index 0" in msg and "field 'cop'" in msg and "0..3" in msg


def test_hub_load_failure_names_id_config_split() -> None:
    msg = error_of(adapter="pubmedqa_hub", hub=str(HUB / "qiaojin" / "PubMedQA"), hub_config="pqa_nope")
    assert "PubMedQA" in msg and "'pqa_nope'" in msg and "'train'" in msg
    msg = error_of(adapter="medmcqa_hub", hub=str(HUB / "openlifescienceai" / "medmcqa"), split="dev")
    assert "split 'dev'" in msg


# --- MedQA ------------------------------------------------------------------------------------------


def test_medqa_four_and_five_options() -> None:
    four = load(adapter="medqa", path="medqa/4_options/phrases_no_exclude_test.jsonl")
    five = load(adapter="medqa", path="medqa/5_options/test.jsonl")
    assert [r.id for r in four] == [f"phrases_no_exclude_test:{n}" for n in (1, 2, 3, 4)]
    assert [r.answer for r in four] == [1, 0, 3, 2] and four[0].answer_text == "Lumbar puncture"
    assert {r.dataset for r in four} == {"medqa4"} and {r.dataset for r in five} == {"medqa5"}
    assert five[2].option_labels == ("A", "B", "C", "D", "E") and five[2].answer_text == "Pancreas"
    assert four[0].meta["meta_info"] == "step2&3" and four[0].meta["split"] == "test"


def test_medqa_hub_layout() -> None:
    hub = load(adapter="medqa_hub", hub=str(HUB / "GBaker" / "MedQA-USMLE-4-options"), split="test")
    four = load(adapter="medqa", path="medqa/4_options/phrases_no_exclude_test.jsonl")
    assert [r.id for r in hub] == ["test:0", "test:1", "test:2", "test:3"]
    assert [(r.question, r.options, r.answer) for r in hub] == [(r.question, r.options, r.answer) for r in four]
    assert len(load(adapter="medqa_hub", hub=str(HUB / "GBaker" / "MedQA-USMLE-4-options"), split="train")) == 2


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda r: {**r, "options": {"A": "x", "B": "y", "C": "z"}}, "options", ["4 or 5", "got 3"]),
        (lambda r: {**r, "answer_idx": "E"}, "answer_idx", ["'E'", "A, B, C, D"]),
        (lambda r: {**r, "answer": "Something else"}, "answer", ["differs"]),
        (lambda r: {**r, "question": " "}, "question", ["empty"]),
    ],
)
def test_medqa_row_errors(tmp_path: Path, change: Any, field: str, words: list[str]) -> None:
    rows = jsonl(FIX / "medqa" / "4_options" / "phrases_no_exclude_test.jsonl")
    rows[1] = change(rows[1])
    path = write_lines(tmp_path / "phrases_no_exclude_test.jsonl", rows)
    msg = error_of(data_root=None, adapter="medqa", path=str(path))
    assert "phrases_no_exclude_test.jsonl" in msg and "line 2" in msg and f"field '{field}'" in msg
    assert all(w in msg for w in words)


# --- ARC --------------------------------------------------------------------------------------------


def test_arc_labels_and_choice_counts() -> None:
    recs = load(adapter="arc", path="arc/ARC-Challenge-Test.jsonl")
    assert [r.id for r in recs] == ["Mercury_0000001", "NYSEDREGENTS_2000_4_1", "Mercury_0000003", "MCAS_2001_5_9"]
    assert {r.dataset for r in recs} == {"arc_challenge"}
    numeric, three, five = recs[1], recs[2], recs[3]
    assert numeric.option_labels == ("1", "2", "3", "4") and numeric.answer == 1 and numeric.answer_text == "sunlight"
    assert len(three.options) == 3 and three.answer_text == "solid"
    assert len(five.options) == 5 and five.answer == 4 and five.answer_text == "Mercury"
    easy = load(adapter="arc", path="arc/ARC-Easy-Dev.jsonl")
    assert {r.dataset for r in easy} == {"arc_easy"} and easy[0].meta["split"] == "dev"


def test_arc_hub_layout() -> None:
    hub = load(adapter="arc_hub", hub=str(HUB / "allenai" / "ai2_arc"), hub_config="ARC-Challenge", split="test")
    assert hub == load(adapter="arc", path="arc/ARC-Challenge-Test.jsonl")


def test_arc_answer_key_not_a_label(tmp_path: Path) -> None:
    rows = jsonl(FIX / "arc" / "ARC-Challenge-Test.jsonl")
    rows[1]["answerKey"] = "B"  # item labelled 1..4
    path = write_lines(tmp_path / "ARC-Challenge-Test.jsonl", rows)
    msg = error_of(data_root=None, adapter="arc", path=str(path))
    assert "ARC-Challenge-Test.jsonl" in msg and "line 2" in msg and "field 'answerKey'" in msg and "1, 2, 3, 4" in msg


# --- MMLU -------------------------------------------------------------------------------------------


def test_mmlu_both_csv_styles() -> None:
    recs = load(adapter="mmlu", path="mmlu")
    by_subject = Counter(r.meta["subject"] for r in recs)
    assert by_subject == {"anatomy": 3, "astronomy": 3, "virology": 2}
    anatomy = [r for r in recs if r.meta["subject"] == "anatomy"]  # header style, 0-based int answers
    astronomy = [r for r in recs if r.meta["subject"] == "astronomy"]  # hendrycks style, letters
    assert [r.id for r in anatomy] == ["anatomy:1", "anatomy:2", "anatomy:3"]
    assert [r.answer_text for r in anatomy] == ["skull", "four", "diaphragm"]
    assert anatomy[1].question == "The heart has how many chambers, in humans?"
    assert [r.answer_text for r in astronomy] == ["The Sun", "Saturn", "one year"]
    assert anatomy[0].option_labels == ("A", "B", "C", "D") and anatomy[0].dataset == "mmlu"
    assert load(adapter="mmlu", path="mmlu/test") == recs


def test_mmlu_dev_split_and_single_file() -> None:
    dev = load(adapter="mmlu", path="mmlu", split="dev")
    assert [(r.id, r.answer_text) for r in dev] == [("anatomy:1", "heart"), ("anatomy:2", "leg")]
    single = load(adapter="mmlu", path="mmlu/test/astronomy_test.csv")
    assert len(single) == 3 and single[0].meta["subject"] == "astronomy"


def test_mmlu_exclude_medical_and_subjects() -> None:
    general = load(adapter="mmlu", path="mmlu", exclude_subjects="medical")
    assert {r.meta["subject"] for r in general} == {"astronomy"}
    only = load(adapter="mmlu", path="mmlu", subjects=["virology"])
    assert [r.id for r in only] == ["virology:1", "virology:2"]


@pytest.mark.parametrize(
    ("file", "bad_row", "field", "words"),
    [
        ("anatomy_test.csv", "Which bone?,skull,femur,rib,0", "choices", ["6 columns", "got 5"]),
        ("anatomy_test.csv", "Which bone?,skull,femur,rib,patella,7", "answer", ["0..3"]),
        ("astronomy_test.csv", "Which star?,a,b,c,d,F", "answer", ["'F'", "A, B, C, D"]),
        ("astronomy_test.csv", "Which star?,a,,c,d,A", "choices", ["option 2"]),
    ],
)
def test_mmlu_row_errors(tmp_path: Path, file: str, bad_row: str, field: str, words: list[str]) -> None:
    lines = (FIX / "mmlu" / "test" / file).read_text().splitlines()
    lines.insert(2, bad_row)  # after the header (if any) and the first data row
    (tmp_path / file).write_text("\n".join(lines) + "\n")
    row = 2 if file == "anatomy_test.csv" else 3
    msg = error_of(data_root=None, adapter="mmlu", path=str(tmp_path))
    assert file in msg and f"row {row}" in msg and f"field '{field}'" in msg
    assert all(w in msg for w in words)


def test_mmlu_no_files(tmp_path: Path) -> None:
    assert "no MMLU files *_test.csv" in error_of(data_root=None, adapter="mmlu", path=str(tmp_path))


# --- text -------------------------------------------------------------------------------------------


def test_text_txt_one_document_per_non_empty_line() -> None:
    docs = load(adapter="text", path="text/replay.txt")
    assert all(isinstance(d, TextDoc) for d in docs)
    assert [d.id for d in docs] == ["replay:1", "replay:3", "replay:4", "replay:7"]
    assert docs[1].text == "A small town grew up at the ford, where travellers crossed in summer."
    assert docs[0].dataset == "replay"


def test_text_jsonl_and_hub() -> None:
    docs = load(adapter="text", path="text/replay.jsonl", name="c4")
    assert [d.id for d in docs] == ["replay:1", "replay:2", "replay:4"] and docs[0].dataset == "c4"
    assert docs[2].text.startswith("Owls")
    hub = load(adapter="text_hub", hub=str(HUB / "text_corpus"))
    assert [d.text for d in hub] == [d.text for d in load(adapter="text", path="text/replay.txt")]
    assert hub[0].id == "train:1"  # row 0 is an empty document, skipped like a blank line


def test_text_errors(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "docs.jsonl", [{"text": "ok"}, {"body": "no text"}])
    msg = error_of(data_root=None, adapter="text", path=str(path))
    assert "docs.jsonl" in msg and "line 2" in msg and "field 'text'" in msg
    other = tmp_path / "docs.csv"
    other.write_text("a\n")
    assert "unsupported file type '.csv'" in error_of(data_root=None, adapter="text", path=str(other))
    hub_msg = error_of(adapter="text_hub", hub=str(HUB / "text_corpus"), text_field="content")
    assert "field 'content'" in hub_msg and "column missing" in hub_msg
    with pytest.raises(ConfigError, match="subjects"):
        load(adapter="text", path="text/replay.txt", subjects=["x"])


# --- skip_invalid -----------------------------------------------------------------------------------


def test_skip_invalid_collects_and_writes(tmp_path: Path) -> None:
    rows: list[Any] = jsonl(FIX / "medmcqa" / "dev.json")
    rows[1] = {**rows[1], "cop": 0}
    rows.insert(3, "not json")
    path = write_lines(tmp_path / "dev.json", rows)
    rejects = Rejects(skip_invalid=True)
    recs = load(data_root=None, rejects=rejects, adapter="medmcqa", path=str(path))
    assert [r.answer_text for r in recs] == ["Vitamin A", "Radius", "Pyloric"]
    assert [(r["location"], r["field"]) for r in rejects.rows] == [("line 2", "cop"), ("line 4", None)]
    assert rejects.rows[0]["raw"]["cop"] == 0 and rejects.rows[1]["raw"] == "not json"
    out = tmp_path / "rejects.jsonl"
    rejects.write(out)
    written = jsonl(out)
    assert [w["location"] for w in written] == ["line 2", "line 4"] and written[0]["file"] == str(path)


def test_skip_invalid_mmlu_keeps_good_rows(tmp_path: Path) -> None:
    (tmp_path / "anatomy_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n"
                                               "Q1?,a,b,c,d,1\nQ2?,a,b,c\nQ3?,a,b,c,d,3\n")
    rejects = Rejects(skip_invalid=True)
    recs = load(data_root=None, rejects=rejects, adapter="mmlu", path=str(tmp_path))
    assert [r.id for r in recs] == ["anatomy:1", "anatomy:3"] and [r["location"] for r in rejects.rows] == ["row 2"]


# --- real data (read-only, outside the repo) ---------------------------------------------------------

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")


@needs_real
def test_real_pubmedqa_test_split() -> None:
    test = load(data_root=REAL, adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="test")
    assert len(test) == 500
    assert Counter(r.answer_text for r in test) == {"yes": 276, "no": 169, "maybe": 55}
    test_set = load(data_root=REAL, adapter="pubmedqa", path="pubmedqa/test_set.json")
    assert sorted(test, key=lambda r: r.id) == sorted(test_set, key=lambda r: r.id)  # same items, other order
    trainval = load(data_root=REAL, adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="trainval")
    assert len(trainval) == 500 and not {r.id for r in trainval} & {r.id for r in test}


@needs_real
def test_real_counts() -> None:
    medmcqa = load(data_root=REAL, adapter="medmcqa", path="medmcqa/dev.json")
    assert len(medmcqa) == 4183 and Counter(r.answer for r in medmcqa) == {0: 1348, 1: 1085, 2: 925, 3: 825}
    medqa = load(data_root=REAL, adapter="medqa", path="medqa_usmle/4_options/phrases_no_exclude_test.jsonl")
    assert len(medqa) == 1273 and {r.dataset for r in medqa} == {"medqa4"}
    arc = load(data_root=REAL, adapter="arc", path="general/arc/ARC-Challenge-Test.jsonl")
    assert len(arc) == 1172 and {r.dataset for r in arc} == {"arc_challenge"}
    mmlu = load(data_root=REAL, adapter="mmlu", path="general/mmlu")
    assert len(mmlu) == 14042 and len({r.meta["subject"] for r in mmlu}) == 57
    assert set(MEDICAL_MMLU_SUBJECTS) <= {r.meta["subject"] for r in mmlu}

