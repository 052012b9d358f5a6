"""The study: end to end on a tiny model, resumable, re-running only what a changed setting touches."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medtune.config import load_config
from medtune.demo import demo_data_dir
from medtune.errors import ConfigError
from medtune.evaluate.records import Metric
from medtune.report.build import mean_with_ci
from medtune.study import run as study_run
from medtune.study.run import StudyRunConfig, study

from conftest import FEATURE_STUDY

REPO = Path(__file__).resolve().parents[1]


def tiny_study(tiny_llama: Path, out: Path, **changes) -> StudyRunConfig:
    """The feature test study (the demo sample, a replay variant, every averaging kind) on the tiny random model."""
    cfg = load_config(StudyRunConfig, FEATURE_STUDY,
                      {"model.spec": str(tiny_llama), "out": str(out), "progress": False, "train.max_steps": 4,
                       "train.save_every": 1, **changes})
    cfg.base_dir = str(demo_data_dir())
    return cfg


def executed(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = study_run._execute
    monkeypatch.setattr(study_run, "_execute", lambda step, *a, **k: calls.append(step.name) or real(step, *a, **k))
    return calls


@pytest.fixture(scope="module")
def done_study(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    study(tiny_study(tiny_llama, out))
    return out


def test_study_writes_a_report_whose_numbers_are_the_results_files(done_study):
    out = done_study
    rdir = out / "report"
    for name in ("report.md", "report.html", "report.json", "frontier.png", "curves.png"):
        assert (rdir / name).is_file() and (rdir / name).stat().st_size > 500, name
    data = json.loads((rdir / "report.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert labels[:3] == ["base", "lora", "lora-replay30"] or labels[:2] == ["base", "lora"]
    assert {r["kind"] for r in data["rows"]} == {"base", "tuned", "averaged"}
    assert sum(r["kind"] == "averaged" for r in data["rows"]) == 2  # one selected averaged model per variant
    md = (rdir / "report.md").read_text()
    html = (rdir / "report.html").read_text()
    for row in data["rows"]:
        results = json.loads((out / row["step"] / "results.json").read_text())["tasks"]
        for task, metric in row["tasks"].items():
            want = results[task].get("acc") or results[task]["perplexity"]
            assert metric == want, (row["label"], task)
        # the row in the Markdown table shows each task's value as printed from the results file
        line = next(l for l in md.splitlines() if l.startswith(f"| {row['label']}"))
        for task in ("pubmedqa", "medmcqa", "medqa4", "arc_easy"):
            assert f"{100 * results[task]['acc']['value']:.1f} [" in line, (row["label"], task, line)
        assert f"{results['ppl_general']['perplexity']['value']:.2f} [" in line
        assert row["label"] in html
    # the shipped model is one of the rows, chosen on validation scores
    ship = data["ship"]
    assert ship["row"] in labels and "★ shipped" in md
    sweep = json.loads((out / "sweep" / "lora" / "results.json").read_text())
    assert ship["candidates"][0]["label"] == "base"
    assert ship["candidates"][1]["medical"] == sweep["points"][sweep["selected"]]["medical"]
    assert 'src="data:image/png;base64,' in html and "<img" in html  # self-contained
    assert "medtune study" in md and "medtune train" in md  # commands to reproduce
    # the wall time of every finished step, read from its state file
    times = {t["step"]: t["seconds"] for t in data["steps"]}
    assert {"eval/base", "train/lora", "sweep/lora"} <= set(times) and "report" not in times
    assert times["train/lora"] == json.loads((out / "train" / "lora" / ".medtune-step.json").read_text())["seconds"]
    assert "## Run time" in md and "| all steps |" in md
    # paired change vs base: recomputed here from the two predictions files
    lora_row = next(r for r in data["rows"] if r["label"] == "lora")
    def correct(step):
        rows = [json.loads(l) for l in (out / step / "predictions.jsonl").read_text().splitlines()]
        return {r["id"]: float(r["pred"] == r["gold"]) for r in rows if r["task"] == "pubmedqa"}
    base_c, lora_c = correct("eval/base"), correct(lora_row["step"])
    d = data["deltas"]["lora"]["pubmedqa"]
    assert d["n"] == len(base_c) and d["changed"] == sum(base_c[k] != lora_c[k] for k in base_c)
    assert d["value"] == pytest.approx(sum(lora_c[k] - base_c[k] for k in base_c) / len(base_c))
    assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
    assert "## Change vs the base model, paired on the same items" in md
    # the realised data mix of each variant
    assert data["mix"]["lora"]["general_share_realised"] == 0.0
    assert abs(data["mix"]["lora-replay30"]["general_share_realised"] - 0.3) < 0.05


def test_rerun_runs_nothing_and_a_changed_setting_reruns_only_what_depends_on_it(done_study, tiny_llama, monkeypatch):
    calls = executed(monkeypatch)
    study(tiny_study(tiny_llama, done_study))
    assert calls == ["report"]  # only the report is written anew
    # A new alpha: the sweeps run again (reusing their scored points), then what follows them.
    study(tiny_study(tiny_llama, done_study, **{"averaging.alphas": [0.0, 0.25, 0.5, 1.0]}))
    assert not any(c.startswith(("train/", "eval/base", "eval/lora")) and not c.endswith("-averaged") for c in calls), calls
    assert "sweep/lora" in calls and "report" in calls
    sweep = json.loads((done_study / "sweep" / "lora" / "results.json").read_text())
    assert [p["params"]["alpha"] for p in sweep["points"] if p["method"] == "linear"] == [0.0, 0.5, 1.0, 0.25]


def test_report_only_writes_the_report_of_finished_steps_and_runs_nothing(done_study, tiny_llama, monkeypatch, capsys,
                                                                       tmp_path):
    calls = executed(monkeypatch)
    report = done_study / "report" / "report.json"
    report.unlink()
    study(tiny_study(tiny_llama, done_study, report_only=True))
    assert calls == [] and report.is_file()
    assert "report of" in capsys.readouterr().out
    # a study with a variant that has not run: the report has the finished rows, and nothing is started
    cfg = tiny_study(tiny_llama, done_study, report_only=True,
                     variants=[{"name": "lora"}, {"name": "later", "train": {"learning_rate": 0.01}}])
    study(cfg)
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert calls == [] and "the study is not complete" in text
    assert not (done_study / "train" / "later").exists()
    labels = [r["label"] for r in json.loads(report.read_text())["rows"]]
    assert "base" in labels and "lora" in labels and "later" not in labels
    with pytest.raises(ConfigError, match="has not run yet"):
        study(tiny_study(tiny_llama, tmp_path / "never", report_only=True))


def test_only_runs_the_named_variants_and_reports_them_with_the_base(done_study, tiny_llama, monkeypatch, capsys):
    calls = executed(monkeypatch)
    study(tiny_study(tiny_llama, done_study, only="lora-replay30"))
    # (an earlier test may have left its sweep stale) nothing of the other variant is run or reported
    assert calls[-1] == "parts/lora-replay30/report" and all("lora-replay30" in c for c in calls[:-1]), calls
    part_report = done_study / "parts" / "lora-replay30" / "report" / "report.json"  # each part its own report
    labels = [r["label"] for r in json.loads(part_report.read_text())["rows"]]
    assert "base" in labels and "lora-replay30" in labels and "lora" not in labels
    capsys.readouterr()
    study(tiny_study(tiny_llama, done_study, only="lora", dry_run=True))
    text = capsys.readouterr().out
    assert "train/lora " in text and "lora-replay30" not in text
    n_before = len(calls)
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) 'lora-x'.*variants are: lora, lora-replay30"):
        study(tiny_study(tiny_llama, done_study, only="lora,lora-x"))
    assert calls[-1] == "parts/lora-replay30/report" and len(calls) == n_before  # an unknown name runs nothing
    cut = study_run.restricted(tiny_study(tiny_llama, done_study, only="lora", **{"averaging.variants": ["lora-replay30"]}))
    assert [v.name for v in cut.variants] == ["lora"] and cut.averaging.variants == [] and cut.swept == []


def test_ppl_stride_reaches_the_eval_steps_and_is_left_out_when_unset(tiny_llama, tmp_path):
    from medtune.study import steps as S

    evals = lambda cfg: [s.config for s in S.static_plan(cfg, tmp_path / "s") if s.kind == "eval"]
    assert {e.ppl_stride for e in evals(tiny_study(tiny_llama, tmp_path / "s"))} == {512}  # the eval default
    cfg = tiny_study(tiny_llama, tmp_path / "s", **{"evaluation.ppl_stride": 1024})
    assert {e.ppl_stride for e in evals(cfg)} == {1024}
    # unset, the eval configs (and so the fingerprints of steps that already ran) are as before
    assert "ppl_stride" not in S.static_plan(tiny_study(tiny_llama, tmp_path / "s"), tmp_path / "s")[0].config.model_fields_set


def test_dry_run_lists_states(done_study, tiny_llama, capsys):
    cfg = tiny_study(tiny_llama, done_study, **{"train.learning_rate": 0.002})
    cfg.dry_run = True
    study(cfg)
    text = capsys.readouterr().out
    assert re.search(r"eval/base\s+│ done", text)
    assert re.search(r"train/lora\s+│ stale", text) and re.search(r"report\s+│ (stale|wait)", text)


# `medtune study` that signals itself right after training checkpoint 2 (Ctrl-C or SIGKILL), so
# the test does not race the fast tiny run.
KILLER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal, also where SIGINT came in ignored (a `cmd &` in a script)
from medtune.train import checkpoint
real = checkpoint.save
def save(root, step, *a, **k):
    path = real(root, step, *a, **k)
    if step == 2 and root.name == "lora":
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return path
checkpoint.save = save
from medtune.cli import main
main(["study", *sys.argv[2:]])
"""


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGKILL", -signal.SIGKILL)])
def test_interrupted_during_training_resumes_without_redoing_finished_steps(tiny_llama, tmp_path, sig, code):
    cfg = yaml.safe_load(FEATURE_STUDY.read_text())
    cfg["data"]["data_root"] = cfg["evaluation"]["data_root"] = str(demo_data_dir())
    cfg.update({"model": {"spec": str(tiny_llama)}, "out": str(tmp_path / "s"), "progress": False,
                "variants": [{"name": "lora"}], "averaging": {**cfg["averaging"], "alphas": [0.0, 1.0]}})
    cfg["train"].update({"max_steps": 4, "save_every": 1})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    killed = subprocess.run([sys.executable, "-c", KILLER, sig, str(path)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == code, killed.stderr[-2000:]
    if sig == "SIGINT":
        assert "interrupted during train/lora" in killed.stdout and "run the same command again" in killed.stdout
    base_state = json.loads((tmp_path / "s" / "eval" / "base" / ".medtune-step.json").read_text())
    assert base_state["state"] == "done"
    assert (tmp_path / "s" / "train" / "lora" / "checkpoints" / "checkpoint-2").is_dir()
    dry = subprocess.run([sys.executable, "-m", "medtune", "study", str(path), "--dry-run"], capture_output=True, text=True)
    assert re.search(r"train/lora\s+│ resume\s+│ from checkpoint-2", dry.stdout), dry.stdout
    again = subprocess.run([sys.executable, "-m", "medtune", "study", str(path)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "eval/base (done, skipped)" in again.stdout and "train/lora — resuming" in again.stdout
    assert json.loads((tmp_path / "s" / "eval" / "base" / ".medtune-step.json").read_text()) == base_state
    curves = json.loads((tmp_path / "s" / "train" / "lora" / "curves.json").read_text())
    assert [h["step"] for h in curves["history"]] == [1, 2, 3, 4]
    assert (tmp_path / "s" / "report" / "report.html").is_file()


def test_selection_must_use_validation_splits(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"averaging.medical_tasks: task 'medqa4' has no entry in evaluation.validation_sources"):
        tiny_study(tiny_llama, tmp_path, **{"averaging.medical_tasks": ["medqa4"]})


def test_bad_variant_settings_name_the_variant(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"variants.1.train.learning_rate"):
        load_config(StudyRunConfig, demo_data_dir() / "demo-study.yaml",
                    {"variants": [{"name": "a"}, {"name": "b", "train": {"learning_rate": -1}}]})


def test_mean_with_ci_by_hand():
    m = mean_with_ci([Metric(value=0.5, stderr=0.03, n=100), Metric(value=0.7, stderr=0.04, n=50)])
    assert m.value == pytest.approx(0.6) and m.stderr == pytest.approx(0.025) and m.n == 150
    assert m.ci95 == pytest.approx((0.6 - 1.96 * 0.025, 0.6 + 1.96 * 0.025))


def test_shipped_demo_study_files_are_the_same_study():
    packaged = yaml.safe_load((demo_data_dir() / "demo-study.yaml").read_text())
    checkout = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for cfg in (packaged, checkout):
        cfg["data"].pop("data_root")
        cfg["evaluation"].pop("data_root")
    assert packaged == checkout


def test_selected_averaged_models_are_merged_and_evaluated(tiny_llama, tmp_path, monkeypatch):
    """When a sweep selects an inner point, the study merges it (LoRA: rescaled adapter with HMA ratios;
    full: streamed weights) and reports its test scores."""
    from medtune.merge import selection

    def pick_half(points, *a, **k):  # stands in for the rule: the first α=0.5 point (HMA first when there is one)
        labels = [p.label for p in points]
        return next((i for i, l in enumerate(labels) if "α=0.5 HMA" in l),
                    next((i for i, l in enumerate(labels) if "α=0.5" in l), 0))

    monkeypatch.setattr(selection, "select", pick_half)
    cfg = tiny_study(tiny_llama, tmp_path / "s", **{
        "variants": [{"name": "lora"}, {"name": "full", "train": {"method": "full"}}],
        "averaging.alphas": [0.0, 0.5, 1.0], "averaging.hma_alphas": [0.5], "averaging.hma_blocks": 2,
        "averaging.hma_grid": [0.0, 0.5, 1.0], "averaging.test_best_of": ["uniform", "hma"]})
    out = study(cfg)
    lora_merge = json.loads((out / "merge" / "lora" / "merge_provenance.json").read_text())
    assert lora_merge["method"] == "hma" and lora_merge["params"]["ratios"] == [0.0, 1.0] and lora_merge["inputs"] == "lora"
    assert (out / "merge" / "lora" / "adapter_model.safetensors").is_file()
    full_merge = json.loads((out / "merge" / "full" / "merge_provenance.json").read_text())
    assert full_merge["method"] == "hma" and full_merge["params"]["alpha"] == 0.5 and full_merge["inputs"] == "full"
    assert (out / "merge" / "full" / "model.safetensors").is_file()
    data = json.loads((out / "report" / "report.json").read_text())
    averaged = {r["label"]: r for r in data["rows"] if r["kind"] == "averaged"}
    assert set(averaged) == {"lora · α=0.5 HMA [0.0, 1.0]", "full · α=0.5 HMA [0.0, 1.0]"}
    got = json.loads((out / "eval" / "full-averaged" / "results.json").read_text())
    assert averaged["full · α=0.5 HMA [0.0, 1.0]"]["tasks"]["pubmedqa"] == got["tasks"]["pubmedqa"]["acc"]
    assert got["model"] == str(out / "merge" / "full")  # scored the merged weights, not the base
    assert data["ship"]["row"] == "lora · α=0.5 HMA [0.0, 1.0]"
    # test_best_of: the best uniform point is merged and reported too; the best HMA point is the selected one
    uniform = json.loads((out / "merge" / "lora-uniform" / "merge_provenance.json").read_text())
    assert uniform["method"] == "linear" and uniform["params"]["alpha"] == 0.5
    assert not (out / "merge" / "lora-hma").exists() and not (out / "eval" / "lora-hma").exists()
    compared = {r["label"]: r for r in data["rows"] if r["kind"] == "compared"}
    assert set(compared) == {"lora · α=0.5", "full · α=0.5"}
    got = json.loads((out / "eval" / "lora-uniform" / "results.json").read_text())
    assert compared["lora · α=0.5"]["tasks"]["pubmedqa"] == got["tasks"]["pubmedqa"]["acc"]


def test_generation_can_score_a_smaller_split_than_log_likelihood(tiny_llama, tmp_path):
    """evaluation.generate_sources and chat_template change only the eval-gen steps; the leakage guard sees their splits."""
    from medtune.study.steps import guarded_data, static_plan

    gen_src = {"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "test", "limit": 3}
    cfg = tiny_study(tiny_llama, tmp_path / "s", **{"evaluation.generate": True, "evaluation.chat_template": ["medmcqa"],
                                                    "evaluation.generate_sources": {"pubmedqa": gen_src}})
    steps = {s.name: s for s in static_plan(cfg, tmp_path / "s")}
    gen = steps["eval-gen/base"].config.task_sources["pubmedqa"]
    assert gen.limit == 3 and gen.path.endswith("pubmedqa/demo_pqal.json")
    assert steps["eval/base"].config.task_sources["pubmedqa"].limit is None
    assert steps["eval-gen/base"].config.chat_template == ["medmcqa"] and not steps["eval/base"].config.chat_template
    with pytest.raises(ConfigError, match=r"chat_template: 'arc_challenge' is not one of the study's tasks"):
        tiny_study(tiny_llama, tmp_path / "u", **{"evaluation.chat_template": ["arc_challenge"]})
    assert any(s.limit == 3 for s in guarded_data(cfg).data.eval)
    with pytest.raises(ConfigError, match=r"generate_sources: unknown task 'pubmed'"):
        tiny_study(tiny_llama, tmp_path / "t", **{"evaluation.generate_sources": {"pubmed": gen_src}})


def test_generate_tasks_chooses_what_is_decoded_and_refuses_what_cannot_be(tiny_llama, tmp_path):
    from medtune.study import steps

    cfg = tiny_study(tiny_llama, tmp_path, **{"evaluation.generate": True})
    assert steps.generated_tasks(cfg) == ["pubmedqa", "medmcqa", "medqa4"]  # the medical lm-eval mc tasks
    cfg = tiny_study(tiny_llama, tmp_path, **{"evaluation.generate": True, "evaluation.generate_tasks": ["pubmedqa"]})
    assert steps.generated_tasks(cfg) == ["pubmedqa"]
    gen = [s for s in steps.static_plan(cfg, tmp_path) if s.name == "eval-gen/base"][0]
    assert gen.config.tasks == ["pubmedqa"]  # a list (was the comma string "pubmedqa")
    for bad in (["ppl_general"], ["medqa4_cloze"], ["mmlu_anatomy"]):  # perplexity, cloze, not a study task
        with pytest.raises(ConfigError, match="generate_tasks"):
            tiny_study(tiny_llama, tmp_path, **{"evaluation.generate": True, "evaluation.generate_tasks": bad})


def test_sweeps_score_perplexity_as_the_study_evaluates_it(tiny_llama, tmp_path, monkeypatch):
    """A sweep selecting on a perplexity task scores the same tokens as the study's evaluation (its
    ppl_max_tokens and stride), not the eval default's 50k."""
    from medtune.merge import sweep as sweep_mod
    from medtune.study import steps

    cfg = tiny_study(tiny_llama, tmp_path, **{"evaluation.ppl_max_tokens": 64, "evaluation.ppl_stride": 32})
    scfg = next(s for s in steps.static_plan(cfg, tmp_path) if s.name == "sweep/lora").config
    assert (scfg.ppl_max_tokens, scfg.ppl_stride) == (64, 32)
    seen = []
    monkeypatch.setattr("medtune.evaluate.run.score_model", lambda model, tok, ecfg: seen.append(ecfg) or ({}, []))
    class Avg:
        model = None
        def set(self, *a):
            pass
    try:
        sweep_mod._score(Avg(), None, scfg, "linear", {"alpha": 0.5})
    except Exception:
        pass  # the stub returns no scores; only the config it was given matters here
    assert seen and (seen[0].ppl_max_tokens, seen[0].ppl_stride) == (64, 32)
    # changing them re-scores the points (they are part of the points' key)
    assert sweep_mod._key(scfg, "b", "t") != sweep_mod._key(scfg.model_copy(update={"ppl_max_tokens": 128}), "b", "t")
