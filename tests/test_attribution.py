"""What lets a study attribute its effects: validation curves while training (without changing the
training), PubMedQA's macro-F1 and per-class recall next to accuracy, and the power table that sizes
the test sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from medtune.evaluate import metrics

FIXTURES = Path(__file__).parent / "fixtures"

# ---------------------------------------------------------------- macro-F1 and per-class recall


def test_macro_f1_by_hand_with_a_class_never_predicted():
    """Macro-F1 is the mean of 2TP / (2TP + FP + FN) per class; a class never predicted has F1 0."""
    gold = [0, 0, 1, 1, 2, 2]  # yes yes no no maybe maybe
    pred = [0, 0, 0, 1, 1, 1]  # "maybe" never predicted
    per = metrics.f1_per_class(gold, pred, 3)
    # yes: TP 2, FP 1, FN 0 -> 4/5; no: TP 1, FP 2, FN 1 -> 2/5; maybe: TP 0, FP 0, FN 2 -> 0
    assert per == pytest.approx([0.8, 0.4, 0.0])
    assert metrics.macro_f1(gold, pred, 3) == pytest.approx((0.8 + 0.4 + 0.0) / 3)


def test_macro_f1_leaves_out_a_class_in_neither_gold_nor_predictions():
    """A class no item has and no prediction names has no F1 and is not averaged (sklearn's default labels)."""
    gold, pred = [0, 1, 1], [0, 1, 0]
    per = metrics.f1_per_class(gold, pred, 3)
    assert per[:2] == pytest.approx([2 / 3, 2 / 3]) and math.isnan(per[2])
    assert metrics.macro_f1(gold, pred, 3) == pytest.approx(2 / 3)
    assert metrics.macro_f1([0, 0, 1], [0, 0, 1], 3) == 1.0


def test_class_summary_gives_macro_f1_with_an_interval_and_recall_per_class():
    """Recall of a class is the accuracy on its gold items; macro-F1 carries a bootstrap interval around its value."""
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 3, 300))
    out = metrics.class_summary(gold.tolist(), pred.tolist(), ("yes", "no", "maybe"))
    f1 = out["macro_f1"]
    assert f1["value"] == pytest.approx(metrics.macro_f1(gold, pred, 3)) and f1["n"] == 300
    assert f1["ci95"][0] < f1["value"] < f1["ci95"][1] and f1["stderr"] > 0
    for c, name in enumerate(("yes", "no", "maybe")):
        rec = out["recall_by_class"][name]
        assert rec["value"] == pytest.approx(float(np.mean(pred[gold == c] == c))) and rec["n"] == int((gold == c).sum())
    assert out["f1_by_class"]["maybe"] == pytest.approx(metrics.f1_per_class(gold, pred, 3)[2])
    # no gold "maybe": its recall is undefined and left out, not NaN in the JSON
    some = metrics.class_summary([0, 1, 1], [0, 1, 2], ("yes", "no", "maybe"))
    assert set(some["recall_by_class"]) == {"yes", "no"}
    json.dumps(some, allow_nan=False)


def test_paired_macro_f1_change_is_tuned_minus_base_on_the_same_items():
    """The paired change is macro-F1(b) - macro-F1(a) with an interval from resampling items jointly."""
    gold = [0, 0, 1, 1, 2, 2] * 20
    a = [0, 0, 0, 0, 0, 0] * 20
    b = [0, 0, 1, 1, 2, 0] * 20
    out = metrics.paired_macro_f1_change(gold, a, b, 3)
    assert out["value"] == pytest.approx(metrics.macro_f1(gold, b, 3) - metrics.macro_f1(gold, a, 3))
    assert out["ci95"][0] > 0 and out["n"] == 120 and out["changed"] == 60
    same = metrics.paired_macro_f1_change(gold, a, a, 3)
    assert same["value"] == 0 and same["ci95"] == [0.0, 0.0]


