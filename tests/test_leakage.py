"""Leakage guard: id / exact / normalized matches, drop and refuse modes."""

from __future__ import annotations

import pytest

from medtune.data.leakage import Leak, find_leaks, guard, normalize_text
from medtune.data.records import QARecord
from medtune.errors import LeakageError


def qa(id: str, question: str, dataset: str = "medqa4") -> QARecord:
    return QARecord(id=id, dataset=dataset, question=question, context=None, options=("a", "b"), answer=0)


EVAL = {
    "pubmedqa_test": [qa("12345", "Does aspirin prevent stroke?", "pubmedqa")],
    "medqa_test": [qa("test:1", "Which nerve innervates the deltoid muscle?"),
                   qa("test:2", "What is the first-line drug for status epilepticus?")],
}


def test_normalize_text_folds_case_punctuation_whitespace_and_unicode():
    assert normalize_text("  What  is\tthe  DOSE?!\n") == "what is the dose"
    assert normalize_text("Straße, first-line") == "strasse firstline"
    assert normalize_text("ﬁbrosis") == "fibrosis"  # NFKC: ligature -> two letters


def test_exact_normalized_and_id_matches_are_found():
    train = [
        qa("t1", "Which nerve innervates the deltoid muscle?"),  # exact
        qa("t2", "what is the FIRST-LINE drug for status   epilepticus"),  # normalized
        qa("12345", "A different wording of the PubMed question", "pubmedqa"),  # PMID
        qa("t4", "Which nerve innervates the biceps?"),  # clean
    ]
    assert find_leaks(train, EVAL) == [
        Leak("t1", "medqa_test", "test:1", "exact"),
        Leak("t2", "medqa_test", "test:2", "normalized"),
        Leak("12345", "pubmedqa_test", "12345", "id"),
    ]


def test_ids_only_match_within_the_same_dataset_family():
    # the same string id from another dataset, or file+line ids (medqa), are not leaks
    train = [qa("12345", "Unrelated question one", "medmcqa"), qa("test:1", "Unrelated question two")]
    assert find_leaks(train, EVAL) == []
    # the Hub adapter's PMIDs are the same family as the local file's
    assert find_leaks([qa("12345", "Other wording", "pubmedqa_hub")], EVAL)[0].how == "id"


def test_drop_mode_keeps_clean_records_and_counts_per_eval_set():
    clean = qa("t4", "Which nerve innervates the biceps?")
    train = [qa("t1", "which nerve innervates the deltoid muscle"), clean,
             qa("12345", "x", "pubmedqa"), qa("t3", "Does aspirin prevent stroke?")]
    report = guard(train, EVAL, drop=True)
    assert report.kept == [clean]
    assert report.counts == {"pubmedqa_test": 2, "medqa_test": 1}
    assert report.n_dropped == 3
    assert {leak.train_id for leak in report.dropped} == {"t1", "12345", "t3"}


def test_an_item_leaking_into_two_sets_is_dropped_once_and_counted_in_both():
    evals = {"a": [qa("e1", "Same question?")], "b": [qa("e2", "same question")]}
    report = guard([qa("t", "Same question?")], evals, drop=True)
    assert report.counts == {"a": 1, "b": 1}
    assert report.n_dropped == 1 and report.kept == []


def test_refuse_mode_raises_with_count_sets_examples_and_the_flag():
    train = [qa(f"t{i}", "Which nerve innervates the deltoid muscle?") for i in range(7)] + [qa("ok", "Fine?")]
    with pytest.raises(LeakageError) as err:
        guard(train, EVAL, drop=False)
    msg = str(err.value)
    assert msg.startswith("7 training item(s) leak")
    assert "medqa_test (7)" in msg and "pubmedqa_test" not in msg
    assert "'t4'" in msg and "'t5'" not in msg  # at most 5 examples
    assert "drop_leaked: true" in msg and "--drop-leaked" in msg


def test_clean_data_passes_in_refuse_mode():
    train = [qa("t", "Which nerve innervates the biceps?")]
    report = guard(train, EVAL, drop=False)
    assert report.kept == train and report.dropped == [] and report.counts == {"pubmedqa_test": 0, "medqa_test": 0}


def test_punctuation_only_questions_do_not_match_each_other():
    assert find_leaks([qa("t", "???")], {"e": [qa("e", "...")]}) == []
