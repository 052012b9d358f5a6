"""The general-text control (issue 32): a variant trained with the same recipe and token budget on general text
only, every model's paired change vs it in the report, PubMedQA macro-F1 and per-class recall with paired
changes, the reading of one-sided answers, the validation curves in the report, and the validation splits of
`eval_sources` in the training data's leakage guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtune.data.mixing import mix_plan
from medtune.errors import ConfigError, MedtuneError
from medtune.evaluate import metrics
from medtune.evaluate.records import EvalResult
from medtune.report import render
from medtune.report.build import collect
from medtune.study_records import ModelEval, StudyResults, TrainSummary, Validation
from medtune.train.records import TrainRun, ValidationPoint


# --- the mix ---------------------------------------------------------------------------------------------------

def test_share_one_is_general_text_only_at_the_domain_texts_token_budget():
    lengths = {"med": np.array([100, 50, 30]), "wiki": np.array([40] * 20)}
    groups = {"med": "domain", "wiki": "general"}
    plan = mix_plan(lengths, groups, 1.0, "fixed_share", seed=0)
    r = plan.report
    assert r.tokens == {"med": 0, "wiki": 180} and r.general_share_realised == 1.0
    assert set(plan.source.tolist()) == {1} and int(plan.length.sum()) == 180
    replay = mix_plan(lengths, groups, 0.5, "fixed_share", seed=0).report
    assert replay.tokens == {"med": 180, "wiki": 180}  # 0.5 adds as many general tokens; 1 replaces the domain ones
    with pytest.raises(MedtuneError, match="needs general sources|general sources are empty"):
        mix_plan({"med": np.array([10]), "wiki": np.array([], dtype=np.int64)}, groups, 1.0, "fixed_share", seed=0)
    with pytest.raises(MedtuneError, match=r"\[0, 1\]"):
        mix_plan(lengths, groups, 1.5, "fixed_share", seed=0)


# --- the study config --------------------------------------------------------------------------------------------

def test_a_control_variant_trains_on_general_text_and_is_neither_swept_nor_shipped(tiny_llama, tmp_path):
    from test_study import tiny_study

    from medtune.study import steps as St

    out = tmp_path / "s"
    cfg = tiny_study(tiny_llama, out, variants=[{"name": "lora"}, {"name": "ctrl", "control": True}])
    assert cfg.control == "ctrl" and cfg.swept == ["lora"]
    assert cfg.train_config(cfg.variants[1], out).data.general_share == 1.0
    names = [s.name for s in St.static_plan(cfg, out)]
    assert "train/ctrl" in names and "eval/ctrl" in names and "sweep/ctrl" not in names and "sweep/lora" in names
    # general_share 1 is the same control; naming it in averaging.variants sweeps it
    same = tiny_study(tiny_llama, out, variants=[{"name": "lora"}, {"name": "ctrl", "general_share": 1.0}],
                      **{"averaging.variants": ["lora", "ctrl"]})
    assert same.control == "ctrl" and "sweep/ctrl" in [s.name for s in St.static_plan(same, out)]


@pytest.mark.parametrize("variants,changes,message", [
    ([{"name": "a", "control": True}, {"name": "b", "general_share": 1.0}], {}, "give one"),
    ([{"name": "a", "control": True, "general_share": 0.3}], {}, "contradicts control"),
    ([{"name": "lora"}, {"name": "a", "control": True}], {"data.replay": []}, "give data.replay"),
])
def test_control_settings_that_cannot_be_a_control_are_refused(tiny_llama, tmp_path, variants, changes, message):
    from test_study import tiny_study

    with pytest.raises(ConfigError, match=message):
        tiny_study(tiny_llama, tmp_path / "s", variants=variants, **changes)


# --- the report ----------------------------------------------------------------------------------------------

GOLD = [0] * 12 + [1] * 6 + [2] * 2  # PubMedQA-like: yes-heavy


def _model(tmp: Path, label: str, kind: str, pred: list[int], nll: list[float], arc: list[int]) -> ModelEval:
    """A model's results.json and predictions.jsonl on 20 PubMedQA items (gold GOLD), 10 ARC items, 3 documents."""
    rows = [{"task": "pubmedqa", "id": f"p{i}", "gold": g, "pred": p, "answer": ["yes", "no", "maybe"][p]}
            for i, (g, p) in enumerate(zip(GOLD, pred))]
    rows += [{"task": "arc_easy", "id": f"a{i}", "gold": 0, "pred": 0 if c else 1} for i, c in enumerate(arc)]
    rows += [{"task": "ppl_general", "id": f"d{i}", "nll": v, "tokens": 10} for i, v in enumerate(nll)]
    d = tmp / label
    d.mkdir()
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pub = metrics.class_summary(GOLD, pred, ["yes", "no", "maybe"])
    tasks = {"pubmedqa": {"acc": metrics.summarize([float(g == p) for g, p in zip(GOLD, pred)]),
                          "macro_f1": pub["macro_f1"], "recall_by_class": pub["recall_by_class"]},
             "arc_easy": {"acc": metrics.summarize([float(c) for c in arc])},
             "ppl_general": {"perplexity": {"value": float(np.exp(sum(nll) / 30)), "n": 30, "ci95": [1.0, 99.0]}}}
    return ModelEval(label=label, kind=kind, step=f"eval/{label}", result=EvalResult(model="m", tasks=tasks),
                     predictions=d / "predictions.jsonl", **({"variant": label} if kind != "base" else {}))


