"""Searching the averaging space under a forgetting budget: a seeded optimizer, a budget in scored items.

A sweep scores a hand-written grid on every validation item. A search instead lets optuna propose
points of a **space** (:data:`SPACES`: HMA's k block ratios, TIES / DARE density and weight, SLERP's
or WiSE-FT's alpha; or, over several tuned **parents** of the base, one weight per parent of task
arithmetic, TIES or a weighted soup) and spends a **budget counted in scored items** -- one (point, item) pair is one
unit, whatever the point -- where it decides something:

* each task's items are put in a seeded **stratified order** (:func:`stratified_order`, strata by
  gold answer or source), so every prefix keeps the task's answer shares;
* a new point is scored on the first share of every task's order (successive halving's first rung)
  and earns the next, ``eta`` times larger prefix only while optuna's
  :class:`~optuna.pruners.SuccessiveHalvingPruner` says it can still win (its constrained score on the
  rung is in the top 1/eta of the points that reached that rung); the prefixes are nested, so a
  promoted point is scored on the new items only;
* every scored (point, item) is kept in a :class:`ScoreCache` and never scored twice;
* ``tpe`` maximises the validation medical score with ``general >= retain x base`` as optuna's
  constraint (``Trial.set_constraint``); ``nsga2`` returns the Pareto front of (medical, general),
  constraint-dominated, every point scored on all items (no halving: optuna prunes single-objective
  studies only).

The model is behind one function, ``score(candidate, items) -> per-item scores`` (:data:`ScoreFn`):
the sweep passes one that sets the loaded model to the point and scores those items, tests pass
synthetic objectives. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medtune.config import StrictModel
from medtune.errors import MedtuneError
from medtune.merge.selection import Point, SelectionRule

Item = tuple[str, str]
"""(task, item id)."""


@dataclass(frozen=True)
class ItemScore:
    """One scored item: ``value / weight`` summed over items is the task's score (accuracy: correct and 1;
    perplexity: a document's nll and its tokens, the task's score being ``exp(-sum nll / sum tokens)``)."""

    value: float
    weight: float = 1.0


@dataclass(frozen=True)
class Candidate:
    """A point of the averaging space as the merge table names it."""

    method: str
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps([self.method, self.params], sort_keys=True)


ScoreFn = Callable[[Candidate, Sequence[Item]], Sequence[ItemScore]]
"""Scores ``candidate`` on exactly these items, in order (the model-facing seam)."""


# --- the spaces -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dim:
    """One searched coordinate with its closed range."""

    name: str
    low: float
    high: float


@dataclass(frozen=True)
class Space:
    """A searchable family of averaging points: its coordinates and the merge point they make."""

    dims: Callable[[int], list[Dim]]
    """blocks -> the coordinates."""
    point: Callable[[dict[str, float]], Candidate]
    """Coordinates (rounded to 4 decimals) -> the merge method and its parameters."""
    min_blocks: int = 1
    max_blocks: int | None = 1
    """How many blocks the space can split the layers into (None: any)."""
    parent_weight: tuple[float, float] | None = None
    """The range of each parent's own weight when the space averages several parents (None: one tuned model)."""
    parents_only: bool = False
    """Searches the parents' weights only: needs several parents."""
    normalized: bool = False
    """The parents' weights are shares (a soup): proposed in the range, then divided by their sum."""

    def all_dims(self, blocks: int, parents: int) -> list[Dim]:
        """The space's own coordinates, then one weight per parent (``p0``, ``p1``, ...) with several parents."""
        own = self.dims(blocks)
        if parents < 2 or self.parent_weight is None:
            return own
        return own + [Dim(f"p{i}", *self.parent_weight) for i in range(parents)]

    def make(self, x: dict[str, float], parents: int) -> Candidate:
        """The merge point of coordinates ``x``: the space's own, with the parents' ``weights`` added."""
        keys = [f"p{i}" for i in range(parents)] if parents >= 2 and self.parent_weight is not None else []
        cand = self.point({k: v for k, v in x.items() if k not in keys})
        if not keys:
            return cand
        w = [x[k] for k in keys]
        if self.normalized:  # all zero: the limit along equal weights, the uniform soup
            w = [round(v / sum(w), 4) for v in w] if sum(w) > 0 else [round(1 / len(w), 4)] * len(w)
        return Candidate(cand.method, {**cand.params, "weights": w})