def test_pubmedqa_results_gain_macro_f1_and_per_class_recall(tiny_llama, tmp_path):
    """results.json of a 3-class task (PubMedQA) adds macro-F1 and per-class recall; a letter task does not."""
    from medtune.evaluate.run import EvalConfig, evaluate

    cfg = EvalConfig.model_validate({"model": {"spec": str(tiny_llama)}, "tasks": "pubmedqa,medmcqa",
                                     "data_root": str(FIXTURES), "out": str(tmp_path / "ev"), "progress": False})
    evaluate(cfg)
    tasks = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    pub = [p for p in preds if p["task"] == "pubmedqa"]
    gold, pred = [p["gold"] for p in pub], [p["pred"] for p in pub]
    assert tasks["pubmedqa"]["macro_f1"]["value"] == pytest.approx(metrics.macro_f1(gold, pred, 3))
    assert tasks["pubmedqa"]["classes"] == ["yes", "no", "maybe"]
    assert set(tasks["pubmedqa"]["recall_by_class"]) <= {"yes", "no", "maybe"}
    assert "acc" in tasks["pubmedqa"] and "macro_f1" not in tasks["medmcqa"]


# ---------------------------------------------------------------- power


def test_power_formula_against_a_hand_computed_value():
    """n for a 5-point change at 20 % discordance is Connor's (1987) 626, computed here by hand."""
    from medtune.evaluate import power

    # z(0.975) = 1.959964, z(0.80) = 0.841621; psi = 0.2, delta = 0.05:
    # (1.959964 * sqrt(0.2) + 0.841621 * sqrt(0.2 - 0.0025))^2 / 0.0025
    #   = (0.876523 + 0.374021)^2 / 0.0025 = 1.563860 / 0.0025 = 625.5 -> 626
    hand = (1.959964 * math.sqrt(0.2) + 0.841621 * math.sqrt(0.2 - 0.05**2)) ** 2 / 0.05**2
    assert hand == pytest.approx(625.54, abs=0.01)
    assert power.n_needed(0.05, 0.2) == 626
    # and the minimal detectable change at that n is the change it was sized for
    assert power.detectable_change(625.544, 0.2) == pytest.approx(0.05, abs=1e-4)
    assert power.detectable_change(626, 0.2) < 0.05
    # a change larger than the discordance cannot happen: no n achieves it
    assert power.n_needed(0.25, 0.2) is None


def test_the_detectable_change_has_80_percent_power_under_mcnemar_by_simulation():
    """Simulated McNemar tests at the planned n reject at the detectable change about 80 % of the time."""
    from medtune.evaluate import power

    n, psi = 400, 0.25
    delta = power.detectable_change(n, psi)
    p01, p10 = (psi + delta) / 2, (psi - delta) / 2
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, [p01, p10, 1 - psi], size=20000)
    n01, n10 = counts[:, 0], counts[:, 1]
    z = (n01 - n10) / np.sqrt(np.maximum(n01 + n10, 1))
    assert np.mean(np.abs(z) > 1.959964) == pytest.approx(0.80, abs=0.02)


def test_discordance_from_paired_predictions():
    """p01 counts base wrong -> tuned right, p10 right -> wrong, over the items both scored."""
    from medtune.evaluate import power

    base = {("t", "1"): 0.0, ("t", "2"): 1.0, ("t", "3"): 1.0, ("t", "4"): 0.0, ("u", "1"): 1.0}
    tuned = {("t", "1"): 1.0, ("t", "2"): 0.0, ("t", "3"): 1.0, ("t", "4"): 1.0, ("t", "9"): 1.0}
    rates = power.discordance(base, tuned)
    assert rates["t"] == power.Discordance(n=4, p01=0.5, p10=0.25) and "u" not in rates
    assert rates["t"].total == 0.75 and rates["t"].change == 0.25


def _eval_dir(path: Path, rows: list[tuple[str, str, int, int]]) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"model": "m", "tasks": {}}))
    (path / "predictions.jsonl").write_text("\n".join(json.dumps({"task": t, "id": i, "gold": g, "pred": p})
                                                      for t, i, g, p in rows) + "\n")
    return path


