"""The report's tables from hand-made results (no model): letter vs cloze columns, the leaderboard
group column and its per-task table, and paired changes of accuracy, group accuracy and perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medtune.evaluate import metrics
from medtune.evaluate.records import EvalResult
from medtune.evaluate.tasks import GROUPS
from medtune.report import render
from medtune.report.build import collect, columns
from medtune.study_records import ModelEval, StudyResults, Validation

MMLU6 = list(GROUPS["mmlu_medical"].tasks)
LISTED = ["pubmedqa", "medqa4", "medqa4_cloze", "arc_easy", "ppl_medical"]
TASKS = [*LISTED[:4], *MMLU6, "ppl_medical"]


def _acc(xs: list[float]) -> dict:
    return {"acc": metrics.summarize(xs)}


def _model(tmp: Path, label: str, kind: str, correct: dict[str, list[float]], nll: list[float]) -> ModelEval:
    """A model's results.json and predictions.jsonl: per task, items i0.. right (1) or wrong (0);
    ppl_medical documents d0.. with the given summed NLL over 10 tokens each."""
    rows = [{"task": t, "id": f"i{i}", "gold": 0, "pred": 0 if c else 1} for t, cs in correct.items() for i, c in enumerate(cs)]
    rows += [{"task": "ppl_medical", "id": f"d{i}", "nll": v, "tokens": 10} for i, v in enumerate(nll)]
    d = tmp / label
    d.mkdir()
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = {t: _acc(cs) for t, cs in correct.items()}
    tasks["ppl_medical"] = {"perplexity": {"value": math.exp(sum(nll) / (10 * len(nll))), "n": 10 * len(nll),
                                           "ci95": [1.0, 99.0]}}
    sizes = [correct[t] for t in MMLU6]
    groups = {"mmlu_medical": {"acc": metrics.group_summary(sizes, weight_by_size=True)}}
    return ModelEval(label=label, kind=kind, step=f"eval/{label}", result=EvalResult(model="m", tasks=tasks, groups=groups),
                     predictions=d / "predictions.jsonl")


@pytest.fixture
def report(tmp_path):
    rng = np.random.default_rng(0)
    base_c = {t: [float(x) for x in rng.integers(0, 2, size=n)] for t, n in
              zip(TASKS[:-1], [40, 30, 30, 20, 10, 12, 14, 16, 18, 20])}
    tuned_c = {t: [1.0] * len(v) for t, v in base_c.items()}  # the tuned model answers every item right
    base_nll = [20.0, 30.0, 25.0, 40.0]
    tuned_nll = [18.0, 27.0, 24.0, 35.0]
    rows = [_model(tmp_path, "base", "base", base_c, base_nll), _model(tmp_path, "tuned", "tuned", tuned_c, tuned_nll)]
    res = StudyResults(name="s", model="m", tasks=TASKS, groups=["mmlu_medical"], listed=LISTED,
                       validation=Validation(medical=["pubmedqa"], general=["arc_easy"], sources={}, limit=None), rows=rows)
    return collect(res), base_c, base_nll, tuned_nll


def test_columns_keep_listed_tasks_and_move_group_only_tasks_to_the_suite_table():
    cols = columns(TASKS, ["mmlu_medical"], LISTED)
    assert cols.medical_in == ["pubmedqa"] and cols.medical_ood == ["medqa4"]
    assert cols.cloze == ["medqa4_cloze"] and cols.groups == ["mmlu_medical"]
    assert cols.suite == {"mmlu_medical": MMLU6}
    # a task named by the study itself keeps its column even when a group also holds it
    assert "mmlu_anatomy" in columns(TASKS, ["mmlu_medical"], [*LISTED, "mmlu_anatomy"]).medical_ood
    assert columns(TASKS).medical_ood == ["medqa4", *MMLU6]  # no groups: every task is a column


def test_a_general_cloze_task_has_one_column_and_stays_out_of_the_general_average():
    cols = columns(["arc_easy", "mmlu_general", "mmlu_general_cloze", "medqa4_cloze"])
    assert cols.cloze == ["mmlu_general_cloze", "medqa4_cloze"]  # in the study's task order
    assert cols.general == ["arc_easy", "mmlu_general"]  # the average's tasks: lm-eval's formulations


def test_report_labels_cloze_and_leaderboard_columns_and_shows_the_suite_table(report):
    rep, base_c, _, _ = report
    data = rep.model_dump(mode="json")  # report.json
    md = render.markdown(rep, [])
    header = next(line for line in md.splitlines() if line.startswith("| model | PubMedQA"))
    assert "MedQA-USMLE cloze (OOD)" in header and "MMLU medical avg (leaderboard)" in header
    assert "MMLU anatomy" not in header  # the group's tasks are in its own table
    assert "## Leaderboard suite: MMLU medical avg" in md
    suite = md.split("## Leaderboard suite: MMLU medical avg")[1]
    assert "| MMLU anatomy | MMLU clinical knowledge |" in suite
    assert "OLMES cloze formulation" in md and "leaderboard-comparable" in md
    # the medical average is over the letter tasks only (PubMedQA, MedQA-USMLE), not the cloze one
    base = data["rows"][0]
    want = (np.mean(base_c["pubmedqa"]) + np.mean(base_c["medqa4"])) / 2
    assert base["medical_avg"]["value"] == pytest.approx(want)
    expect = sum(sum(base_c[t]) for t in MMLU6) / sum(len(base_c[t]) for t in MMLU6)
    assert base["groups"]["mmlu_medical"]["value"] == pytest.approx(expect)


def test_paired_changes_of_group_accuracy_and_perplexity_by_hand(report):
    rep, base_c, base_nll, tuned_nll = report
    d = rep.model_dump(mode="json")["deltas"]["tuned"]  # report.json
    # the group's change: the size-weighted mean of the per-item differences over its six tasks
    diffs = [1.0 - x for t in MMLU6 for x in base_c[t]]
    assert d["mmlu_medical"]["value"] == pytest.approx(np.mean(diffs))
    assert d["mmlu_medical"]["changed"] == sum(x != 0 for x in diffs)
    assert d["medqa4_cloze"]["value"] == pytest.approx(1 - np.mean(base_c["medqa4_cloze"]))
    # perplexity: exp(total nll / total tokens), tuned minus base, over the same 4 documents
    ppl_b, ppl_t = math.exp(sum(base_nll) / 40), math.exp(sum(tuned_nll) / 40)
    m = d["ppl_medical"]
    assert m["value"] == pytest.approx(ppl_t - ppl_b) and m["rel"] == pytest.approx(ppl_t / ppl_b - 1)
    assert m["n"] == 4 and m["ci95"][0] <= m["value"] <= m["ci95"][1] and m["ci95"][1] < 0  # every document improved
    md = render.markdown(rep, [])
    assert "## Perplexity change vs the base model, paired on the same documents" in md
    assert f"{ppl_t - ppl_b:+.2f} [" in md


def test_paired_perplexity_change_interval_and_errors():
    one = metrics.paired_perplexity_change([10.0], [8.0], [5])
    assert one["value"] == pytest.approx(math.exp(8 / 5) - math.exp(2.0)) and one["ci95"] is None
    # documents that change in opposite directions: the interval straddles 0
    mixed = metrics.paired_perplexity_change([10.0, 10.0, 10.0, 10.0], [8.0, 12.0, 8.5, 11.5], [5, 5, 5, 5])
    assert mixed["ci95"][0] < 0 < mixed["ci95"][1]
    with pytest.raises(ValueError, match="same non-empty documents"):
        metrics.paired_perplexity_change([1.0], [1.0, 2.0], [1])
    with pytest.raises(ValueError, match="not finite"):
        metrics.paired_perplexity_change([1.0, math.nan], [1.0, 2.0], [1, 1])


def test_changes_plot_is_drawn_from_the_paired_changes(report, tmp_path):
    from medtune.report import plots

    data = report[0]
    path = plots.changes(data, tmp_path / "changes.png")
    assert path is not None and path.stat().st_size > 10_000
    assert plots.changes(data.model_copy(update={"deltas": {}}), tmp_path / "none.png") is None
    assert "![paired changes vs the base model" in render.markdown(data, ["changes.png"])


def test_answer_spread_names_the_modal_answer_and_the_majority_accuracy(report):
    rep, base_c, _, _ = report
    spread = rep.model_dump(mode="json")["spread"]  # report.json
    assert spread["majority"]["pubmedqa"] == 1.0  # every gold answer is choice 0 in the fixture
    # the tuned model always predicts the gold (choice 1, 1-based) -> 100 %; the base predicts 0 when right, 1 when wrong
    assert spread["rows"]["tuned"]["pubmedqa"] == {"choice": 1, "answer": None, "share": 1.0, "n": 40}
    right = np.mean(base_c["pubmedqa"])
    assert spread["rows"]["base"]["pubmedqa"]["share"] == pytest.approx(max(right, 1 - right))
    md = render.markdown(rep, [])
    assert "## Answer spread" in md and "#1 on 100 %" in md


def test_the_answer_spread_shows_the_answer_as_the_model_said_it(tmp_path):
    """'"yes" on 98 %' in the table when the predictions record the answer and every item's choice there is
    that answer; '#1' for older results and for tasks whose options differ per item (ARC)."""
    from types import SimpleNamespace

    from medtune.report.build import answer_spread

    rows = [{"task": "pubmedqa", "id": i, "pred": 0, "gold": 0, "answer": "yes"} for i in range(4)]
    rows += [{"task": "arc_easy", "id": i, "pred": 0, "gold": 0, "answer": f"option {i}"} for i in range(4)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spread = answer_spread([SimpleNamespace(label="m", step="eval/m", predictions=path)], ["pubmedqa", "arc_easy"])
    assert spread.rows["m"]["pubmedqa"].answer == "yes" and spread.rows["m"]["arc_easy"].answer is None
    assert render.shown_answer(1, "yes") == '"yes"' and render.shown_answer(2, None) == "#2"
    assert render.shown_answer(1, "a very long option text that goes on") == '"a very long option text…"'


def test_the_headline_gives_each_general_change_with_its_interval_and_item_count(report):
    """The shipped model's general cost is the paired change per general task with its interval and n, and a
    change inside its interval says so (a few items' change is not a cost)."""
    from medtune.report.records import ShipView

    data = report[0].model_copy(update={"ship": ShipView(row="tuned", rule="retain", candidates=[], selected=None,
                                                         rule_name="retain", retain=0.98, base_general=None)})
    head = render.markdown(data, []).split("\n\n")[1]
    d = data.deltas["tuned"]["arc_easy"]
    assert f"{data.display['arc_easy']} {100 * d.value:+.1f} points" in head and "(20 items)" in head
    assert ("within its interval" in head) == (d.ci95[0] <= 0 <= d.ci95[1])
    assert "general average" not in head


def test_a_pilot_report_says_its_reported_splits_are_validation_splits(report):
    """A pilot reports on validation splits (test_sources pointing at them); its report never calls them test splits."""
    from medtune.report.records import ShipView

    ship = ShipView(row="tuned", rule="retain", candidates=[], selected=None, rule_name="retain", retain=0.98,
                    base_general=None)
    for split, says in (("test", "the test splits were only scored to report"),
                        ("validation", "not a held-out estimate")):
        text = render.markdown(report[0].model_copy(update={"ship": ship, "reported_split": split}), [])
        assert f"## Results on the {split} splits" in text and says in text
        assert ("test split" in text.replace("no test split was read", "").replace("never a test split", "")
                .replace("reads no test split", "")) == (split == "test")


def test_selection_scores_say_what_they_are():
    """A perplexity score is named as 100 / perplexity, never as a mean accuracy."""
    from medtune.evaluate.scores import describe

    assert describe(["arc_easy"]) == "accuracy on arc_easy"
    assert describe(["ppl_general"]) == "100 / perplexity on ppl_general"
    assert describe(["pubmedqa", "ppl_medical"]) == "mean of accuracy on pubmedqa and 100 / perplexity on ppl_medical"
