"""Bad input is refused with a message naming file, line and field.

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


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the datasets cache (local Hub-layout directories are cached too) out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")


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
    return load_source(SourceConfig(adapter=adapter, path=str(path), **kw), None, rejects if rejects is not None else Rejects())


def error_of(path: Path, adapter: str, **kw: Any) -> DataError:
    with pytest.raises(DataError) as exc:
        load(path, adapter, **kw)
    return exc.value


# --- lines are split on "\n" only ------------------------------------------------------


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
    from medtune.report.build import _correct, _predictions

    atomic.write_jsonl(tmp_path / "predictions.jsonl", [{"task": "t", "id": "a\u2028b", "pred": 1, "gold": 1},
                                                         {"task": "t", "id": "c", "pred": 0, "gold": 1}])
    assert _correct(_predictions(tmp_path / "predictions.jsonl")) == {("t", "a\u2028b"): 1.0, ("t", "c"): 0.0}


# --- a UTF-8 byte-order mark is accepted and dropped -----------------------------------


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


# --- a source that yields no items is an error naming it -------------------------------

EMPTY_SOURCES = [  # (adapter, file name, content): empty, blank-only, or an object/CSV without items
    ("medmcqa", "dev.json", ""), ("medmcqa", "dev.json", "\n  \n\t\n"),
    ("medqa", "test.jsonl", ""), ("medqa", "test.jsonl", " \n\n"),
    ("arc", "ARC-Challenge-Test.jsonl", ""), ("arc", "ARC-Challenge-Test.jsonl", "\n\n"),
    ("pubmedqa", "ori_pqal.json", "{}"), ("pubmedqa", "ori_pqal.json", "{\n}\n"),
    ("mmlu", "anatomy_test.csv", ""), ("mmlu", "anatomy_test.csv", "\n \n"),
    ("mmlu", "anatomy_test.csv", "question,choice0,choice1,choice2,choice3,answer\n"),
    ("text", "wiki.txt", ""), ("text", "wiki.txt", " \n\n \n"),
    ("text", "replay.jsonl", ""), ("text", "replay.jsonl", '{"text": "  "}\n{"text": ""}\n'),
]


@pytest.mark.parametrize(("adapter", "name", "content"), EMPTY_SOURCES)
def test_a_source_without_items_is_an_error_naming_it(tmp_path: Path, adapter: str, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    err = error_of(path, adapter)
    assert err.path == str(path) and ("no items" in err.message or "no rows" in err.message)


def test_header_only_csv_in_an_mmlu_directory_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "anatomy_test.csv", "Which bone protects the brain?,skull,femur,rib,patella,A\n")
    empty = write(tmp_path / "virology_test.csv", "question,choice0,choice1,choice2,choice3,answer\n")
    err = error_of(tmp_path, "mmlu")
    assert err.path == str(empty) and "only the header" in err.message


def test_a_hub_dataset_of_blank_texts_is_an_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = tmp_path / "corpus" / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["", "  ", "\n"]}), shard)  # blank texts are skipped, like blank lines
    with pytest.raises(DataError, match="no items in source text_hub_train: the source is empty"):
        load_source(SourceConfig(adapter="text_hub", hub=str(tmp_path / "corpus"), split="train"), None, Rejects())


def test_all_rows_rejected_is_an_error_not_an_empty_source(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.json", jsonl_text([medmcqa_row(1, cop=9), medmcqa_row(2, cop=0)]))
    rejects = Rejects(skip_invalid=True)
    with pytest.raises(DataError, match="all 2 rows were invalid"):
        load(path, "medmcqa", rejects)
    assert len(rejects) == 2


def test_a_fold_that_selects_nothing_says_so(tmp_path: Path) -> None:
    from medtune.errors import ConfigError

    path = write(tmp_path / "dev.json", jsonl_text([medmcqa_row(1)]))
    with pytest.raises(ConfigError, match=r"fold \(share 0.4, take held_out\): selected 0 of 1 items"):
        load(path, "medmcqa", fold={"share": 0.4, "take": "held_out"})


def test_a_subject_filter_that_selects_nothing_says_so(tmp_path: Path) -> None:
    from medtune.errors import ConfigError

    path = write(tmp_path / "anatomy_test.csv", "Which bone protects the brain?,skull,femur,rib,patella,A\n")
    with pytest.raises(ConfigError, match="exclude_subjects: selected 0 of 1 items"):
        load(path, "mmlu", exclude_subjects=["anatomy"])


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_refused(limit: int) -> None:
    from medtune.config import validate
    from medtune.errors import ConfigError

    with pytest.raises(ConfigError, match="limit"):
        validate(SourceConfig, {"adapter": "medmcqa", "path": "dev.json", "limit": limit}, "test.yaml")


def test_json_written_by_medtune_is_strict(tmp_path: Path) -> None:
    from medtune import atomic

    for write_fn, value in ((atomic.write_json, {"acc": float("nan")}), (atomic.write_jsonl, [{"ppl": float("inf")}])):
        with pytest.raises(ValueError, match="JSON compliant"):
            write_fn(tmp_path / "out.json", value)
        assert not (tmp_path / "out.json").exists()


def test_eval_on_an_empty_task_source_stops_before_writing_results(tiny_llama: Path, tmp_path: Path) -> None:
    from medtune.evaluate.run import EvalConfig, evaluate

    write(tmp_path / "dev.json", "\n")
    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "medmcqa", "data_root": str(tmp_path),
        "out": str(tmp_path / "ev"), "progress": False,
        "task_sources": {"medmcqa": {"adapter": "medmcqa", "path": "dev.json"}}})
    with pytest.raises(DataError, match="no items in source"):
        evaluate(cfg)
    assert not (tmp_path / "ev" / "results.json").exists()


# --- a lone surrogate escape names file, line and field --------------------------------


def test_lone_surrogate_in_jsonl_names_line_and_field(tmp_path: Path) -> None:
    rows = [medmcqa_row(1), medmcqa_row(2, opc="broken \ud800 text")]
    path = write(tmp_path / "dev.json", "".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes "\ud800"
    err = error_of(path, "medmcqa")
    assert (err.path, err.location, err.field) == (str(path), "line 2", "opc") and "\\ud800" in err.message


def test_lone_surrogate_in_a_nested_field_and_in_skip_invalid(tmp_path: Path) -> None:
    row = {"id": "Q1", "question": {"stem": "Which?", "choices": [{"text": "a", "label": "A"},
                                                                  {"text": "b\udfff", "label": "B"}]}, "answerKey": "A"}
    ok = {"id": "Q2", "question": {"stem": "Smile \U0001F600?", "choices": [{"text": "a", "label": "A"},
                                                                            {"text": "b", "label": "B"}]}, "answerKey": "B"}
    path = write(tmp_path / "ARC-Easy-Test.jsonl", json.dumps(row) + "\n" + json.dumps(ok) + "\n")
    rejects = Rejects(skip_invalid=True)
    records = load(path, "arc", rejects)
    assert [r.id for r in records] == ["Q2"] and records[0].question == "Smile \U0001F600?"  # an escaped pair is fine
    assert [(r["location"], r["field"]) for r in rejects.rows] == [("line 1", "question.choices[1].text")]
    rejects.write(tmp_path / "rejects.jsonl")  # strict JSON: the raw line, not the unencodable string
    assert "\\udfff" in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8")


def test_lone_surrogate_in_pubmedqa_names_key_and_field(tmp_path: Path) -> None:
    item = pubmedqa_item() | {"CONTEXTS": ["Fine.", "Half \ud83d of a pair."]}
    path = write(tmp_path / "ori_pqal.json", json.dumps({"10000001": pubmedqa_item(), "10000002": item}, indent=4))
    err = error_of(path, "pubmedqa")
    assert (err.location, err.field) == ("key 10000002", "CONTEXTS[1]") and "\\ud83d" in err.message


# --- duplicate ids are an error naming both lines --------------------------------------


def test_repeated_medmcqa_id_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.json", jsonl_text([medmcqa_row(1), medmcqa_row(2), medmcqa_row(1)]))
    err = error_of(path, "medmcqa")
    assert (err.location, err.field) == ("line 3", "id") and "'id-1', first seen at line 1" in err.message


def test_repeated_arc_id_is_a_reported_drop_with_skip_invalid(tmp_path: Path) -> None:
    row = {"id": "Mercury_1", "question": {"stem": "Which?", "choices": [{"text": "a", "label": "A"},
                                                                         {"text": "b", "label": "B"}]}, "answerKey": "A"}
    path = write(tmp_path / "ARC-Challenge-Test.jsonl", jsonl_text([row, row | {"answerKey": "B"}]))
    rejects = Rejects(skip_invalid=True)
    records = load(path, "arc", rejects)
    assert [(r.id, r.answer) for r in records] == [("Mercury_1", 0)]  # the first one is kept
    assert [(r["location"], r["error"]) for r in rejects.rows] == [("line 2", "duplicate id 'Mercury_1', first seen at line 1")]


def test_repeated_pubmedqa_pmid_names_both_lines(tmp_path: Path) -> None:
    item = json.dumps(pubmedqa_item())
    path = write(tmp_path / "ori_pqal.json", f'{{\n "10000001": {item},\n "10000002": {item},\n "10000001": {item}\n}}\n')
    err = error_of(path, "pubmedqa")
    assert err.location == "key 10000001" and "lines 2 and 4" in err.message


def test_repeated_key_inside_a_row_is_refused(tmp_path: Path) -> None:
    row = json.dumps(medmcqa_row(1)).replace('"cop": 1', '"cop": 1, "cop": 3')
    err = error_of(write(tmp_path / "dev.json", row + "\n"), "medmcqa")
    assert (err.location, err.field) == ("line 1", "cop") and "duplicate key" in err.message


def test_repeated_hub_id_names_both_indices(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = tmp_path / "medmcqa" / "data" / "validation-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    rows = [medmcqa_row(1, cop=0), medmcqa_row(2, cop=1), medmcqa_row(1, cop=2)]
    pq.write_table(pa.Table.from_pylist(rows), shard)
    with pytest.raises(DataError) as exc:
        load_source(SourceConfig(adapter="medmcqa_hub", hub=str(tmp_path / "medmcqa")), None, Rejects())
    assert exc.value.location == "index 2" and "first seen at index 0" in exc.value.message


# --- an unbalanced quote in an MMLU CSV is an error naming the line --------------------


def test_unbalanced_quote_that_merges_two_rows_names_the_line(tmp_path: Path) -> None:
    text = ("Which bone protects the brain?,skull,femur,rib,patella,A\n"
            '"Which organ pumps blood?,heart,liver,lung,kidney,A\n'  # the quote is never closed here ...
            'Which gas do plants take in?",oxygen,carbon dioxide,helium,neon,B\n')  # ... so it ends here
    path = write(tmp_path / "anatomy_test.csv", text)
    err = error_of(path, "mmlu")
    assert err.location == "row 2" and "lines 2-3" in err.message and "unbalanced quote at line 2" in err.message


def test_quote_never_closed_names_its_line(tmp_path: Path) -> None:
    text = ("question,choice0,choice1,choice2,choice3,answer\n"
            "Which bone protects the brain?,skull,femur,rib,patella,0\n"
            '"Which organ pumps blood?,heart,liver,lung,kidney,0\n'
            "Which gas do plants take in?,oxygen,carbon dioxide,helium,neon,1\n")
    err = error_of(write(tmp_path / "anatomy_test.csv", text), "mmlu")
    assert err.location == "line 3" and "malformed CSV" in err.message


def test_quoted_question_with_line_breaks_is_still_read(tmp_path: Path) -> None:
    text = ('"Consider the code:\nx = 1, y = 2\nprint(x + y)\nWhat is printed?",1,2,3,12,C\n'
            "Which bone protects the brain?,skull,femur,rib,patella,A\n")
    records = load(write(tmp_path / "high_school_computer_science_test.csv", text), "mmlu")
    assert [(r.id, r.answer) for r in records] == [("high_school_computer_science:1", 2),
                                                   ("high_school_computer_science:2", 0)]
    assert records[0].question.count("\n") == 3


# --- a Hub id that cannot be fetched fails at once, with one clear message -------------

NOT_CACHED = "is not in the local Hugging Face cache and the Hub cannot be reached"


def test_offline_hub_model_id_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from medtune import models
    from medtune.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as exc:
        models.resolve("medtune-test-nobody/no-such-model")
    assert NOT_CACHED in str(exc.value) and "HF_HUB_OFFLINE=1 is set" in str(exc.value)


def test_offline_hub_dataset_id_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as exc:
        load_source(SourceConfig(adapter="medmcqa_hub", hub="medtune-test-nobody/no-such-dataset"), None, Rejects())
    assert NOT_CACHED in str(exc.value) and "HF_DATASETS_OFFLINE=1 is set" in str(exc.value)
    assert exc.value.path == "medtune-test-nobody/no-such-dataset [default/validation]"


def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point HF_ENDPOINT at a local port nobody listens on, with every offline variable unset."""
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


def test_unreachable_hub_endpoint_is_probed_once_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from medtune import hub_access, models
    from medtune.errors import ModelError

    url = closed_endpoint(monkeypatch)
    calls: list[str] = []
    real = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, **kw: calls.append(req.full_url) or real(req, **kw))
    hub_access._probe.cache_clear()
    for _ in range(2):
        with pytest.raises(ModelError) as exc:
            models.resolve("medtune-test-nobody/no-such-model")
        assert NOT_CACHED in str(exc.value) and f"{url} does not answer" in str(exc.value)
    assert calls == [url]  # one probe per endpoint and process


def test_unreachable_hub_endpoint_stops_a_dataset_id_before_datasets_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_endpoint(monkeypatch)
    with pytest.raises(DataError) as exc:
        load_source(SourceConfig(adapter="arc_hub", hub="medtune-test-nobody/no-such-dataset"), None, Rejects())
    assert NOT_CACHED in exc.value.message and f"{url} does not answer" in exc.value.message
