"""The averaging sweep: every point saved, nothing scored twice, Pareto marks, selection, frontier plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medtune.merge import sweep as sweep_mod
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
    points = report["points"]
    assert [p["label"] for p in points] == ["α=0", "α=0.5", "α=1", "α=0.5 HMA [0.0, 1.0]", "α=0.5 HMA [1.0, 0.0]"]
    assert all(0 <= p["medical"] <= 1 and 0 <= p["general"] <= 1 for p in points)
    assert any(p["pareto"] for p in points)
    on_disk = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert on_disk["selected"] == report["selected"] and (tmp_path / "sweep" / "frontier.png").stat().st_size > 10_000
    # The selection follows the documented rule on the saved numbers.
    base_general = points[0]["general"]
    ok = [i for i, p in enumerate(points) if p["general"] >= 0.98 * base_general]
    assert report["selected"] == max(ok, key=lambda i: (points[i]["medical"], -i))

    # A second run scores nothing again; a new alpha is scored alone.
    calls = []
    real = sweep_mod._score
    monkeypatch.setattr(sweep_mod, "_score", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    sweep(cfg)
    assert calls == []
    sweep(cfg.model_copy(update={"alphas": [0.0, 0.25, 0.5, 1.0]}))
    assert calls == [0.25]


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
    by_alpha = {p["alpha"]: p for p in report["points"]}
    assert by_alpha[0.0]["medical"] == base["tasks"]["pubmedqa"]["acc"]["value"]
    assert by_alpha[1.0]["general"] == tuned["tasks"]["medmcqa"]["acc"]["value"]
