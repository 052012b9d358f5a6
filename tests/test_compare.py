"""`medtune compare`: paired changes of one evaluation against another, as the report computes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medtune.errors import ConfigError


def _eval_dir(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"model": "m", "tasks": {}}))
    (path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _choice(task: str, i: int, gold: int, pred: int) -> dict:
    return {"task": task, "id": str(i), "gold": gold, "pred": pred}


GOLD = [0, 0, 1, 1, 2, 0, 1, 0]
"""PubMedQA golds (yes / no / maybe)."""


@pytest.fixture
def pair(tmp_path):
    ref = _eval_dir(tmp_path / "ref", [_choice("pubmedqa", i, g, 1) for i, g in enumerate(GOLD)]  # always "no"
                    + [_choice("arc_easy", i, 0, 0 if i < 3 else 1) for i in range(6)]
                    + [{"task": "ppl_general", "id": f"d{i}", "nll": 100.0, "tokens": 50} for i in range(3)])
    model = _eval_dir(tmp_path / "model", [_choice("pubmedqa", i, g, 0) for i, g in enumerate(GOLD)]  # always "yes"
                      + [_choice("arc_easy", i, 0, 0 if i in (0, 3, 4, 5) else 1) for i in range(7)]  # one item more
                      + [{"task": "ppl_general", "id": f"d{i}", "nll": 90.0, "tokens": 50} for i in range(3)])
    return ref, model


def test_compare_gives_the_paired_change_per_task_with_macro_f1_and_perplexity(pair):
    """Accuracy: model minus reference on the shared items, with the items whose correctness changed; PubMedQA:
    macro-F1 too; perplexity: as a share of the reference's; an item only one side scored is left out and counted."""
    from medtune.evaluate import metrics
    from medtune.report.compare import compare

    res = compare(*pair)
    rows = {(r.task, r.metric): r for r in res.rows}
    assert list(rows) == [("pubmedqa", "acc"), ("pubmedqa", "macro_f1"), ("arc_easy", "acc"), ("ppl_general", "perplexity")]
    pm = rows[("pubmedqa", "acc")]
    assert (pm.reference, pm.model) == (3 / 8, 4 / 8) and pm.change.value == pytest.approx(1 / 8)
    assert pm.change.changed == 7 and pm.change.n == 8  # every item but the "maybe" one changed correctness
    f1 = rows[("pubmedqa", "macro_f1")]
    want = metrics.macro_f1(GOLD, [0] * 8, 3) - metrics.macro_f1(GOLD, [1] * 8, 3)
    assert f1.change.value == pytest.approx(want) and f1.model - f1.reference == pytest.approx(want)
    arc = rows[("arc_easy", "acc")]
    # shared items 0-5: reference right on 0-2, model right on 0, 3-5: 3/6 -> 4/6, 5 changed (1, 2 and 3-5)
    assert arc.change.value == pytest.approx(1 / 6) and arc.change.changed == 5 and arc.change.n == 6
    assert arc.unpaired == 1 and (arc.reference, arc.model) == (0.5, pytest.approx(4 / 6))
    ppl = rows[("ppl_general", "perplexity")]
    assert ppl.change.rel == pytest.approx(math.exp(90 / 50 - 100 / 50) - 1)
    assert ppl.reference == pytest.approx(math.exp(2.0)) and ppl.change.n == 3


def test_compare_agrees_with_the_report_on_the_same_pair(pair):
    """The numbers are the report's own: its paired accuracy and perplexity changes and its macro-F1 change."""
    from medtune.report import build
    from medtune.report.compare import compare
    from medtune.evaluate.records import Prediction

    ref, model = (Prediction.read(p / "predictions.jsonl") for p in pair)
    want = {**build._acc_changes(build._correct(ref), build._correct(model), ["pubmedqa", "arc_easy"], []),
            **build._ppl_changes(build._doc_nll(ref), build._doc_nll(model), ["ppl_general"])}
    f1 = build._f1_change(build._classes_of(ref, "pubmedqa"), build._classes_of(model, "pubmedqa"), 3)
    got = {(r.task, r.metric): r.change for r in compare(*pair).rows}
    for task, change in want.items():
        metric = "perplexity" if task.startswith("ppl") else "acc"
        assert got[(task, metric)].value == pytest.approx(change.value)
        assert got[(task, metric)].ci95 == pytest.approx(change.ci95)
    assert got[("pubmedqa", "macro_f1")].ci95 == pytest.approx(f1.ci95)


