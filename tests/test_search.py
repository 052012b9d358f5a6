"""The averaging search (medtune.merge.search): synthetic objectives, no model."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from medtune.config import StrictModel  # noqa: F401  (the config edge the search config uses)
from medtune.errors import MedtuneError
from medtune.merge import search as S
from medtune.merge.selection import SelectionRule

N = 120
ORDER_POOL = {"med": [(f"m{i}", "yes" if i % 3 else "no") for i in range(N)],
              "gen": [(f"g{i}", "A" if i % 2 else "B") for i in range(N)]}
OBJECTIVE = S.Objective(medical=(S.Term("med", ("med",)),), general=(S.Term("gen", ("gen",)),))


def _difficulty(item: S.Item) -> float:
    """A fixed per-item offset, the same for every point (how hard the item is), mean about 0."""
    return random.Random(f"{item[0]}:{item[1]}").uniform(-0.05, 0.05)


def hma_truth(params: dict) -> tuple[float, float]:
    """A known constrained optimum: medical 0.3 + 0.2 r0 + 0.2 r1 + 0.3 r2, general 1 - 0.025 (r0 + r1) - 0.3 r2;
    with general >= 0.9 x base (base: all ratios 0, general 1) the optimum is r0 = r1 = 1, r2 = 1/6: medical 0.75."""
    r = params.get("ratios") or [params["alpha"]] * 3
    return 0.3 + 0.2 * r[0] + 0.2 * r[1] + 0.3 * r[2], 1.0 - 0.025 * (r[0] + r[1]) - 0.3 * r[2]


def scorer(truth, calls: list | None = None):
    def score(cand: S.Candidate, items):
        med, gen = truth(cand.params)
        if calls is not None:
            calls.extend((cand.key, i) for i in items)
        return [S.ItemScore((med if t == "med" else gen) + _difficulty((t, i))) for t, i in items]
    return score


def run(cfg: S.SearchConfig, truth=hma_truth, calls: list | None = None, cache: S.ScoreCache | None = None,
        retain: float = 0.9, first=()):
    order = S.stratified_order(ORDER_POOL, cfg.seed)
    cache = cache or S.ScoreCache(scorer(truth, calls))
    return S.search(cfg, order, OBJECTIVE, cache, retain, first=first), cache


def test_tpe_finds_the_known_constrained_optimum_within_the_budget():
    """On a synthetic objective, constrained TPE's selected point is within 0.02 of the constrained optimum (0.75), feasible, and the budget holds."""
    cfg = S.SearchConfig(space="hma", blocks=3, budget=40_000, seed=3, startup_trials=10)
    out, cache = run(cfg)
    best = out.best(SelectionRule("retain", 0.9))
    med, gen = hma_truth(best.candidate.params)
    assert gen >= 0.9 - 1e-9
    assert med >= 0.75 - 0.02
    assert out.scored == cache.scored <= cfg.budget


def test_successive_halving_never_drops_the_true_best_of_a_planted_set():
    """Whatever the order the planted points come in, the truly best (feasible, highest medical) one is scored on every item."""
    truth = lambda p: (0.5 + 0.3 * p["alpha"] if p["alpha"] != 0.77 else 0.95, 1.0 - 0.02 * p["alpha"])  # noqa: E731
    planted = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.77, 0.8, 0.9, 0.95, 0.99]
    pruned = 0
    for seed in range(5):
        random.Random(seed).shuffle(planted)
        cfg = S.SearchConfig(space="linear", budget=100_000, seed=seed, max_trials=len(planted), first_share=0.1, eta=2)
        out, _ = run(cfg, truth, retain=0.98, first=[{"alpha": a} for a in planted])
        got = {p.candidate.params["alpha"]: p for p in out.points}
        assert set(got) == set(planted)
        assert got[0.77].complete
        assert out.best(SelectionRule("retain", 0.98)).candidate.params["alpha"] == 0.77
        pruned += sum(not p.complete for p in out.points)
    assert pruned > 0  # halving did stop points early


