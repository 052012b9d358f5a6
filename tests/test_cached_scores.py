"""Cached scores belong to the weights they scored; reports show what is current.

A sweep reuses a scored point only for the same base and tuned weights (the tuned model's content
hash, recorded by training); ``--report-only`` names the steps whose settings changed since they ran
and leaves them out of the report; each ``--only`` part keeps its own report and saved config."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from medtune.merge import sweep as sweep_mod
from medtune.merge.records import SweepResult
from medtune.merge.sweep import SweepConfig, sweep
from medtune.study.run import study

from conftest import make_random_adapter, make_tiny_llama
from test_study import tiny_study

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = {"averaging.alphas": [0.0, 1.0], "averaging.methods": {}, "evaluation.tasks": ["pubmedqa", "arc_easy"]}
"""The feature study cut to what these tests need: two tasks, the endpoints of the sweep only (about 9 s)."""


def small_study(tiny_llama: Path, out: Path, **changes):
    return tiny_study(tiny_llama, out, **{**SMALL, **changes})


def scored(monkeypatch) -> list[dict]:
    """The params of every point the sweep scores (not read from its cache) from now on."""
    calls: list[dict] = []
    real = sweep_mod._score
    monkeypatch.setattr(sweep_mod, "_score", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    return calls


def sweep_config(base: Path, tuned: Path, out: Path) -> SweepConfig:
    return SweepConfig.model_validate({
        "base": {"spec": str(base)}, "tuned": str(tuned), "alphas": [0.0, 1.0], "medical_tasks": "pubmedqa",
        "general_tasks": "medmcqa", "data_root": str(FIXTURES), "limit": 8, "out": str(out), "progress": False})


def replace_dir(src: Path, dst: Path) -> None:
    shutil.rmtree(dst)
    shutil.copytree(src, dst)


@pytest.mark.parametrize("kind", ["adapter", "full"])
def test_a_sweep_scores_again_when_the_tuned_model_at_the_same_path_is_replaced(tiny_llama, tmp_path, monkeypatch,
                                                                                 capsys, kind):
    """A sweep's cached points are reused for the same tuned weights only: replaced weights at the same path are scored anew."""
    if kind == "adapter":
        first, second = (make_random_adapter(tiny_llama, tmp_path / f"a{s}", seed=s, std=0.5) for s in (1, 2))
    else:
        first, second = (make_tiny_llama(tmp_path / f"m{s}", seed=s) for s in (1, 2))
    tuned = tmp_path / "tuned"
    shutil.copytree(first, tuned)
    cfg = sweep_config(tiny_llama, tuned, tmp_path / "sweep")
    sweep(cfg)
    calls = scored(monkeypatch)
    sweep(cfg)
    assert calls == []  # the same weights: nothing scored again
    capsys.readouterr()
    replace_dir(second, tuned)
    again = sweep(cfg)
    assert {a["alpha"] for a in calls} == {0.0, 1.0}
    assert "the tuned model changed since these points were scored" in " ".join(capsys.readouterr().out.split())
    fresh = sweep(cfg.model_copy(update={"out": str(tmp_path / "fresh")}))
    assert [(p.label, p.medical, p.general) for p in again.points] == [(p.label, p.medical, p.general) for p in fresh.points]


def test_a_sweep_scores_again_when_the_base_model_at_the_same_path_is_replaced(tiny_llama, tmp_path, monkeypatch, capsys):
    """A sweep's cached points are not reused after the base model's files are rewritten with other weights."""
    base = make_tiny_llama(tmp_path / "base", seed=0)
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.5)
    cfg = sweep_config(base, adapter, tmp_path / "sweep")
    sweep(cfg)
    calls = scored(monkeypatch)
    make_tiny_llama(tmp_path / "base", seed=5)
    sweep(cfg)
    assert {a["alpha"] for a in calls} == {0.0, 1.0}
    assert "the base model changed since these points were scored" in " ".join(capsys.readouterr().out.split())


def test_a_sweep_scored_in_fp32_is_scored_again_in_bf16(tiny_llama, tmp_path, monkeypatch, capsys):
    """Scores depend on the dtype (bf16 moves some items' log-likelihoods across a choice): a sweep run again in
    another dtype scores its points again and says why; fp32 keeps the key sweeps had before the dtype was in it."""
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.5)
    cfg = sweep_config(tiny_llama, adapter, tmp_path / "sweep")
    first = sweep(cfg)
    assert {p.dtype for p in first.points} == {"float32"}
    assert sweep_mod._key(cfg, "b", "t") == sweep_mod._key(cfg, "b", "t", "float32") != sweep_mod._key(cfg, "b", "t",
                                                                                                       "bfloat16")
    calls = scored(monkeypatch)
    capsys.readouterr()
    bf16 = cfg.model_copy(update={"base": cfg.base.model_copy(update={"dtype": "bfloat16"})})
    again = sweep(bf16)
    assert {a["alpha"] for a in calls} == {0.0, 1.0} and {p.dtype for p in again.points} == {"bfloat16"}
    assert "scored in float32 and this sweep scores in bfloat16" in " ".join(capsys.readouterr().out.split())
    calls.clear()
    sweep(bf16)
    assert calls == []  # the same dtype again: reused