@pytest.fixture
def three(tmp_path):
    """base (spread answers), the control (says yes to almost all), the tuned model (yes to all but the nos)."""
    base = [0, 1, 2] * 6 + [0, 1]
    control = [0] * 19 + [1]
    tuned = [0] * 12 + [1] * 6 + [0, 0]
    rows = [_model(tmp_path, "base", "base", base, [20.0, 30.0, 25.0], [1, 0] * 5),
            _model(tmp_path, "lora", "tuned", tuned, [18.0, 28.0, 24.0], [1] * 8 + [0] * 2),
            _model(tmp_path, "ctrl", "control", control, [17.0, 27.0, 23.0], [1] * 6 + [0] * 4)]
    curves = {v: TrainSummary(run=TrainRun(steps=4, processes=1, global_batch=2), seconds=1.0, history=[], method="lora",
                              validation=[ValidationPoint(step=s, task="pubmedqa", metric="acc", value=a, n=20)
                                          for s, a in ((0, 0.5), (2, 0.4), (4, 0.6))])
              for v in ("lora", "ctrl")}
    res = StudyResults(name="s", model="m", tasks=["pubmedqa", "arc_easy", "ppl_general"], groups=[],
                       listed=["pubmedqa", "arc_easy", "ppl_general"], rows=rows, train=curves,
                       validation=Validation(medical=["pubmedqa"], general=["arc_easy"], sources={}, limit=None))
    return collect(res), {"base": base, "lora": tuned, "ctrl": control}


def test_every_model_is_compared_with_the_control_on_the_same_items(three):
    rep, preds = three
    assert rep.control == "ctrl" and set(rep.control_deltas) == {"base", "lora"}
    acc = lambda p: np.mean([g == x for g, x in zip(GOLD, p)])  # noqa: E731
    d = rep.control_deltas["lora"]["pubmedqa"]
    assert d.value == pytest.approx(acc(preds["lora"]) - acc(preds["ctrl"]))
    assert d.changed == sum((g == a) != (g == b) for g, a, b in zip(GOLD, preds["lora"], preds["ctrl"]))
    assert rep.control_deltas["lora"]["arc_easy"].value == pytest.approx(0.2)
    assert rep.control_deltas["base"]["ppl_general"].value > 0  # the control's perplexity is lower than the base's
    md = render.markdown(rep, [])
    assert "## Change vs the general-text control (ctrl)" in md and "needs the medical data" in md


def test_macro_f1_recall_and_their_paired_changes_vs_base_and_control(three):
    rep, preds = three
    view = rep.classes["lora"]["pubmedqa"]
    assert view.macro_f1.value == pytest.approx(metrics.macro_f1(GOLD, preds["lora"], 3))
    assert view.recall["no"].value == 1.0 and view.recall["maybe"].value == 0.0
    assert view.vs_base.value == pytest.approx(metrics.macro_f1(GOLD, preds["lora"], 3) - metrics.macro_f1(GOLD, preds["base"], 3))
    assert view.vs_control.value == pytest.approx(metrics.macro_f1(GOLD, preds["lora"], 3)
                                                  - metrics.macro_f1(GOLD, preds["ctrl"], 3))
    assert rep.classes["base"]["pubmedqa"].vs_base is None and rep.classes["ctrl"]["pubmedqa"].vs_control is None
    md = render.markdown(rep, [])
    assert "## PubMedQA: macro-F1 and recall per class" in md and "recall maybe" in md and "vs control (ctrl)" in md


def test_a_one_sided_model_is_read_by_its_macro_f1(three):
    """The control says "yes" to 95 % of items: its accuracy change is read against its macro-F1 change."""
    rep, _ = three
    md = render.markdown(rep, [])
    reading = md.split("## Reading one-sided answers", 1)[1].split("\n## ", 1)[0]
    assert 'ctrl answers "yes" on 95 % of PubMedQA items' in reading
    assert "macro-F1 vs base" in reading and "base answers" not in reading
    assert "lora answers" not in reading  # 14 of 20 "yes": 70 %, under render.ONE_SIDED