def test_the_same_seed_gives_the_same_points():
    """Two searches with one seed propose the same points in the same order; another seed proposes others."""
    cfg = S.SearchConfig(space="hma", budget=6_000, seed=11)
    a, _ = run(cfg)
    b, _ = run(cfg)
    c, _ = run(cfg.model_copy(update={"seed": 12}))
    assert [p.candidate for p in a.points] == [p.candidate for p in b.points]
    assert [(p.medical, p.general, p.items) for p in a.points] == [(p.medical, p.general, p.items) for p in b.points]
    assert [p.candidate for p in a.points] != [p.candidate for p in c.points]


def test_a_cached_point_item_is_never_scored_twice():
    """Within a search and across a rerun sharing the cache, every (point, item) reaches the model at most once."""
    calls: list = []
    cfg = S.SearchConfig(space="linear", budget=8_000, seed=0)
    first, cache = run(cfg, calls=calls)
    counts = Counter(calls)
    assert counts and max(counts.values()) == 1
    assert len(calls) == cache.scored == first.scored <= cfg.budget
    rerun = S.ScoreCache(scorer(hma_truth, calls), table=cache.table)  # a rerun of the sweep: its saved scores
    again, _ = run(cfg, cache=rerun)
    assert rerun.scored == 0 and len(calls) == cache.scored
    assert again.points == first.points and again.scored == first.scored  # the same budget, spent the same way


def test_promoted_points_are_scored_on_the_new_items_only():
    """A point promoted to the next rung costs the rung's new items: the rungs' prefixes are nested."""
    order = S.stratified_order(ORDER_POOL, 0)
    small, big = S.prefix(order, 0.25), S.prefix(order, 0.5)
    assert set(small) < set(big)
    cache = S.ScoreCache(scorer(hma_truth))
    cand = S.Candidate("linear", {"alpha": 0.5})
    cache.scores(cand, small)
    cache.scores(cand, big)
    assert cache.scored == len(big)


def test_the_budget_is_never_exceeded_and_a_budget_below_the_base_is_refused():
    """The scored items never pass the budget; one too small to score the base on every item is an error."""
    for budget in (300, 777, 2_500):
        out, cache = run(S.SearchConfig(space="hma", budget=budget, seed=1))
        assert cache.scored == out.scored <= budget
    with pytest.raises(MedtuneError, match="cannot score the base"):
        run(S.SearchConfig(space="hma", budget=2 * N - 1))


def test_stratified_prefixes_keep_each_stratum_share():
    """Every prefix of a task's order holds each stratum's share of the task within one item."""
    order = S.stratified_order(ORDER_POOL, 5)
    med = dict(ORDER_POOL["med"])
    for n in range(1, N + 1):
        yes = sum(med[i] == "yes" for i in order["med"][:n])
        assert abs(yes - n * 2 / 3) <= 1
    assert order["med"] != S.stratified_order(ORDER_POOL, 6)["med"]
    assert sorted(order["med"]) == sorted(i for i, _ in ORDER_POOL["med"])


def test_nsga2_returns_a_front_of_fully_scored_points():
    """nsga2 scores every point on every item and its non-dominated points trade medical for general."""
    out, _ = run(S.SearchConfig(space="hma", sampler="nsga2", budget=6_000, seed=0))
    assert out.points and all(p.complete and p.items == 2 * N for p in out.points)
    from medtune.merge.selection import Point, pareto_front

    front = [p for p, f in zip(out.points, pareto_front([Point("", p.medical, p.general) for p in out.points])) if f]
    assert len(front) >= 2


def test_a_space_refuses_blocks_it_cannot_split():
    """HMA needs 2 or more blocks, linear and slerp take one; TIES / DARE take any number (one by default)."""
    with pytest.raises(ValueError, match="blocks: space hma takes 2 or more"):
        S.SearchConfig(space="hma", blocks=1)
    with pytest.raises(ValueError, match="blocks: space linear takes 1"):
        S.SearchConfig(space="linear", blocks=3)
    assert S.SearchConfig(space="ties").n_blocks == 1 and S.SearchConfig().n_blocks == 3
    cand = S.SPACES["dare_ties"].point({"d0": 0.2, "w0": 1.0, "d1": 0.6, "w1": 0.5})
    assert cand.params == {"density": 0.4, "weight": 0.75, "block_density": [0.2, 0.6], "block_weight": [1.0, 0.5],
                           "seed": 0}