def test_training_records_the_content_hash_of_the_model_it_wrote(tiny_llama, tmp_path):
    """The model directory training writes records the sha256 of each weight file, which the sweep reads instead of hashing."""
    from medtune import weights_hash
    from medtune.train.artifacts import save_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    save_model(tmp_path / "model", LlamaForCausalLM.from_pretrained(str(tiny_llama)), AutoTokenizer.from_pretrained(str(tiny_llama)))
    record = json.loads((tmp_path / "model" / weights_hash.RECORD).read_text())
    data = (tmp_path / "model" / "model.safetensors").read_bytes()
    assert record["files"]["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert weights_hash.identity(tmp_path / "model") == record["sha256"]
    # a weight file replaced by hand no longer matches its record: it is hashed again
    other = make_tiny_llama(tmp_path / "other", seed=3)
    shutil.copy(other / "model.safetensors", tmp_path / "model" / "model.safetensors")
    assert weights_hash.identity(tmp_path / "model") != record["sha256"]


def test_a_retrained_variant_is_swept_again_instead_of_reusing_the_old_models_points(tiny_llama, tmp_path, monkeypatch,
                                                                                    capsys):
    """After a variant is retrained with another setting, its sweep scores the new model rather than reusing the old points."""
    out = tmp_path / "s"
    one = [{"name": "lora"}]
    study(small_study(tiny_llama, out, variants=one))
    calls = scored(monkeypatch)
    capsys.readouterr()
    study(small_study(tiny_llama, out, variants=one, only="lora", **{"train.learning_rate": 0.02}))
    assert {a["alpha"] for a in calls} == {0.0, 1.0}
    assert "the tuned model changed since these points were scored" in " ".join(capsys.readouterr().out.split())
    from medtune import weights_hash

    res = SweepResult.load(out / "sweep" / "lora" / "results.json")
    assert res is not None and res.tuned_identity == weights_hash.identity(out / "train" / "lora" / "model")


def test_report_only_names_stale_steps_and_leaves_them_out_of_the_report(tiny_llama, tmp_path, capsys):
    """After a setting changes, --report-only names the stale steps, and the report leaves them out and says so."""
    out = tmp_path / "s"
    study(small_study(tiny_llama, out))
    capsys.readouterr()
    edited = [{"name": "lora"}, {"name": "lora-replay30", "general_share": 0.5}]  # was 0.3
    study(small_study(tiny_llama, out, variants=edited, report_only=True))
    text = " ".join(capsys.readouterr().out.split())
    assert "3 stale" in text, text
    for step in ("train/lora-replay30", "eval/lora-replay30", "sweep/lora-replay30"):
        assert step in text
    data = json.loads((out / "report" / "report.json").read_text())
    assert [r["label"] for r in data["rows"] if r.get("variant") == "lora-replay30"] == []
    assert "lora" in [r["label"] for r in data["rows"]]  # current steps are still reported
    assert "lora-replay30" not in data["sweeps"] and "lora-replay30" not in data["train"]
    assert data["stale"] == ["train/lora-replay30", "eval/lora-replay30", "sweep/lora-replay30"]
    md = (out / "report" / "report.md").read_text()
    assert "stale" in md and "sweep/lora-replay30" in md


def test_each_only_part_keeps_its_own_report_and_saved_config(tiny_llama, tmp_path):
    """Two --only parts of one study leave two reports and two saved study configs, each with its own variants."""
    out = tmp_path / "s"
    study(small_study(tiny_llama, out, only="lora"))
    study(small_study(tiny_llama, out, only="lora-replay30"))
    for part, other in (("lora", "lora-replay30"), ("lora-replay30", "lora")):
        data = json.loads((out / "parts" / part / "report" / "report.json").read_text())
        variants = {r.get("variant") for r in data["rows"]} - {None}
        assert variants == {part}, (part, variants)
        saved = yaml.safe_load((out / "parts" / part / "study.yaml").read_text())
        assert [v["name"] for v in saved["variants"]] == [part]
        md = (out / "parts" / part / "report" / "report.md").read_text()
        assert f"--only {part}" in md  # the part's own command to reproduce it
    assert not (out / "report" / "report.json").exists() and not (out / "study.yaml").exists()