def test_compare_refuses_what_cannot_be_paired(tmp_path, pair):
    from medtune.report.compare import CompareConfig, compare, compare_command

    ref, _ = pair
    other_gold = _eval_dir(tmp_path / "gold", [_choice("pubmedqa", i, (g + 1) % 3, 0) for i, g in enumerate(GOLD)])
    with pytest.raises(ConfigError, match="pubmedqa item 0: gold answer 0 in .* but 1"):
        compare(ref, other_gold)
    other_items = _eval_dir(tmp_path / "items", [_choice("pubmedqa", 100 + i, 0, 0) for i in range(4)])
    with pytest.raises(ConfigError, match="pubmedqa: .* scored no item in common"):
        compare(ref, other_items)
    other_task = _eval_dir(tmp_path / "task", [_choice("medqa4", 1, 0, 0)])
    with pytest.raises(ConfigError, match="scored no task in common"):
        compare(ref, other_task)
    with pytest.raises(ConfigError, match="tasks: medqa4 not scored in both"):
        compare(ref, pair[1], ["medqa4"])
    with pytest.raises(ConfigError, match=f"candidate: {tmp_path / 'nowhere'} does not exist"):
        compare_command(CompareConfig(reference=str(ref), candidate=str(tmp_path / "nowhere")))
    broken = _eval_dir(tmp_path / "nan", [{"task": "ppl_general", "id": f"d{i}", "nll": float("nan"), "tokens": 50}
                                          for i in range(3)])
    with pytest.raises(ConfigError, match="ppl_general: .*not finite"):
        compare(ref, broken)


def test_compare_command_prints_a_table_or_json(pair, capsys):
    from medtune.cli import main

    ref, model = pair
    main(["compare", "--reference", str(ref), "--candidate", str(model / "results.json")])
    out = capsys.readouterr().out
    assert "pubmedqa" in out and "+12.5 [" in out and "macro_f1" in out and "1 unpaired" in out
    main(["compare", "--reference", str(ref), "--candidate", str(model), "--format", "json", "--tasks", "arc_easy"])
    got = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in got["rows"]] == ["arc_easy"] and got["rows"][0]["change"]["changed"] == 5


def test_a_group_whose_tasks_were_all_compared_gets_its_aggregate_change(tmp_path):
    """The six MMLU medical subjects compared: mmlu_medical's change is the size-weighted mean of the per-item
    differences, with the group's stratified interval (the report's group change)."""
    from medtune.evaluate import metrics
    from medtune.evaluate.tasks import GROUPS
    from medtune.report.compare import compare

    subjects = GROUPS["mmlu_medical"].tasks
    sizes = [2, 4, 2, 2, 2, 4]
    ref = _eval_dir(tmp_path / "r", [_choice(t, i, 0, 0 if i % 2 else 1) for t, n in zip(subjects, sizes) for i in range(n)])
    model = _eval_dir(tmp_path / "m", [_choice(t, i, 0, 0) for t, n in zip(subjects, sizes) for i in range(n)])
    rows = {r.task: r for r in compare(ref, model).rows}
    group = rows["mmlu_medical"]
    diffs = [[1.0 - (1.0 if i % 2 else 0.0) for i in range(n)] for n in sizes]
    want = metrics.group_summary(diffs, weight_by_size=True)
    assert group.change.value == pytest.approx(0.5) == pytest.approx(want["value"])
    assert group.change.ci95 == pytest.approx(want["ci95"]) and group.change.changed == 8
    assert (group.reference, group.model) == (0.5, 1.0) and "multimedqa" not in rows
