"""The averaging sweep: every point saved, nothing scored twice, Pareto marks, selection, frontier plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medtune.merge import sweep as sweep_mod
from medtune.merge.records import SweepResult
from medtune.merge.sweep import SweepConfig, hma_candidates, sweep

from conftest import make_random_adapter

FIXTURES = Path(__file__).parent / "fixtures"


def test_hma_candidates_average_to_alpha():
    cands = hma_candidates(0.5, [0.0, 0.25, 0.5, 0.75, 1.0], 3)
    assert cands and all(abs(sum(c) / 3 - 0.5) < 1e-9 for c in cands)
    assert [0.5, 0.5, 0.5] not in cands and [0.0, 0.5, 1.0] in cands


@pytest.fixture()
def adapter(tiny_llama, tmp_path):
    return make_random_adapter(tiny_llama, tmp_path / "adapter", seed=2, std=0.5)


def test_sweep_points_reuse_and_selection(tiny_llama, adapter, tmp_path, monkeypatch):
    cfg = SweepConfig.model_validate({
        "base": {"spec": str(tiny_llama)}, "tuned": str(adapter), "alphas": [0.0, 0.5, 1.0], "hma_alphas": [0.5],
        "hma_blocks": 2, "hma_grid": [0.0, 0.5, 1.0], "medical_tasks": "pubmedqa,medmcqa", "general_tasks": "arc_challenge",
        "task_sources": {"arc_challenge": {"adapter": "arc", "path": "arc/ARC-Challenge-Test.jsonl"}},
        "data_root": str(FIXTURES), "limit": None, "out": str(tmp_path / "sweep"), "progress": False,
    })
    report = sweep(cfg)
    points = report.points
    assert [p.label for p in points] == ["α=0", "α=0.5", "α=1", "α=0.5 HMA [0.0, 1.0]", "α=0.5 HMA [1.0, 0.0]"]
    assert all(0 <= p.medical <= 1 and 0 <= p.general <= 1 for p in points)
    assert any(p.pareto for p in points)
    on_disk = SweepResult.load(tmp_path / "sweep" / "results.json")
    assert on_disk == report and (tmp_path / "sweep" / "frontier.png").stat().st_size > 10_000
    # The selection follows the documented rule on the saved numbers.
    base_general = points[0].general
    ok = [i for i, p in enumerate(points) if p.general >= 0.98 * base_general]
    assert report.selected == max(ok, key=lambda i: (points[i].medical, points[i].general, -i))

    # A second run scores nothing again; a new alpha is scored alone.
    calls = []
    real = sweep_mod._score
    monkeypatch.setattr(sweep_mod, "_score", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    sweep(cfg)
    assert calls == []
    sweep(cfg.model_copy(update={"alphas": [0.0, 0.25, 0.5, 1.0]}))
    assert calls == [{"alpha": 0.25}]


def test_sweep_base_point_equals_the_base_model(tiny_llama, adapter, tmp_path):
    """alpha = 0 scores exactly like the base model, alpha = 1 like base + adapter."""
    from medtune.evaluate.run import EvalConfig, evaluate

    common = {"tasks": "pubmedqa,medmcqa", "data_root": str(FIXTURES), "progress": False}
    base = evaluate(EvalConfig.model_validate({**common, "model": {"spec": str(tiny_llama)}, "out": str(tmp_path / "b")}))
    tuned = evaluate(EvalConfig.model_validate({**common, "model": {"spec": str(tiny_llama)}, "adapter": str(adapter),
                                                "out": str(tmp_path / "t")}))
    report = sweep(SweepConfig.model_validate({
        "base": {"spec": str(tiny_llama)}, "tuned": str(adapter), "alphas": [0.0, 1.0], "medical_tasks": "pubmedqa",
        "general_tasks": "medmcqa", "data_root": str(FIXTURES), "limit": None, "out": str(tmp_path / "s"), "progress": False}))
    by_alpha = {p.alpha: p for p in report.points}
    assert by_alpha[0.0].medical == base["tasks"]["pubmedqa"]["acc"]["value"]
    assert by_alpha[1.0].general == tuned["tasks"]["medmcqa"]["acc"]["value"]


def test_sweep_over_method_grids_scores_what_medtune_merge_writes(tiny_llama, adapter, tmp_path):
    """Points of TIES / SLERP grids on a LoRA adapter are labelled by method and parameters, marked and
    selectable, and each scores exactly like the model `medtune merge` writes for it."""
    from medtune.evaluate.run import EvalConfig, evaluate
    from medtune.merge.run import MergeConfig, merge

    common = {"medical_tasks": "pubmedqa", "general_tasks": "medmcqa", "data_root": str(FIXTURES), "limit": None,
              "progress": False}
    cfg = SweepConfig.model_validate({
        "base": {"spec": str(tiny_llama)}, "tuned": str(adapter), "alphas": [0.0, 1.0], **common,
        "methods": {"ties": {"density": [0.3, 0.7]}, "slerp": {"alpha": [0.5]}}, "out": str(tmp_path / "s")})
    report = sweep(cfg)
    labels = [p.label for p in report.points]
    assert labels == ["α=0", "α=1", "ties density=0.3 weight=1", "ties density=0.7 weight=1", "slerp alpha=0.5"]
    assert report.selected is not None and any(p.pareto for p in report.points)
    ties = report.find("ties", {"density": 0.3, "weight": 1.0})
    merged = merge(MergeConfig(base={"spec": str(tiny_llama)}, tuned=[str(adapter)], method="ties",
                               params={"density": 0.3}, out=str(tmp_path / "m")))
    got = evaluate(EvalConfig.model_validate({"tasks": "pubmedqa,medmcqa", "data_root": str(FIXTURES), "progress": False,
                                              "model": {"spec": str(merged)}, "out": str(tmp_path / "e")}))
    assert ties.medical == got["tasks"]["pubmedqa"]["acc"]["value"]
    assert ties.general == got["tasks"]["medmcqa"]["acc"]["value"]
    with pytest.raises(Exception, match="unknown parameter 'alpha'"):
        SweepConfig.model_validate({**common, "tuned": "x", "methods": {"ties": {"alpha": [0.5]}}})


def test_averager_restores_the_base_after_a_non_exact_point(tiny_llama, adapter):
    from medtune import models
    from medtune.merge.sources import Averager

    peft = models.load_with_adapter(models.load_model(str(tiny_llama)), adapter)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        tuned = peft(ids).logits.clone()
        avg = Averager(peft, 2)
        avg.set("ties", {"density": 0.3, "weight": 1.0})
        ties = peft(ids).logits.clone()
        avg.set("linear", {"alpha": 1.0})
        again = peft(ids).logits
        avg.set("linear", {"alpha": 0.0})
        base = peft(ids).logits
    assert not torch.allclose(ties, tuned) and torch.equal(again, tuned)
    assert torch.allclose(base, models.load_model(str(tiny_llama))(ids).logits, atol=1e-6)


def test_results_saved_before_method_names_still_load_typed(tmp_path):
    """A sweep's results.json from before the method table (alpha / ratios only) loads as linear / hma
    points, so a study's finished sweeps are reused, not scored again."""
    old = {"key": "k", "selected": 1, "base_general": 0.5, "rule": {"rule": "retain", "retain": 0.98},
           "points": [{"alpha": 0.0, "ratios": None, "label": "α=0", "medical": 0.4, "general": 0.5, "key": "k"},
                      {"alpha": 0.5, "ratios": [0.0, 1.0], "label": "α=0.5 HMA [0.0, 1.0]", "medical": 0.6,
                       "general": 0.5, "key": "k"}]}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = SweepResult.load(tmp_path / "results.json")
    assert [(p.method, p.params) for p in res.points] == [("linear", {"alpha": 0.0}),
                                                         ("hma", {"alpha": 0.5, "ratios": [0.0, 1.0]})]
    assert res.selected_point.label == "α=0.5 HMA [0.0, 1.0]" and res.best("hma") is res.points[1]
    assert res.points[0].is_endpoint() == 0.0 and res.best("uniform") is None
