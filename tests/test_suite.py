"""The Open Medical-LLM Leaderboard suite: MMLU medical subjects, MedQA 5-option, task groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medtune.data.adapters.mmlu import MULTIMEDQA_MMLU_SUBJECTS
from medtune.errors import ConfigError
from medtune.evaluate import metrics
from medtune.evaluate.tasks import GROUPS, TASKS, expand

FIXTURES = Path(__file__).parent / "fixtures"
NINE = ["pubmedqa", "medmcqa", "medqa4", "mmlu_anatomy", "mmlu_clinical_knowledge", "mmlu_college_medicine",
        "mmlu_medical_genetics", "mmlu_professional_medicine", "mmlu_college_biology"]


def test_groups_expand_to_lm_eval_membership_in_order_each_task_once():
    assert expand(["multimedqa"]) == (NINE, ["multimedqa"])
    tasks, groups = expand(["medqa4", "mmlu_medical", "multimedqa", "ppl_general"])
    assert groups == ["mmlu_medical", "multimedqa"]
    assert tasks == ["medqa4", *[f"mmlu_{s}" for s in MULTIMEDQA_MMLU_SUBJECTS], "pubmedqa", "medmcqa", "ppl_general"]
    assert all(t in TASKS for g in GROUPS.values() for t in g.tasks)


def test_unknown_group_is_an_error_naming_tasks_and_groups():
    from medtune.config import validate
    from medtune.evaluate.run import EvalConfig

    with pytest.raises(ConfigError, match=r"unknown task 'multimed'.*groups: multimedqa, mmlu_medical.*Did you mean 'multimedqa'"):
        expand(["pubmedqa", "multimed"])
    with pytest.raises(ConfigError, match=r"tasks: .*unknown task 'mmlu_medicine'.*groups:"):
        validate(EvalConfig, {"tasks": "mmlu_medicine"}, "cli")
    cfg = validate(EvalConfig, {"tasks": "medqa5,mmlu_medical"}, "cli")
    assert cfg.task_names == ["medqa5", *[f"mmlu_{s}" for s in MULTIMEDQA_MMLU_SUBJECTS]] and cfg.group_names == ["mmlu_medical"]


def test_group_aggregation_by_hand():
    parts = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0]]
    sized = metrics.group_summary(parts, weight_by_size=True)
    assert sized["value"] == pytest.approx(3 / 6) and sized["n"] == 6
    # lm-eval pooled_sample_stderr: se1 = std([1,0,1,1], ddof=1)/2 = 0.25, se2 = 0;
    # var = ((4-1) * 0.25^2 * 4 + 0) / (6 - 2) = 0.1875; se = sqrt(0.1875 / 6)
    assert sized["stderr"] == pytest.approx(math.sqrt(0.1875 / 6))
    plain = metrics.group_summary(parts, weight_by_size=False)
    assert plain["value"] == pytest.approx((0.75 + 0.0) / 2)
    assert plain["stderr"] == pytest.approx(math.sqrt(0.25**2 + 0) / 2)  # lm-eval unweighted_mean_stderr
    assert sized["ci95"][0] <= sized["value"] <= sized["ci95"][1]
    # the second task is all wrong in every replicate: the unweighted interval is half the first task's
    assert plain["ci95"][1] <= 0.5
    with pytest.raises(ValueError, match="every task"):
        metrics.group_summary([[1.0], []], weight_by_size=True)


def _mmlu_tree(root: Path) -> None:
    """The six medical subjects in the re-formatted CSV layout of ../shared/data/general/mmlu (test + dev)."""
    for split, n in (("test", 3), ("dev", 2)):
        (root / "general" / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(MULTIMEDQA_MMLU_SUBJECTS):
            rows = [f"{s} question {k}?,w{k},x{k},y{k},z{k},{(i + k) % 4}" for k in range(n + (i % 2))]
            (root / "general" / "mmlu" / split / f"{s}_{split}.csv").write_text(
                "question,choice0,choice1,choice2,choice3,answer\n" + "\n".join(rows) + "\n")


def test_mmlu_subject_prompt_is_lm_evals_with_same_subject_dev_exemplars(tmp_path):
    from medtune.data.prompts import eval_prompt
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig

    _mmlu_tree(tmp_path)
    task = TASKS["mmlu_clinical_knowledge"]
    test = load_source(SourceConfig.model_validate(task.source), tmp_path, Rejects())
    dev = load_source(SourceConfig.model_validate(task.fewshot_source), tmp_path, Rejects())
    assert {r.meta["subject"] for r in test + dev} == {"clinical_knowledge"}
    p = eval_prompt(test[0], fewshot=dev[:1])
    # lm-eval 0.4.13 mmlu_clinical_knowledge.yaml description + _default_template_yaml doc_to_text
    assert p.context == ("The following are multiple choice questions (with answers) about clinical knowledge.\n\n"
                         "clinical_knowledge question 0?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer: B\n\n"
                         "clinical_knowledge question 0?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer:")
    assert p.continuations == (" A", " B", " C", " D") and p.gold == 1


def test_medqa5_scores_five_letters_in_lm_evals_medqa_prompt(shared_data):
    from medtune.data.prompts import eval_prompt
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig

    recs = load_source(SourceConfig.model_validate(TASKS["medqa5"].source), shared_data, Rejects())
    assert len(recs) == 1273 and {len(r.options) for r in recs} == {5}
    p = eval_prompt(recs[0])
    assert p.context.startswith("Question: A junior orthopaedic surgery resident")
    assert p.context.endswith("\nD. Report the physician to the ethics committee\nE. Refuse to dictate the operative report\nAnswer:")
    assert p.continuations == (" A", " B", " C", " D", " E") and p.gold == 2


def test_eval_multimedqa_scores_the_nine_and_prints_the_group_line(tiny_llama, tmp_path, capsys, monkeypatch):
    from medtune.evaluate.run import EvalConfig, evaluate

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table at the terminal width

    _mmlu_tree(tmp_path)
    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "multimedqa,mmlu_medical", "data_root": str(tmp_path),
        "out": str(tmp_path / "ev"), "progress": False,
        "task_sources": {
            "pubmedqa": {"adapter": "pubmedqa", "path": str(FIXTURES / "pubmedqa" / "test_set.json")},
            "medmcqa": {"adapter": "medmcqa", "path": str(FIXTURES / "medmcqa" / "dev.json")},
            "medqa4": {"adapter": "medqa", "path": str(FIXTURES / "medqa" / "4_options" / "phrases_no_exclude_test.jsonl")},
        },
    })
    evaluate(cfg)
    shown = capsys.readouterr().out
    on_disk = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert list(on_disk["tasks"]) == NINE
    preds = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    right = [float(p["pred"] == p["gold"]) for p in preds]
    group = on_disk["groups"]["multimedqa"]
    assert group["acc"]["n"] == len(preds) and group["acc"]["value"] == pytest.approx(sum(right) / len(right))
    mmlu = [float(p["pred"] == p["gold"]) for p in preds if p["task"].startswith("mmlu_")]
    assert on_disk["groups"]["mmlu_medical"]["acc"]["value"] == pytest.approx(sum(mmlu) / len(mmlu))
    assert "multimedqa (group)" in shown and "9 tasks, size-weighted" in shown and "mmlu_medical (group)" in shown