def test_power_command_prints_the_table_from_two_evaluations(tmp_path, capsys):
    """`medtune power --base A --tuned B` reads both evaluations' items and prints n, discordance, detectable change, n needed."""
    from medtune.cli import main

    base = _eval_dir(tmp_path / "base", [("pubmedqa", str(i), 0, 0 if i < 60 else 1) for i in range(100)]
                     + [("arc_easy", str(i), 0, 0) for i in range(50)])
    tuned = _eval_dir(tmp_path / "tuned", [("pubmedqa", str(i), 0, 0 if i < 50 or i >= 90 else 1) for i in range(100)]
                      + [("arc_easy", str(i), 0, 0 if i % 5 else 1) for i in range(50)])
    main(["power", "--base", str(base), "--tuned", str(tuned / "results.json")])
    out = capsys.readouterr().out
    from medtune.evaluate import power

    # pubmedqa: base right on 0-59, tuned right on 0-49 and 90-99: p01 = 10/100, p10 = 10/100
    mde = 100 * power.detectable_change(100, 0.2)
    assert "pubmedqa" in out and f"{mde:.1f}" in out and str(power.n_needed(0.05, 0.2)) in out
    assert "arc_easy" in out and str(power.n_needed(0.04, 0.2)) in out  # general target: 4 points


def test_power_command_from_explicit_rates(capsys):
    """Explicit rates and a planned n give the same numbers as the functions."""
    from medtune.cli import main
    from medtune.evaluate import power

    main(["power", "--p01", "0.12", "--p10", "0.08", "--n", "500"])
    out = capsys.readouterr().out
    assert f"{100 * power.detectable_change(500, 0.2):.1f}" in out and str(power.n_needed(0.05, 0.2)) in out


def test_power_refuses_missing_or_conflicting_inputs():
    """Neither evaluations nor rates, or rates without an n, is a config error naming the fields."""
    from medtune.errors import ConfigError
    from medtune.evaluate.power import PowerConfig, power_table

    with pytest.raises(ConfigError, match="base and tuned"):
        power_table(PowerConfig())
    with pytest.raises(ConfigError, match="n"):
        power_table(PowerConfig(p01=0.1, p10=0.1))


# ---------------------------------------------------------------- validation curves


def _train_config(tiny_llama: Path, out: Path, **kw) -> dict:
    from test_train import config

    train = [{"adapter": "medmcqa", "path": "medmcqa/dev.json"},
             {"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval", "fold": {**FOLD, "take": "rest"}}]
    return config(tiny_llama, out, **{"max_steps": 5, "save_every": 0, "data.train": train, **kw})


FOLD = {"share": 0.5, "take": "held_out"}
"""The PubMedQA validation fold; training takes the rest (the validation split is in the leakage guard)."""
EVAL = {"eval_tasks": ["pubmedqa", "arc_easy", "ppl_general"], "eval_limit": 2,
        "eval_sources": {"pubmedqa": {"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval",
                                      "fold": FOLD},
                         "arc_easy": {"adapter": "arc", "path": "arc/ARC-Easy-Dev.jsonl"},
                         "ppl_general": {"adapter": "text", "path": "text/replay.txt"}}}