def _hma_point(x: dict[str, float]) -> Candidate:
    ratios = [x[f"r{i}"] for i in range(len(x))]
    return Candidate("hma", {"alpha": round(sum(ratios) / len(ratios), 6), "ratios": ratios})


def _pruned(method: str) -> Space:
    """TIES / DARE: density of the kept delta entries and the weight of the merged delta, one pair per layer
    block when there are several blocks (the tensors outside the layers take their means)."""
    def dims(k: int) -> list[Dim]:
        if k == 1:
            return [Dim("density", 0.05, 1.0), Dim("weight", 0.0, 2.0)]
        return [d for i in range(k) for d in (Dim(f"d{i}", 0.05, 1.0), Dim(f"w{i}", 0.0, 2.0))]

    def point(x: dict[str, float]) -> Candidate:
        seed = {"seed": 0} if method.startswith("dare") else {}
        if "density" in x:
            return Candidate(method, {"density": x["density"], "weight": x["weight"], **seed})
        d, w = [x[f"d{i}"] for i in range(len(x) // 2)], [x[f"w{i}"] for i in range(len(x) // 2)]
        return Candidate(method, {"density": round(sum(d) / len(d), 4), "weight": round(sum(w) / len(w), 4),
                                  "block_density": d, "block_weight": w, **seed})

    return Space(dims, point, max_blocks=None, parent_weight=(0.0, 1.0) if method == "ties" else None)


SPACES: dict[str, Space] = {
    "linear": Space(lambda k: [Dim("alpha", 0.0, 1.0)], lambda x: Candidate("linear", {"alpha": x["alpha"]})),
    "hma": Space(lambda k: [Dim(f"r{i}", 0.0, 1.0) for i in range(k)], _hma_point, min_blocks=2, max_blocks=None),
    "ties": _pruned("ties"),
    "dare_ties": _pruned("dare_ties"),
    "dare_linear": _pruned("dare_linear"),
    "slerp": Space(lambda k: [Dim("alpha", 0.0, 1.0)], lambda x: Candidate("slerp", {"alpha": x["alpha"]})),
    "task_arithmetic": Space(lambda k: [], lambda x: Candidate("task_arithmetic", {"weight": 1.0}),
                             parent_weight=(0.0, 1.0), parents_only=True),
    "soup_weighted": Space(lambda k: [], lambda x: Candidate("soup_weighted", {}), parent_weight=(0.0, 1.0),
                           parents_only=True, normalized=True),
}
"""Space name -> :class:`Space`. The one place a searchable space is defined."""

SpaceName = Literal["linear", "hma", "ties", "dare_ties", "dare_linear", "slerp", "task_arithmetic", "soup_weighted"]


class SearchConfig(StrictModel):
    """A search of one averaging space at a fixed budget of scored items."""

    space: SpaceName = "hma"
    """linear: alpha; hma: one ratio per layer block; ties, dare_ties, dare_linear: density and weight (per block);
    slerp: alpha. With `parents`: task_arithmetic (base + the sum of each parent's weight x its task vector),
    ties (density, weight, and each parent's weight in the sign election and the mean), soup_weighted (the
    parents' weighted mean, without the base): one weight per parent in [0, 1]."""
    blocks: int | None = Field(None, ge=1)
    """hma: contiguous layer blocks, one ratio each (input .. output; unset: 3); ties / dare_*: one density and
    weight per block (unset: 1, one pair for the whole model); linear and slerp have one."""
    sampler: Literal["tpe", "nsga2"] = "tpe"
    """tpe: best medical score with general >= retain x base's (optuna's constrained TPE); nsga2: the Pareto
    front of (medical, general) (optuna's NSGA-II), every point scored on all items."""
    budget: Annotated[int, Field(ge=1)] | Literal["grid"] = "grid"
    """Scored items in all, the base model's included: one (point, item) pair counts once (scored now or found
    in the cache); "grid": as many as the sweep's grid points cost (its points x the validation items)."""
    seed: int = 0
    """Seeds the sampler and the item order: the same seed and scores give the same points."""
    first_share: float = Field(0.25, gt=0, le=1)
    """Share of each task's items a new point is scored on first (successive halving's first rung; 1: none)."""
    eta: int = Field(2, ge=2)
    """Successive halving: each rung scores eta times the previous share and keeps the top 1/eta."""
    max_trials: int = Field(500, ge=1)
    """Points proposed at most (the budget usually ends the search first)."""
    startup_trials: int = Field(8, ge=1)
    """Random points before TPE models the scores (NSGA-II: the population size)."""
    parents: list[str] = Field(default_factory=list)
    """Several tuned models of the same base to average with one searched weight each (spaces task_arithmetic,
    ties, soup_weighted), in place of the sweep's one tuned model: in `medtune sweep`, their paths (LoRA adapter
    directories, training run directories, full checkpoints); in a study, variant names. Empty: the sweep's
    tuned model."""

    @model_validator(mode="after")
    def _blocks(self) -> "SearchConfig":
        space = SPACES[self.space]
        hi, k = space.max_blocks, self.n_blocks
        if k < space.min_blocks or (hi is not None and k > hi):
            allowed = f"{space.min_blocks} or more" if hi is None else f"{hi}"
            raise ValueError(f"blocks: space {self.space} takes {allowed} block(s), got {k}")
        several = [n for n, s in SPACES.items() if s.parent_weight is not None]
        if self.parents and (len(self.parents) < 2 or len(set(self.parents)) < len(self.parents)):
            raise ValueError(f"parents: give two or more different tuned models, got {self.parents}")
        if self.parents and space.parent_weight is None:
            raise ValueError(f"parents: space {self.space} averages the base with one tuned model; "
                             f"several parents take {', '.join(several)}")
        if space.parents_only and not self.parents:
            raise ValueError(f"space {self.space} searches one weight per parent: give parents (two or more)")
        return self

    @property
    def n_blocks(self) -> int:
        return self.blocks if self.blocks is not None else SPACES[self.space].min_blocks if self.space != "hma" else 3

    def shares(self) -> list[float]:
        """The rungs' shares of each task's items: first_share, x eta, ..., ending at 1."""
        if self.sampler == "nsga2":
            return [1.0]
        out = [self.first_share]
        while out[-1] < 1.0:
            out.append(min(1.0, out[-1] * self.eta))
        return out


# --- items: stratified order, rung prefixes ---------------------------------------------------------------

def stratified_order(pool: Mapping[str, Sequence[tuple[str, str]]], seed: int) -> dict[str, list[str]]:
    """Per task, its item ids in a seeded order whose every prefix keeps each stratum's share (within one
    item): ``pool`` gives each task's (item id, stratum) pairs; each stratum is shuffled, then the strata
    are interleaved by the position ``(j + 0.5) / n_stratum`` of their j-th item."""
    out: dict[str, list[str]] = {}
    for task, items in pool.items():
        rng = random.Random(f"{seed}:{task}")
        strata: dict[str, list[str]] = {}
        for item, stratum in items:
            strata.setdefault(stratum, []).append(item)
        ranked = []
        for s in sorted(strata):
            ids = sorted(strata[s])
            rng.shuffle(ids)
            ranked += [((j + 0.5) / len(ids), s, i) for j, i in enumerate(ids)]
        out[task] = [i for _, _, i in sorted(ranked)]
    return out


def prefix(order: Mapping[str, Sequence[str]], share: float) -> list[Item]:
    """The first ``ceil(share x n)`` items of every task's order (at least one each)."""
    return [(t, i) for t, ids in order.items() for i in ids[: max(1, math.ceil(share * len(ids) - 1e-9))]]


# --- scores: the cache and the objective --------------------------------------------------------------------

@dataclass
class ScoreCache:
    """Every scored (point, item); :meth:`scores` calls the model only for the pairs it has not seen.

    ``spent`` counts the distinct pairs this search has used, whether scored now or found in the cache
    (an earlier run's, the grid's): the budget is spent the same way on a rerun, which then proposes the
    same points and scores nothing."""

    score: ScoreFn
    table: dict[str, dict[Item, ItemScore]] = field(default_factory=dict)
    scored: int = 0
    """Pairs sent to the model (each at most once)."""
    used: set[tuple[str, Item]] = field(default_factory=set)

    @property
    def spent(self) -> int:
        """Distinct (point, item) pairs used: what the budget counts."""
        return len(self.used)

    def cost(self, cand: Candidate, items: Sequence[Item]) -> int:
        """Pairs :meth:`scores` would add to ``spent``."""
        return sum((cand.key, i) not in self.used for i in items)

    def scores(self, cand: Candidate, items: Sequence[Item]) -> dict[Item, ItemScore]:
        have = self.table.setdefault(cand.key, {})
        todo = [i for i in items if i not in have]
        if todo:
            got = list(self.score(cand, todo))
            if len(got) != len(todo):
                raise MedtuneError(f"search: scoring {len(todo)} items of {cand.method} returned {len(got)} scores")
            have.update(zip(todo, got))
            self.scored += len(todo)
        self.used.update((cand.key, i) for i in items)
        return {i: have[i] for i in items}


@dataclass(frozen=True)
class Term:
    """One named score of the objective: a task, or a group of tasks (pooled over items, or the mean of its
    tasks); ``ppl``: a perplexity task, scored ``exp(-sum nll / sum tokens)``."""

    name: str
    tasks: tuple[str, ...]
    pooled: bool = True
    ppl: bool = False

    def value(self, scores: Mapping[Item, ItemScore]) -> float:
        def ratio(tasks: Sequence[str]) -> float:
            pairs = [s for (t, _), s in scores.items() if t in tasks]
            total = sum(s.weight for s in pairs)
            if not total:
                raise MedtuneError(f"search: no scored items of {', '.join(tasks)}")
            r = sum(s.value for s in pairs) / total
            return math.exp(-r) if self.ppl else r

        if self.pooled:
            return ratio(self.tasks)
        return sum(ratio([t]) for t in self.tasks) / len(self.tasks)


@dataclass(frozen=True)
class Objective:
    """The medical and the general score: each the mean of its terms, as a sweep's."""

    medical: tuple[Term, ...]
    general: tuple[Term, ...]

    def scores(self, scores: Mapping[Item, ItemScore]) -> tuple[float, float]:
        med = sum(t.value(scores) for t in self.medical) / len(self.medical)
        gen = sum(t.value(scores) for t in self.general) / len(self.general)
        return med, gen


# --- the search -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Searched:
    """One proposed point and how far it got: its scores on the items of the last rung it reached."""

    order: int
    """Proposal number (0, 1, ...): the search order."""
    candidate: Candidate
    medical: float
    general: float
    items: int
    """Items per point of the rung it reached (all validation items when ``complete``)."""
    complete: bool
    """Scored on every item (selectable); False: stopped by successive halving or the budget."""


@dataclass
class SearchOutcome:
    points: list[Searched]
    base: tuple[float, float]
    """The base model's (medical, general) on every item."""
    scored: int
    """(point, item) pairs used (the budget's count), the base's included."""

    def best(self, rule: SelectionRule) -> Searched | None:
        """The complete point the rule picks (None when none is complete)."""
        done = [p for p in self.points if p.complete]
        if not done:
            return None
        return done[rule.pick([Point(str(p.order), p.medical, p.general) for p in done], self.base[1])]


BASE = Candidate("linear", {"alpha": 0.0})
"""The base model, scored on every item first: the constraint is relative to its general score."""


def _quiet_optuna() -> Any:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _study(cfg: SearchConfig) -> Any:
    optuna = _quiet_optuna()
    if cfg.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(cfg.startup_trials, 2))
        return optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials, multivariate=True)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=cfg.eta)
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def constrained(medical: float, general: float, floor: float) -> float:
    """The one number successive halving ranks points by: the medical score when the general score
    clears ``floor``, else minus the shortfall (every feasible point ranks above every infeasible one)."""
    return medical if general >= floor else -(floor - general)


