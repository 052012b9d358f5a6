"""`medtune demo` runs the packaged demo study end to end (here on a tiny model), and its sample is
the one its generator writes."""

from __future__ import annotations

import importlib.util
import json

from medtune.config import ModelConfig, load_config
from medtune.data.registry import load_source
from medtune.data.rejects import Rejects
from medtune.demo import DemoConfig, demo_data_dir, run_demo
from medtune.study.config import StudyConfig


def test_demo_study_runs_and_keeps_scored_items_out_of_training(tiny_llama, tmp_path, capsys):
    out = run_demo(DemoConfig(out=str(tmp_path / "demo"), model=ModelConfig(spec=str(tiny_llama))))
    assert (out / "report" / "report.html").is_file()
    manifest = json.loads((out / "train" / "lora" / "data" / "manifest.json").read_text())
    train = {s["name"]: s["items"] for s in manifest["sources"] if s["role"] == "train"}
    # Every test and validation split is in the leakage guard, and the folds keep them disjoint from training.
    assert manifest["leakage"]["dropped_items"] == 0
    study = load_config(StudyConfig, demo_data_dir() / "demo-study.yaml")
    val = load_source(study.evaluation.validation_sources["pubmedqa"], demo_data_dir(), Rejects())
    test = load_source(study.evaluation.test_sources["pubmedqa"], demo_data_dir(), Rejects())
    assert train["trials_train"] + len(val) == 200 and len(test) == 100  # the 200 non-test trials: trained on or validating
    assert set(train) == {"trials_train"}
    printed = capsys.readouterr().out
    # the end of the run says, per model and in-domain task, the paired change and whether it clears its interval
    assert "change vs the base model, paired on the same test items" in printed
    assert "averaging trade-off on validation" in printed
    assert any(v in printed for v in ("inside its interval", "measured gain", "measured loss"))


def test_trials_sample_is_what_its_generator_writes():
    """The committed files are reproducible from make_trials.py, and no question repeats (the leakage
    guard would treat equal questions in train and test as one item)."""
    here = demo_data_dir() / "trials"
    spec = importlib.util.spec_from_file_location("make_trials", here / "make_trials.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    items, test = gen.build()
    assert json.loads((here / "trials_pqal.json").read_text()) == items
    assert json.loads((here / "test_ground_truth.json").read_text()) == test
    assert len({v["QUESTION"] for v in items.values()}) == len(items) == 300 and len(test) == 100
    labels = [v["final_decision"] for v in items.values()]
    assert {"yes", "no", "maybe"} == set(labels) and labels.count("yes") > labels.count("no") > labels.count("maybe")