def test_validation_curves_are_recorded_without_changing_the_training(tiny_llama, tmp_path, capsys):
    """eval_every scores the validation subsets at steps 0, N, 2N, ... and the last, and the losses stay identical."""
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    plain = train(TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "plain")))
    curved = train(TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "curved", eval_every=2, **EVAL)))
    a = json.loads((plain / "curves.json").read_text())
    b = json.loads((curved / "curves.json").read_text())
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]  # same RNG stream, same weights
    assert a.get("validation", []) == []
    points = b["validation"]
    assert sorted({p["step"] for p in points}) == [0, 2, 4, 5]
    assert {(p["task"], p["metric"]) for p in points} == {("pubmedqa", "acc"), ("pubmedqa", "macro_f1"), ("arc_easy", "acc"),
                                                          ("arc_easy", "acc_norm"), ("ppl_general", "perplexity")}
    assert all(math.isfinite(p["value"]) and p["n"] >= 1 for p in points)
    assert all(p["n"] <= 2 for p in points if p["metric"] == "acc")  # eval_limit items per task
    assert "step 2 validation" in capsys.readouterr().err
    from safetensors.torch import load_file

    wa, wb = (load_file(str(d / "model/adapter_model.safetensors")) for d in (plain, curved))
    assert all(bool((wa[k] == wb[k]).all()) for k in wa)


@pytest.mark.parametrize("source, message", [
    ({"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "test"}, "test split"),
    ({"adapter": "pubmedqa", "path": "pubmedqa/test_set.json"}, "test split"),
    ({"adapter": "arc", "path": "arc/ARC-Challenge-Test.jsonl"}, "test file"),
    ({"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "all", "name": "x"}, None),
    ({"adapter": "pubmedqa", "path": "pubmedqa/test_set.json", "fold": {"share": 0.2, "take": "held_out"}}, None),
])
def test_training_refuses_to_validate_on_a_test_split(tiny_llama, tmp_path, source, message):
    """A validation source that reads a whole test split is refused at the config edge, naming the task; a fold
    carved out of a test file (the report then on its complement) and a non-test split are accepted."""
    from pydantic import ValidationError

    from medtune.train.config import TrainConfig

    cfg = _train_config(tiny_llama, tmp_path / "x", eval_every=2, eval_tasks=["pubmedqa"], eval_sources={"pubmedqa": source})
    if message is None:
        assert TrainConfig.model_validate(cfg).eval_sources["pubmedqa"].path == source["path"]
        return
    with pytest.raises(ValidationError, match=f"eval_sources.pubmedqa.*{message}"):
        TrainConfig.model_validate(cfg)


def test_training_needs_a_validation_source_for_each_task(tiny_llama, tmp_path):
    """A task named in eval_tasks without a validation source is refused (its registered source is its test split)."""
    from pydantic import ValidationError

    from medtune.train.config import TrainConfig

    with pytest.raises(ValidationError, match="eval_sources.*arc_easy"):
        TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "x", eval_every=2, eval_tasks=["arc_easy"]))
    with pytest.raises(ValidationError, match="eval_tasks"):
        TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "x", eval_every=2))


def test_validation_is_refused_under_sharded_training():
    """Under FSDP or DeepSpeed the scoring forward would need every rank in step: refused with the reason."""
    from medtune.train.validation import sharded_refusal

    assert sharded_refusal("FSDP") and "eval_every" in sharded_refusal("DEEPSPEED")
    assert sharded_refusal("MULTI_CPU") is None and sharded_refusal("NO") is None


def test_a_tasks_own_evaluated_split_counts_as_its_test_split():
    """MedMCQA's dev.json is the split `medtune eval` reports for it, so it is refused as validation, whole."""
    from medtune.data.spec import SourceConfig
    from medtune.evaluate.tasks import test_split_reason

    dev = SourceConfig(adapter="medmcqa", path="medmcqa/dev.json")
    assert "evaluated split" in test_split_reason("medmcqa", dev)
    assert test_split_reason("arc_easy", SourceConfig(adapter="arc", path="general/arc/ARC-Easy-Dev.jsonl")) is None


def test_select_on_needs_the_curves_and_names_a_scored_metric(tiny_llama, tmp_path):
    from medtune.train.config import TrainConfig

    def make(**kw):
        return TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "x", **kw))

    assert make(eval_every=2, select_on="ppl_general", **EVAL).selection == ("ppl_general", "perplexity")
    assert make(eval_every=2, select_on="pubmedqa:macro_f1", **EVAL).selection == ("pubmedqa", "macro_f1")
    for kw, message in (({"select_on": "arc_easy"}, "set eval_every"),
                        ({"eval_every": 2, "select_on": "medqa4", **EVAL}, "not one of eval_tasks"),
                        ({"eval_every": 2, "select_on": "arc_easy:f1", **EVAL}, "unknown metric")):
        with pytest.raises(ValidationError, match=message):
            make(**kw)


