"""`medtune demo` runs the packaged demo study end to end (here on a tiny model)."""

from __future__ import annotations

import json

from medtune.config import ModelConfig
from medtune.data.registry import load_source
from medtune.data.rejects import Rejects
from medtune.demo import DemoConfig, demo_data_dir, run_demo
from medtune.study.config import StudyConfig
from medtune.config import load_config


def test_demo_study_runs_and_keeps_scored_items_out_of_training(tiny_llama, tmp_path):
    out = run_demo(DemoConfig(out=str(tmp_path / "demo"), model=ModelConfig(spec=str(tiny_llama))))
    assert (out / "report" / "report.html").is_file()
    manifest = json.loads((out / "train" / "lora" / "data" / "manifest.json").read_text())
    train = {s["name"]: s["items"] for s in manifest["sources"] if s["role"] == "train"}
    # Every test and validation split is in the leakage guard, and the folds keep them disjoint from training.
    guarded = [s for s in manifest["sources"] if s["role"] == "eval"]
    assert len(guarded) == 6 and manifest["leakage"]["dropped_items"] == 0
    study = load_config(StudyConfig, demo_data_dir() / "demo-study.yaml")
    val = load_source(study.evaluation.validation_sources["pubmedqa"], demo_data_dir(), Rejects())
    assert train["pubmedqa_demo_train"] + len(val) == 40  # the 40 non-test PMIDs: trained on or validating
    assert train["medmcqa_demo_train"] == 30  # half of the 60; the other half is reported
    replay = json.loads((out / "train" / "lora-replay30" / "data" / "manifest.json").read_text())
    assert abs(replay["packing"]["general_share"] - 0.3) <= 0.01
