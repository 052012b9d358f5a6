"""Studies on the suite: groups, cloze and perplexity tasks scored, and selected on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.config import load_config
from medtune.data.adapters.mmlu import MULTIMEDQA_MMLU_SUBJECTS
from medtune.demo import demo_data_dir
from medtune.errors import ConfigError
from medtune.study.run import StudyRunConfig, study

from conftest import FEATURE_STUDY


def _mmlu_tree(root: Path) -> None:
    for split, n in (("test", 4), ("dev", 3)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(MULTIMEDQA_MMLU_SUBJECTS):
            rows = [f"{s} {split} question {k}?,w{k},x{k},y{k},z{k},{(i + k) % 4}" for k in range(n)]
            (root / split / f"{s}_{split}.csv").write_text(
                "question,choice0,choice1,choice2,choice3,answer\n" + "\n".join(rows) + "\n")


def suite_study(tiny_llama: Path, tmp: Path, **changes) -> StudyRunConfig:
    mmlu = tmp / "mmlu"
    _mmlu_tree(mmlu)
    demo = demo_data_dir()
    mm = lambda s, split: {"adapter": "mmlu", "path": str(mmlu / split), "split": split, "subjects": [s]}
    overrides = {
        "model.spec": str(tiny_llama), "out": str(tmp / "s"), "progress": False, "train.max_steps": 2,
        "train.save_every": 1, "variants": [{"name": "lora"}],
        "evaluation.tasks": ["pubmedqa", "medqa4", "medqa4_cloze", "mmlu_medical", "arc_easy", "ppl_general", "ppl_medical"],
        "evaluation.test_sources": {
            "pubmedqa": {"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "test"},
            "medqa4": {"adapter": "medqa", "path": "medqa_demo.jsonl"},
            "medqa4_cloze": {"adapter": "medqa", "path": "medqa_demo.jsonl"},
            "arc_easy": {"adapter": "arc", "path": "arc_demo.jsonl", "fold": {"share": 0.5, "take": "rest"}},
            "ppl_general": {"adapter": "text", "path": "general_demo.txt", "fold": {"share": 0.25, "take": "held_out"}},
            "ppl_medical": {"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "test"},
            **{f"mmlu_{s}": mm(s, "test") for s in MULTIMEDQA_MMLU_SUBJECTS},
        },
        "evaluation.validation_sources": {
            "arc_easy": {"adapter": "arc", "path": "arc_demo.jsonl", "fold": {"share": 0.5, "take": "held_out"}},
            "ppl_medical": {"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "trainval",
                            "fold": {"share": 0.25, "take": "held_out", "stratify": "answer"}},
            **{f"mmlu_{s}": mm(s, "dev") for s in MULTIMEDQA_MMLU_SUBJECTS},
        },
        "averaging.alphas": [0.0, 1.0],
        "averaging.medical_tasks": ["mmlu_medical", "ppl_medical"],
        "averaging.general_tasks": ["arc_easy"],
        **changes,
    }
    cfg = load_config(StudyRunConfig, FEATURE_STUDY, overrides)
    cfg.base_dir = str(demo)
    return cfg


def test_selection_on_a_group_needs_validation_sources_for_every_task(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"averaging.medical_tasks: task 'pubmedqa' has no entry in evaluation.validation_sources"):
        suite_study(tiny_llama, tmp_path, **{"averaging.medical_tasks": ["multimedqa"]})
    with pytest.raises(ConfigError, match=r"averaging.general_tasks: .*unknown task 'mmlu_med'.*Did you mean"):
        suite_study(tiny_llama, tmp_path, **{"averaging.general_tasks": ["mmlu_med"]})


def test_study_scores_groups_cloze_and_ppl_and_selects_on_them(tiny_llama, tmp_path):
    out = study(suite_study(tiny_llama, tmp_path))
    base = json.loads((out / "eval" / "base" / "results.json").read_text())
    assert set(base["tasks"]) == {"pubmedqa", "medqa4", "medqa4_cloze", "arc_easy", "ppl_general", "ppl_medical",
                                  *(f"mmlu_{s}" for s in MULTIMEDQA_MMLU_SUBJECTS)}
    mmlu = [json.loads(l) for l in (out / "eval" / "base" / "predictions.jsonl").read_text().splitlines()]
    mmlu = [float(p["pred"] == p["gold"]) for p in mmlu if p["task"].startswith("mmlu_")]
    assert base["groups"]["mmlu_medical"]["acc"]["value"] == pytest.approx(sum(mmlu) / len(mmlu))
    assert (out / "report" / "report.md").is_file()
    # selection: the medical score is the mean of the group's accuracy and 1 / medical perplexity on validation
    sweep = json.loads((out / "sweep" / "lora" / "results.json").read_text())
    for p in sweep["points"]:
        assert p["medical"] == pytest.approx((p["tasks"]["mmlu_medical"]["value"] + 1 / p["tasks"]["ppl_medical"]["value"]) / 2)
        assert p["tasks"]["ppl_medical"]["n"] > 0 and p["general"] == p["tasks"]["arc_easy"]["value"]
