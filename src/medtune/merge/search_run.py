"""``medtune sweep``'s ``search:`` block on the loaded model: :mod:`medtune.merge.search` given a scorer.

The scorer sets the sweep's :class:`~medtune.merge.sources.Averager` to the proposed point (a LoRA
variant and a LoRA-exact method: the adapters' scaling only, no copy of the weights) and scores just
the asked items through :func:`medtune.evaluate.run.score_model`'s ``only``. Every (point, item)
score -- the grid's included, so the base model's is free when the grid scored alpha 0 -- is kept in
``search_cache.json`` next to ``results.json`` (valid while the sweep's key is the same), so a rerun
scores nothing it scored before. Searched points become :class:`~medtune.merge.records.SweepPoint`
records with a :class:`~medtune.merge.records.SearchMark` (their order, items, whether complete, their
``mergekit.yaml``). With ``parents`` the model is the base with every parent
(:func:`medtune.merge.parents.load`) and the cache is keyed on the parents' weights too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medtune import atomic
from medtune.evaluate.tasks import GROUPS, TASKS
from medtune.merge import methods as M
from medtune.merge import search as S
from medtune.merge.records import SearchMark, SearchSummary, SweepPoint

CACHE_FILE = "search_cache.json"


def objective(medical: Sequence[str], general: Sequence[str]) -> S.Objective:
    """The sweep's medical and general scores as search terms: a task; a group pooled over items (lm-eval's
    size-weighted groups) or the mean of its tasks; a perplexity task as 1 / perplexity."""
    def term(name: str) -> S.Term:
        if name in GROUPS:
            return S.Term(name, GROUPS[name].tasks, pooled=GROUPS[name].weight_by_size)
        return S.Term(name, (name,), ppl=TASKS[name].kind == "ppl")

    return S.Objective(tuple(term(n) for n in medical), tuple(term(n) for n in general))


def item_scores(rows: Sequence[dict[str, Any]]) -> dict[S.Item, S.ItemScore]:
    """Per (task, id), the item's score from an evaluation's prediction rows: correct (1 / 0) for a question;
    for a perplexity task, its one item (:data:`~medtune.evaluate.run.WHOLE`): the summed nll and tokens of
    its documents, scored as one stream."""
    from medtune.evaluate.run import WHOLE

    out: dict[S.Item, S.ItemScore] = {}
    for row in rows:
        if "nll" in row:
            was = out.get((row["task"], WHOLE), S.ItemScore(0.0, 0.0))
            out[(row["task"], WHOLE)] = S.ItemScore(was.value + row["nll"], was.weight + row["tokens"])
        else:
            out[(row["task"], str(row["id"]))] = S.ItemScore(float(row["pred"] == row["gold"]))
    return out


def model_scorer(avg: Any, tokenizer: Any, ecfg: Any) -> S.ScoreFn:
    """score(candidate, items) on the loaded model: the averager set to the point, only those items scored."""
    from medtune.evaluate.run import score_model

    quiet = ecfg.model_copy(update={"progress": False})

    def score(cand: S.Candidate, items: Sequence[S.Item]) -> list[S.ItemScore]:
        avg.set(*(avg.base_point if cand.key == S.BASE.key else (cand.method, M.resolve_params(cand.method, cand.params))))
        only: dict[str, set[str]] = {}
        for task, item in items:
            only.setdefault(task, set()).add(item)
        _, rows = score_model(avg.model, tokenizer, quiet, only)
        got = item_scores(rows)
        return [got[i] for i in items]

    return score


def load_cache(out: Path, key: str, score: S.ScoreFn) -> S.ScoreCache:
    """The cache of this sweep's earlier (point, item) scores (empty when there is none or the key differs)."""
    cache = S.ScoreCache(score)
    path = out / CACHE_FILE
    if path.is_file():
        raw = json.loads(path.read_text())
        if raw.get("key") == key:
            cache.table = {c: {(t, i): S.ItemScore(v, w) for t, i, v, w in rows} for c, rows in raw["scores"].items()}
    return cache


def save_cache(out: Path, key: str, cache: S.ScoreCache) -> None:
    rows = {c: [[t, i, s.value, s.weight] for (t, i), s in table.items()] for c, table in cache.table.items()}
    atomic.write_json(out / CACHE_FILE, {"key": key, "scores": rows})


def add_rows(cache: S.ScoreCache, method: str, params: M.Params, rows: Sequence[dict[str, Any]]) -> None:
    """A grid point's per-item scores into the cache (not counted as the search's spend)."""
    cache.table.setdefault(S.Candidate(method, params).key, {}).update(item_scores(rows))


def sweep_point(s: S.Searched, objective_: S.Objective, cache: S.ScoreCache, items: Sequence[S.Item],
                key: str) -> SweepPoint:
    """A searched point as the sweep records it; its per-term scores on the items it was scored on."""
    have = cache.table.get(s.candidate.key, {})
    scores = {i: have[i] for i in items if i in have}
    terms = {t.name: {"value": t.value(scores), "n": sum(1 for (task, _) in scores if task in t.tasks)}
             for t in (*objective_.medical, *objective_.general)}
    params = M.resolve_params(s.candidate.method, s.candidate.params)
    return SweepPoint(method=s.candidate.method, params=params, label=M.label(s.candidate.method, params),
                      medical=s.medical, general=s.general, tasks=terms, key=key,
                      search=SearchMark(order=s.order, items=s.items, complete=s.complete))


KIT_DIR = "mergekit"


def write_mergekit(point: SweepPoint, out: Path, base_path: str, tuned: Sequence[str], n_layers: int) -> SweepPoint:
    """``point`` with its ``mergekit.yaml`` written under ``out`` (``mergekit/search-ORDER.yaml``) and named in its
    mark, with the reason mergekit's merge differs where it does."""
    from medtune.merge.mergekit import kit_models, mergekit_yaml

    assert point.search is not None
    name = f"{KIT_DIR}/search-{point.search.order:04d}.yaml"
    text = mergekit_yaml(point.method, point.params, base_path, kit_models(base_path, tuned), n_layers)
    atomic.write_text(out / name, text)
    mark = point.search.model_copy(update={"mergekit": name, "mergekit_note": M.method(point.method).kit_note})
    return point.model_copy(update={"search": mark})


def parents_key(key: str, identities: Sequence[str]) -> str:
    """The cache key of a multi-parent search: the sweep's, and every parent's weights."""
    import hashlib

    return hashlib.sha256(json.dumps([key, *identities]).encode()).hexdigest()[:16]


def run(cfg: S.SearchConfig, pool: dict[str, list[tuple[str, str]]], objective_: S.Objective, cache: S.ScoreCache,
        retain: float, grid_points: int, key: str, on_point: Callable[[SweepPoint], None]) -> SearchSummary:
    """The search at ``cfg.budget`` scored items ("grid": as many as the grid's points cost), the base's
    included; each searched point handed to ``on_point`` as it is scored."""
    order = S.stratified_order(pool, cfg.seed)
    everything = S.prefix(order, 1.0)
    grid_scored = grid_points * len(everything)
    budget = grid_scored if cfg.budget == "grid" else cfg.budget
    outcome = S.search(cfg.model_copy(update={"budget": budget}), order, objective_, cache, retain,
                       on_point=lambda s: on_point(sweep_point(s, objective_, cache, everything, key)))
    return SearchSummary(space=cfg.space, sampler=cfg.sampler, parents=cfg.parents, seed=cfg.seed, budget=budget,
                         scored=outcome.scored,
                         grid_scored=grid_scored, items=len(everything), proposed=len(outcome.points),
                         complete=sum(p.complete for p in outcome.points))
