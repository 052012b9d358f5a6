"""Typed records between stages: what one stage writes and another reads is a record with its load/save,
its file's content unchanged by a load and save; the report renders the study's records, and report.json
is their dump."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medtune.data.spec import FoldConfig, SourceConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"

RESULTS = {
    "model": "m", "adapter": None, "mode": "loglikelihood",
    "tasks": {
        "medmcqa": {"acc": {"value": 0.5, "n": 4, "stderr": 0.29, "ci95": [0.0, 1.0]},
                    "acc_norm": {"value": 0.25, "n": 4, "stderr": 0.25, "ci95": [0.0, 0.75]},
                    "acc_by_subject": {"Anatomy": {"value": 0.5, "n": 4, "stderr": 0.29, "ci95": [0.0, 1.0]}},
                    "n": 4, "fewshot": 0, "seconds": 0.1, "items_per_s": None, "domain": "medical_in"},
        "ppl_general": {"perplexity": {"value": 12.5, "n": 300, "ci95": [11.0, 14.0]}, "tokens": 300, "documents": 3,
                        "window": 64, "stride": 64, "seconds": 0.2, "tokens_per_s": 1500.0, "domain": "general"},
    },
    "groups": {"g": {"acc": {"value": 0.5, "n": 4, "stderr": 0.2, "ci95": [0.1, 0.9], "weight_by_size": True, "tasks": 1},
                     "tasks": {"medmcqa": 0.5}, "aggregation": "size-weighted (mean over items)", "seconds": 0.1}},
    "processes": 1, "device": "cpu", "dtype": "torch.float32", "packages": {"torch": "2"},
}


def test_eval_results_load_as_typed_task_scores_and_save_unchanged(tmp_path):
    """results.json loads as task name -> TaskScore of Metric records; saving it again gives the same content
    (keys the record does not name, such as device and timings, kept; no null added for unset metrics)."""
    from medtune.evaluate.records import EvalResult, Metric, TaskScore

    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    res = EvalResult.load(tmp_path)
    assert isinstance(res.tasks["medmcqa"], TaskScore) and isinstance(res.tasks["medmcqa"].acc_norm, Metric)
    assert res.tasks["ppl_general"].perplexity.ci95 == (11.0, 14.0) and res.groups["g"].acc.weight_by_size is True
    res.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == RESULTS


def test_the_headline_metric_is_accuracy_else_perplexity():
    """One rule picks a task's headline: its accuracy, else its perplexity; the eval result asks the task's score."""
    from medtune.evaluate.records import EvalResult, TaskScore

    res = EvalResult.model_validate(RESULTS)
    assert res.headline("medmcqa") == res.tasks["medmcqa"].acc and res.headline("ppl_general").value == 12.5
    assert TaskScore().headline is None and res.headline("absent") is None


def test_predictions_read_as_records(tmp_path):
    """predictions.jsonl rows read as Prediction records: choice rows, perplexity documents, unparsed outputs."""
    from medtune.evaluate.records import Prediction

    rows = [{"task": "pubmedqa", "id": 7, "gold": 0, "pred": 0, "answer": "yes", "loglikelihoods": [-1.0, -2.0]},
            {"task": "ppl_general", "id": "d0", "nll": 20.5, "tokens": 10},
            {"task": "medqa4", "id": "q", "gold": 1, "pred": None, "output": "no idea"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    choice, doc, unparsed = Prediction.read(path)
    assert (choice.id, choice.is_choice, choice.correct, choice.answer) == ("7", True, 1.0, "yes")
    assert (doc.is_choice, doc.nll, doc.tokens) == (False, 20.5, 10)
    assert unparsed.pred is None and unparsed.correct == 0.0
    assert Prediction.read(tmp_path / "missing.jsonl") == []


def test_training_curves_and_data_manifest_are_records_owned_by_their_writers(tmp_path):
    """curves.json and manifest.json load as typed records (the fields the study reads) and save unchanged."""
    from medtune.data.manifest import DataManifest
    from medtune.train.records import TrainCurves

    curves = {"run": {"global_batch": 4, "steps": 2, "processes": 1, "device": "cpu", "parallelism": "none"},
              "history": [{"step": 1, "loss": 3.5, "lr": 0.001, "tokens": 512, "grad_norm": None},
                          {"step": 2, "loss": 3.25, "lr": 0.0005, "tokens": 1024, "grad_norm": 1.5}], "seconds": 4.25}
    TrainCurves.model_validate(curves).save(tmp_path / "curves.json")
    assert json.loads((tmp_path / "curves.json").read_text()) == curves
    loaded = TrainCurves.load(tmp_path)
    assert loaded.history[-1].tokens == 1024 and loaded.run.global_batch == 4 and loaded.seconds == 4.25
    manifest = {"sources": [{"name": "s", "role": "train", "items": 3, "tokens": 90}], "rejected_rows": 0,
                "leakage": {"dropped_items": 2, "per_eval_set": {}, "examples": []}, "decontamination": None,
                "mix": {"general_share_target": 0.3, "strategy": "ratio"},
                "packing": {"blocks": 5, "block_size": 64, "source_tokens": {"s": 90}, "general_share": 0.25, "shards": 1},
                "created": "now"}
    DataManifest.model_validate(manifest).save(tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    m = DataManifest.load(tmp_path)
    assert (m.mix.general_share_target, m.packing.general_share, m.leakage.dropped_items) == (0.3, 0.25, 2)
    assert TrainCurves.load(tmp_path / "none") is None and DataManifest.load(tmp_path / "none") is None


def test_the_report_is_a_typed_record_and_report_json_is_its_dump(tmp_path):
    """collect() gives a Report record that render and plots read; report.json is its dump, and the
    validation sources show as the study's source configs (no null keys)."""
    import numpy as np
    from test_report import LISTED, TASKS, _model

    from medtune.report import render
    from medtune.report.build import collect, write_report
    from medtune.report.records import PairedChange, Report, Row
    from medtune.merge.selection import SelectionRule
    from medtune.study_records import Candidate, ShipChoice, StudyResults, Validation

    rng = np.random.default_rng(1)
    correct = {t: [float(x) for x in rng.integers(0, 2, size=12)] for t in TASKS[:-1]}
    rows = [_model(tmp_path, "base", "base", correct, [20.0, 30.0]),
            _model(tmp_path, "tuned", "tuned", {t: [1.0] * 12 for t in correct}, [18.0, 27.0])]
    source = SourceConfig(adapter="pubmedqa", path="pqa.json", fold=FoldConfig(share=0.25, take="held_out"))
    res = StudyResults(name="s", model="m", tasks=TASKS, groups=["mmlu_medical"], listed=LISTED, rows=rows,
                       validation=Validation(medical=["pubmedqa"], general=["arc_easy"], limit=None,
                                             sources={"pubmedqa": source}),
                       ship=ShipChoice(candidates=[Candidate(label="base", variant=None, medical=0.4, general=0.5)],
                                       selected=0, rule=SelectionRule(), base_general=0.5, row="base"))
    rep = collect(res)
    assert isinstance(rep, Report) and all(isinstance(r, Row) for r in rep.rows)
    assert isinstance(rep.deltas["tuned"]["ppl_medical"], PairedChange) and rep.deltas["tuned"]["ppl_medical"].is_ppl
    rdir = write_report(res, tmp_path / "report")
    data = json.loads((rdir / "report.json").read_text())
    assert data == rep.model_dump(mode="json")
    shown = data["validation"]["sources"]["pubmedqa"]
    assert shown == source.model_dump(mode="json", exclude_none=True) and None not in shown.values()
    assert "variant" not in data["rows"][0] and "method" not in data["ship"]["candidates"][0]  # unset: left out
    md = (rdir / "report.md").read_text()
    assert md == render.markdown(rep, sorted(p.name for p in rdir.glob("*.png")))
    assert "**Ship: the base model.**" in md and "pubmedqa: pqa.json (fold held_out 0.25)" in md


LOOKUP = re.compile(r"\[['\"][A-Za-z_0-9]+['\"]\]|\.get\(['\"]")


@pytest.mark.parametrize("module", ["report/build.py", "report/render.py", "report/plots.py", "report/records.py",
                                    "study/outcome.py"])
def test_the_report_reads_its_records_by_field_not_by_key(module):
    """The report and the study's closing lines index no parsed JSON by string key: they read typed records."""
    hits = [line.strip() for line in (SRC / module).read_text().splitlines() if LOOKUP.search(line)]
    assert hits == []