def test_per_block_ties_and_dare_merge_each_block_with_its_own_density_and_weight():
    """A layer tensor is merged with its block's density and weight, other tensors with the scalar ones; equal
    blocks give the plain merge; mergekit gets one filter per layer for density and weight."""
    import torch

    from medtune.merge import methods as M
    from medtune.merge.mergekit import mergekit_doc

    p = M.resolve_params("ties", {"density": 0.5, "weight": 1.0, "block_density": [0.2, 0.9],
                                  "block_weight": [0.5, 1.5]})
    assert M.tensor_params("ties", p, "model.layers.0.mlp.up_proj.weight", 4) == {"density": 0.2, "weight": 0.5}
    assert M.tensor_params("ties", p, "model.layers.3.mlp.up_proj.weight", 4) == {"density": 0.9, "weight": 1.5}
    assert M.tensor_params("ties", p, "model.embed_tokens.weight", 4) == {"density": 0.5, "weight": 1.0}
    assert "block_density" not in M.resolve_params("ties", {"density": 0.3})  # unset: no key, the same identity
    base, tuned = torch.randn(8, 8), [torch.randn(8, 8)]
    for name in ("ties", "dare_ties", "dare_linear"):
        flat = M.resolve_params(name, {"density": 0.4, "weight": 0.7})
        blocks = M.resolve_params(name, {**flat, "block_density": [0.4, 0.4], "block_weight": [0.7, 0.7]})
        t = "model.layers.2.self_attn.q_proj.weight"
        assert torch.equal(M.merge_tensor(name, blocks, t, 4, base, tuned), M.merge_tensor(name, flat, t, 4, base, tuned))
    doc = mergekit_doc("ties", p, "B", ["T"], 4)
    density, lam = doc["models"][0]["parameters"]["density"], doc["parameters"]["lambda"]
    assert [c["value"] for c in density] == [0.2, 0.2, 0.9, 0.9, 0.5] and density[1]["filter"] == "model.layers.1."
    assert [c["value"] for c in lam] == [0.5, 0.5, 1.5, 1.5, 1.0]
    with pytest.raises(MedtuneError, match="give both"):
        M.resolve_params("ties", {"block_density": [0.2, 0.9]})


# --- the search in a sweep, on the tiny model -----------------------------------------------------------------

from pathlib import Path  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def search_sweep(tiny_llama, tmp_path, **search):
    from conftest import make_random_adapter

    from medtune.merge.sweep import SweepConfig

    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=2, std=0.5)
    return SweepConfig.model_validate({
        "base": {"spec": str(tiny_llama)}, "tuned": str(adapter), "alphas": [0.0, 0.5, 1.0],
        "medical_tasks": "pubmedqa", "general_tasks": "medmcqa", "data_root": str(FIXTURES), "limit": None,
        "out": str(tmp_path / "sweep"), "progress": False, "retain": 0.5,
        "search": {"space": "hma", "blocks": 2, "seed": 0, "first_share": 0.5, "startup_trials": 3, **search}})