def test_a_one_sided_models_reading_counts_the_gain_over_the_control(three, monkeypatch):
    """With a control, a one-sided model is read by its macro-F1 change over the control: a gain over the base that
    the control matches is not the medical data's (the report said "more than a move of the prior" for it)."""
    from medtune.report.records import PairedChange

    c = lambda lo, hi: PairedChange(value=(lo + hi) / 2, n=500, ci95=(lo, hi))  # noqa: E731
    assert "over the control says the medical data bought more" in render.one_sided_verdict(c(0.0, 0.1), c(0.01, 0.08))
    assert "not over the control" in render.one_sided_verdict(c(0.003, 0.087), c(-0.06, 0.019))
    assert "no measured gain" in render.one_sided_verdict(c(-0.01, 0.05), c(-0.06, 0.019))
    assert "more than a move of the prior" in render.one_sided_verdict(c(0.003, 0.087), None)
    assert "no measured gain" in render.one_sided_verdict(c(-0.01, 0.05), None)
    rep, _ = three
    monkeypatch.setattr(render, "ONE_SIDED", 0.6)  # lora says "yes" to 70 %
    reading = render.markdown(rep, []).split("## Reading one-sided answers", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in reading.splitlines() if x.startswith("lora answers"))
    assert "vs the control" in line and "over the control says the medical data bought more" in line


def test_validation_curves_are_in_the_report_with_their_worst_point(three, tmp_path):
    from medtune.report import plots

    rep, _ = three
    assert [p.step for p in rep.validation_curves["lora"]] == [0, 2, 4]
    path = plots.validation_curves(rep, tmp_path / "validation.png")
    assert path is not None and path.stat().st_size > 10_000
    assert plots.validation_curves(rep.model_copy(update={"validation_curves": {}}), tmp_path / "none.png") is None
    md = render.markdown(rep, ["validation.png"])
    assert "![validation curves during training](validation.png)" in md
    assert "| lora | PubMedQA | acc | 50.0 | 40.0 (2) | 60.0 (4) |" in md
    assert plots.changes(rep, tmp_path / "c.png", control=True) is not None


def test_the_training_table_names_the_step_select_on_kept(three):
    from medtune.train.records import SelectedStep

    rep, _ = three
    assert "model kept" not in render.markdown(rep, [])
    train = {**rep.train, "lora": rep.train["lora"].model_copy(update={"selected": 2})}
    md = render.markdown(rep.model_copy(update={"train": train}), [])
    assert "model kept (step, select_on)" in md and "| 2 |" in md and "| last |" in md
    assert SelectedStep(step=2, task="pubmedqa", metric="acc", value=0.6).step == 2


# --- the leakage guard ----------------------------------------------------------------------------------------

def test_the_validation_splits_training_scores_are_in_its_leakage_guard(tiny_llama, tmp_path):
    from medtune.train.config import TrainConfig

    val = {"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "trainval",
           "fold": {"share": 0.25, "take": "held_out", "stratify": "answer"}}
    cfg = TrainConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "out": str(tmp_path / "t"), "eval_every": 2,
        "eval_tasks": ["pubmedqa", "ppl_general"],
        "eval_sources": {"pubmedqa": val, "ppl_general": {"adapter": "text", "path": "general_demo.txt"}},
        "data": {"train": [{"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "trainval"}]}})
    guarded = cfg.guarded_data()
    assert [s.model_dump(mode="json") for s in guarded.eval] == [cfg.eval_sources["pubmedqa"].model_dump(mode="json")]
    assert cfg.data.eval == []  # the config itself is left as written
    again = cfg.model_copy(update={"data": guarded})
    assert len(again.guarded_data().eval) == 1  # once
    from medtune.data.leakage import LeakageError
    from medtune.demo import demo_data_dir
    from medtune.train import run as train_run

    cfg.data.data_root = str(demo_data_dir())
    with pytest.raises(LeakageError):  # the training items include the validation fold: refused before training
        train_run._data(cfg, tmp_path / "t", 0, lambda: None)


def test_a_study_with_a_control_trains_it_on_general_text_and_reports_against_it(tiny_llama, tmp_path, capsys):
    """End to end on the tiny model: the control's blocks hold general tokens only, as many as the medical
    variant's domain tokens; its row is the control's; the report and the printout compare with it."""
    from test_study import tiny_study

    from medtune.data.manifest import DataManifest
    from medtune.study.layout import StudyLayout
    from medtune.study.run import study

    out = tmp_path / "s"
    cfg = tiny_study(tiny_llama, out, variants=[{"name": "lora"}, {"name": "ctrl", "control": True}],
                     **{"averaging.methods": {}, "averaging.alphas": [0.0, 1.0], "train.max_steps": 2})
    study(cfg)
    layout = StudyLayout(out)
    lora, ctrl = (DataManifest.load(layout.manifest(v)) for v in ("lora", "ctrl"))
    domain = sum(n for s, n in lora.packing.source_tokens.items() if s != "general_demo")
    assert ctrl.packing.source_tokens.get("general_demo") == domain
    assert all(n == 0 for s, n in ctrl.packing.source_tokens.items() if s != "general_demo")
    data = json.loads((out / "report" / "report.json").read_text())
    assert data["control"] == "ctrl" and [r["kind"] for r in data["rows"] if r["label"] == "ctrl"] == ["control"]
    assert set(data["control_deltas"]) >= {"base", "lora"} and "pubmedqa" in data["classes"]["lora"]
    assert data["ship"]["candidates"][-1]["label"].startswith("lora") and len(data["ship"]["candidates"]) == 2
    assert (out / "report" / "changes_vs_control.png").is_file()
    assert "change vs the general-text control (ctrl)" in capsys.readouterr().out