def search(cfg: SearchConfig, order: Mapping[str, Sequence[str]], objective: Objective, cache: ScoreCache,
           retain: float, first: Sequence[Mapping[str, float]] = (),
           on_point: Callable[[Searched], None] | None = None) -> SearchOutcome:
    """Propose and score points until the budget (scored items, the cache's count) or ``max_trials`` is spent.

    ``order``: each task's items in the order their prefixes are taken (:func:`stratified_order`);
    ``first``: coordinates to propose before the sampler's own (optuna's ``enqueue_trial``), e.g. the
    grid's best. A rung that would exceed the budget is not started: the search ends there."""
    space, n_parents = SPACES[cfg.space], len(cfg.parents)
    dims = space.all_dims(cfg.n_blocks, n_parents)
    everything = prefix(order, 1.0)
    assert isinstance(cfg.budget, int), "resolve budget 'grid' first"
    if cache.spent + cache.cost(BASE, everything) > cfg.budget:
        raise MedtuneError(f"search: a budget of {cfg.budget} scored items cannot score the base model on its "
                           f"{len(everything)} items")
    base = objective.scores(cache.scores(BASE, everything))
    study, shares = _study(cfg), cfg.shares()
    for x in first:
        study.enqueue_trial(dict(x))
    points: list[Searched] = []
    for n in range(cfg.max_trials):
        trial = study.ask()
        cand = space.make({d.name: round(trial.suggest_float(d.name, d.low, d.high), 4) for d in dims}, n_parents)
        done = _climb(cfg, trial, cand, order, shares, objective, cache, retain)
        if done is None:  # the budget ends the search before this point's next rung
            study.tell(trial, state=_quiet_optuna().trial.TrialState.FAIL)
            break
        (med, gen), items, complete, base_rung = done
        trial.set_constraint("general", retain * base_rung - gen)
        if not complete:
            study.tell(trial, state=_quiet_optuna().trial.TrialState.PRUNED)
        else:
            study.tell(trial, [med, gen] if cfg.sampler == "nsga2" else med)
        points.append(Searched(n, cand, med, gen, items, complete))
        if on_point is not None:
            on_point(points[-1])
        if cache.spent >= cfg.budget:
            break
    return SearchOutcome(points, base, cache.spent)


def _climb(cfg: SearchConfig, trial: Any, cand: Candidate, order: Mapping[str, Sequence[str]], shares: list[float],
           objective: Objective, cache: ScoreCache, retain: float
           ) -> tuple[tuple[float, float], int, bool, float] | None:
    """Score ``cand`` rung by rung while the pruner keeps it: ((medical, general), items per point, complete,
    the base's general score on those items); None when its first rung would exceed the budget."""
    reached = None
    for r, share in enumerate(shares):
        items = prefix(order, share)
        if cache.spent + cache.cost(cand, items) > cfg.budget:
            break
        scores = objective.scores(cache.scores(cand, items))
        base_gen = objective.scores(cache.scores(BASE, items))[1]  # cached: the base was scored on everything
        reached = (scores, len(items), share >= 1.0, base_gen)
        if share >= 1.0:
            break
        trial.report(constrained(*scores, retain * base_gen), step=cfg.eta ** r)
        if trial.should_prune():
            break
    return reached