@pytest.mark.parametrize("space", ["hma", "dare_ties"])
def test_a_sweep_search_records_selectable_points_that_score_as_the_grid_does(tiny_llama, tmp_path, monkeypatch, space):
    """Searched points are SweepPoints with their order; a complete one scores what the grid's full evaluation gives
    the same point (HMA in LoRA space, per-block DARE-TIES written into the weights); the budget is the grid's by
    default; a rerun scores nothing."""
    from medtune.merge import search_run, sweep as sweep_mod
    from medtune.merge.records import SweepResult

    cfg = search_sweep(tiny_llama, tmp_path, space=space)
    res = sweep_mod.sweep(cfg)
    found = [p for p in res.points if p.search is not None]
    assert found and res.search is not None
    assert res.search.budget == res.search.grid_scored == 3 * res.search.items  # three grid points
    assert res.search.scored <= res.search.budget
    assert [p.search.order for p in found] == sorted(p.search.order for p in found)
    done = [p for p in found if p.search.complete]
    assert done and all(p.method == space and p.key == res.key for p in done)
    assert space == "hma" or all(len(p.params["block_density"]) == 2 for p in done)
    loaded = sweep_mod._averager(cfg)
    again, _ = sweep_mod._score(*loaded, cfg, done[0].method, done[0].params)
    assert (again.medical, again.general) == pytest.approx((done[0].medical, done[0].general), abs=1e-9)
    assert SweepResult.load(tmp_path / "sweep" / "results.json") == res
    assert (tmp_path / "sweep" / search_run.CACHE_FILE).is_file()

    calls: list = []
    real = search_run.model_scorer
    monkeypatch.setattr(search_run, "model_scorer",
                        lambda *a: (lambda c, items: calls.append(items) or real(*a)(c, items)))
    rerun = sweep_mod.sweep(cfg)
    assert calls == []
    assert [p for p in rerun.points if p.search] == found


def test_a_study_search_reports_search_vs_grid_with_the_paired_test_change(tiny_llama, tmp_path):
    """averaging.search in a study: the sweep searches, the report puts the search's best next to the grid's at
    the items each scored, and with test_best_of [search, grid] gives their test difference paired on items."""
    import json

    from test_study import tiny_study

    from medtune.study.run import study

    out = tmp_path / "s"
    cfg = tiny_study(tiny_llama, out, **{
        "averaging.alphas": [0.0, 0.5, 1.0], "averaging.methods": {}, "evaluation.tasks": ["pubmedqa", "arc_easy"],
        "variants": [{"name": "lora"}], "averaging.retain": 0.5, "averaging.test_best_of": ["search", "grid"],
        "averaging.search": {"space": "linear", "seed": 1, "first_share": 0.5, "startup_trials": 2}})
    study(cfg)
    data = json.loads((out / "report" / "report.json").read_text())
    sg = data["search_vs_grid"]["lora"]
    assert sg["search"]["scored"] <= sg["summary"]["budget"] == sg["grid"]["scored"]
    assert sg["grid"]["label"] and sg["search"]["label"]
    md = (out / "report" / "report.md").read_text()
    assert "Search vs grid: lora" in md and "search #" in md
    if sg["grid"]["label"] != sg["search"]["label"]:
        assert "pubmedqa" in sg["test"]["change"]


def test_a_search_scores_a_perplexity_task_whole_as_the_evaluation_does(tiny_llama, tmp_path):
    """A perplexity task is one item of the pool, scored as one stream with the evaluation's token limit, so a
    searched point's 1 / perplexity is exactly the full evaluation's of the same point."""
    from medtune.demo import demo_data_dir
    from medtune.evaluate.run import WHOLE, task_pool
    from medtune.merge import sweep as sweep_mod

    cfg = search_sweep(tiny_llama, tmp_path, space="linear", blocks=None)
    cfg = type(cfg).model_validate({**cfg.model_dump(), "general_tasks": "ppl_general", "ppl_max_tokens": 400,
                                    "task_sources": {"ppl_general": {"adapter": "text",
                                                                     "path": str(demo_data_dir() / "general_demo.txt")}}})
    pool = task_pool(sweep_mod._eval_config(cfg))
    assert pool["ppl_general"] == [(WHOLE, "")]
    res = sweep_mod.sweep(cfg)
    done = [p for p in res.points if p.search is not None and p.search.complete]
    assert done and res.search.items == 1 + len(pool["pubmedqa"])
    again, _ = sweep_mod._score(*sweep_mod._averager(cfg), cfg, done[0].method, done[0].params)
    assert (again.medical, again.general) == pytest.approx((done[0].medical, done[0].general), rel=1e-6)  # fp32 sums