def test_select_on_keeps_the_best_validation_step_in_model_and_the_last_in_last(tiny_llama, tmp_path, monkeypatch):
    """With ARC-Easy scored best at step 2 (of 0, 2, 4, 5), model/ holds the weights the run had at step 2, last/
    the last step's (the same as a run without select_on), and curves.json names the step; the kept weights go."""
    from safetensors.torch import load_file

    from medtune.train import validation as V
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    real, kept = V.points, {}
    scores = {0: 0.1, 2: 0.9, 4: 0.5, 5: 0.9}  # step 5 equals step 2: the earlier is kept

    def scored(step, results):
        return [p.model_copy(update={"value": scores[step]}) if (p.task, p.metric) == ("arc_easy", "acc") else p
                for p in real(step, results)]

    real_finish = V.BestKeeper.finish

    def finish(self, model, last_step, save_last):
        kept.update(load_file(str(self.path(self.run.best["step"]))))
        return real_finish(self, model, last_step, save_last)

    monkeypatch.setattr(V, "points", scored)
    monkeypatch.setattr(V.BestKeeper, "finish", finish)
    out = train(TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "sel", eval_every=2, select_on="arc_easy",
                                                         **EVAL)))
    plain = train(TrainConfig.model_validate(_train_config(tiny_llama, tmp_path / "plain", eval_every=2, **EVAL)))
    curves = json.loads((out / "curves.json").read_text())
    assert curves["selected"] == {"step": 2, "task": "arc_easy", "metric": "acc", "value": 0.9}
    model, last, ref = (load_file(str(d / "adapter_model.safetensors")) for d in (out / "model", out / "last", plain / "model"))
    assert all(torch.equal(last[k], ref[k]) for k in ref)  # last/ is the run's last step
    by_name = {k.replace(".default", ""): v for k, v in kept.items()}
    assert set(model) == set(by_name) and all(torch.equal(model[k], by_name[k]) for k in model)
    assert not all(torch.equal(model[k], last[k]) for k in model)
    assert not (out / "best").exists()


def test_select_on_survives_a_resume(tiny_llama, tmp_path, monkeypatch):
    """Stopped right after the checkpoint of step 4 (its state: best at step 2) and resumed, the run keeps step 2's
    weights in model/, as the uninterrupted run does."""
    from safetensors.torch import load_file

    from medtune.train import checkpoint
    from medtune.train import validation as V
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    real_points, real_save = V.points, checkpoint.save
    scores = {0: 0.1, 2: 0.9, 4: 0.5, 5: 0.5}
    monkeypatch.setattr(V, "points", lambda step, results: [
        p.model_copy(update={"value": scores[step]}) if (p.task, p.metric) == ("arc_easy", "acc") else p
        for p in real_points(step, results)])
    cfg = lambda out, **kw: TrainConfig.model_validate(_train_config(  # noqa: E731
        tiny_llama, out, eval_every=2, select_on="arc_easy", **{**EVAL, "save_every": 2, **kw}))
    whole = train(cfg(tmp_path / "whole"))

    def stop_after_4(root, step, *a, **k):
        path = real_save(root, step, *a, **k)
        if step == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save", stop_after_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "cut"))
    assert (tmp_path / "cut" / "best" / "step-2.safetensors").is_file() and not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(checkpoint, "save", real_save)
    cut = train(cfg(tmp_path / "cut", resume=True))
    for d in (whole, cut):
        assert json.loads((d / "curves.json").read_text())["selected"]["step"] == 2
    a, b = (load_file(str(d / "model" / "adapter_model.safetensors")) for d in (whole, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
