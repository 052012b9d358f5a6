"""``medtune sweep``: evaluate a grid of averaged models and pick the best trade-off.

Every point -- an alpha (WiSE-FT), HMA ratios, or any method of the table with one combination of
its parameter grid (``methods: {ties: {density: [0.3, 0.5], weight: [1.0]}}``) -- is scored on the
medical and the general tasks; each point is appended to ``results.json`` (a
:class:`~medtune.merge.records.SweepResult`) as soon as it is scored, and a point already there (same
base and tuned weights -- the tuned model's content hash, not its path --, tasks, limit and sources)
is not scored again. The Pareto-optimal points are marked, one is
selected by a documented rule, and the frontier is drawn to ``frontier.png``.

HMA search: for each alpha in ``hma_alphas``, every combination of per-block ratios from
``hma_grid`` whose mean equals alpha is scored, and the best by the selection objective is kept
(a grid search on the held-out medical + general score, in place of the paper's likelihood
objective).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from medtune import outdir, weights_hash
from medtune.config import ConfigFile, ModelConfig, StrictModel
from medtune.data.spec import SourceConfig
from medtune.evaluate.settings import ScoringSettings, TaskList
from medtune.errors import MedtuneError
from medtune.evaluate.scores import describe
from medtune.merge import methods as M
from medtune.merge.records import SweepPoint, SweepResult
from medtune.merge.search import SearchConfig
from medtune.merge.selection import Rule, SelectionRule
from medtune.placement import Placed, Placement

Grid = dict[str, dict[str, list[Any]]]
"""Method name -> parameter name -> the values to try (every combination is one point)."""


class SweepSettings(StrictModel):
    """The averaging sweep's grid and how its winner is chosen: ``medtune sweep``'s settings and the study's
    ``averaging`` section (one type: the study adds which variants to sweep and what to report)."""

    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Weights on the tuned model to evaluate (0 = base, 1 = tuned)."""
    hma_alphas: list[float] = Field(default_factory=list)
    """Alphas at which to search heterogeneous (per-block) ratios; empty: no HMA search."""
    hma_blocks: int = Field(3, ge=2)
    """Layer blocks for HMA (input, middle, output)."""
    hma_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Candidate per-block ratios for the HMA grid search."""
    methods: Grid = Field(default_factory=dict)
    """More averaging methods, each with a grid of its parameters, e.g. {ties: {density: [0.3, 0.5, 0.7],
    weight: [0.5, 1.0]}, slerp: {alpha: [0.5]}}: every combination is one sweep point, scored on validation,
    marked on the Pareto front and selectable (a parameter left out takes the method's default)."""
    medical_tasks: TaskList = Field(default_factory=lambda: ["pubmedqa", "medqa4"])
    """Tasks (multiple-choice, cloze, perplexity) or groups whose mean validation score is the medical score. A task
    scores its accuracy, a group its aggregate accuracy, a perplexity task 1 / perplexity (higher is better)."""
    general_tasks: TaskList = Field(default_factory=lambda: ["arc_easy"])
    """Tasks or groups whose mean validation score is the general score (as medical_tasks)."""
    limit: int | None = Field(200, ge=1)
    """Validation items per task per sweep point (the first N), to keep a sweep affordable."""
    rule: Rule = "retain"
    """retain: best medical score whose general score keeps `retain` x the base's; weighted: best
    weight x medical + (1 - weight) x general."""
    retain: float = Field(0.98, gt=0, le=1)
    """retain rule: share of the base model's general score to keep."""
    weight: float = Field(0.5, ge=0, le=1)
    """weighted rule: weight of the medical score."""
    search: SearchConfig | None = None
    """After the grid, search an averaging space with a seeded optimizer at a budget of scored validation items
    (docs/averaging.md, "Searching the averaging space"); its fully scored points are selectable like the grid's."""

    @field_validator("alphas", "hma_alphas", "hma_grid")
    @classmethod
    def _unit(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0 <= v <= 1]
        if bad:
            raise ValueError(f"values must lie in [0, 1], got {bad}")
        return values

    @field_validator("methods")
    @classmethod
    def _grid(cls, grid: Grid) -> Grid:
        try:
            grid_points(grid, 1)
        except MedtuneError as err:
            raise ValueError(str(err)) from None
        return grid

    def selection_rule(self) -> SelectionRule:
        return SelectionRule(self.rule, self.retain, self.weight)


class SweepConfig(SweepSettings, ScoringSettings, ConfigFile, Placed):
    """An averaging sweep between a base model and one tuned model."""

    base: ModelConfig = Field(default_factory=ModelConfig)
    """The base model (alpha = 0)."""
    tuned: str = ""
    """The tuned model: a LoRA adapter dir, a training run dir, or a full checkpoint."""
    task_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, the split to select on (validation splits, e.g. MedQA dev) instead of the test split."""
    out: str = "runs/sweep"
    """Output directory: results.json, frontier.png."""
    progress: bool = True
    """Show progress bars."""

    def root(self) -> Path:
        """``data_root`` by the one relative-path rule."""
        return self.resolve(self.data_root)


def grid_points(grid: Grid, n_tuned: int) -> list[tuple[str, M.Params]]:
    """Every (method, resolved params) of the grid, in order; each checked against the method table."""
    out = []
    for name, values in grid.items():
        entry = M.method(name)
        if entry.search is not None:
            raise MedtuneError(f"methods.{name}: a searched method cannot be swept (it is its own search)")
        for key, vals in values.items():
            if not isinstance(vals, list) or not vals:
                raise MedtuneError(f"methods.{name}.{key}: give a non-empty list of values")
        keys = list(values)
        for combo in itertools.product(*(values[k] for k in keys)):
            out.append((name, M.resolve_params(name, dict(zip(keys, combo)), n_tuned)))
    return out


def _key(cfg: SweepConfig, base_id: str, tuned_id: str, dtype: str = "float32") -> str:
    """What a point's scores depend on besides the point itself: the two models' weights (their
    identities, not the tuned model's path: a variant retrained in place keeps its path), the scoring
    settings and the dtype the models are scored in (bf16 scores differ from fp32 ones on some items).
    Scores are reused only when all are the same. (Settings at their first default, fp32 included, are
    left out, so a sweep scored before they were part of the key keeps its points.)"""
    ppl = [cfg.ppl_max_tokens, cfg.ppl_stride] if (cfg.ppl_max_tokens, cfg.ppl_stride) != (50_000, 512) else []
    tasks = [",".join(cfg.medical_tasks), ",".join(cfg.general_tasks)]  # as written before task lists were lists
    basis = json.dumps([cfg.base.spec, base_id, tuned_id, *tasks, cfg.limit, cfg.data_root,
                        {k: v.model_dump() for k, v in sorted(cfg.task_sources.items())}, *ppl,
                        *([dtype] if dtype != "float32" else [])], sort_keys=True)
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def tuned_identity(tuned: str) -> str:
    """The tuned model's identity: the content hash of its weight files (recorded by training, else computed)."""
    from medtune.merge.sources import adapter_dir, full_dir

    return weights_hash.identity(adapter_dir(tuned) or full_dir(tuned))


def _why_not_reused(old: SweepResult, base_id: str, tuned_id: str, dtype: str = "float32") -> str:
    """Why the points of ``old`` are not this sweep's, for the message that says they are scored again."""
    then = {p.dtype or "float32" for p in old.points}
    if then != {dtype}:
        return f"these points were scored in {', '.join(sorted(then))} and this sweep scores in {dtype}"
    if not old.tuned_identity:
        return "they were scored before sweeps recorded which weights they scored"
    if old.tuned_identity != tuned_id:
        return (f"the tuned model changed since these points were scored (weights sha256 {old.tuned_identity[:12]} "
                f"then, {tuned_id[:12]} now)")
    if old.base_identity != base_id:
        return "the base model changed since these points were scored (its files were rewritten or replaced)"
    return "the scoring settings changed since these points were scored (tasks, sources, limit or perplexity window)"


def hma_candidates(alpha: float, grid: list[float], blocks: int) -> list[list[float]]:
    """Ratio vectors from ``grid`` whose mean is alpha (within 1e-9), excluding the uniform one."""
    out = []
    for combo in itertools.product(grid, repeat=blocks):
        if abs(sum(combo) / blocks - alpha) < 1e-9 and len(set(combo)) > 1:
            out.append(list(combo))
    return out


def plan(cfg: SweepConfig) -> list[tuple[str, M.Params]]:
    """Every point of the sweep in order: the alphas, the base (alpha 0) if missing, HMA, the method grids."""
    points: list[tuple[str, M.Params]] = [("linear", {"alpha": a}) for a in cfg.alphas]
    if 0.0 not in cfg.alphas:
        points.append(("linear", {"alpha": 0.0}))  # the base model: the selection rule needs its general score
    for a in cfg.hma_alphas:
        points += [("hma", M.resolve_params("hma", {"alpha": a, "ratios": r}))
                   for r in hma_candidates(a, cfg.hma_grid, cfg.hma_blocks)]
    points += grid_points(cfg.methods, 1)
    seen: set[tuple[str, str]] = set()
    unique = []
    for name, p in points:
        ident = (name, json.dumps(p, sort_keys=True))
        if ident not in seen:
            seen.add(ident)
            unique.append((name, p))
    return unique


def _averager(cfg: SweepConfig) -> tuple[Any, Any]:
    """(Averager over the placed model, tokenizer): base + adapter for LoRA, two state dicts for full (the
    tuned one on the CPU, each tensor moved to the model's device as it is merged)."""
    from medtune import models
    from medtune.merge.sources import Averager, adapter_dir, full_dir, load_state
    from medtune.placement import load_placed

    resolved = models.resolve(cfg.base.spec, allow_pickle=cfg.base.allow_pickle)
    model, placed = load_placed(resolved, cfg.base, cfg.device)
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=cfg.base.trust_remote_code)
    adapter = adapter_dir(cfg.tuned)
    n_layers = model.config.num_hidden_layers
    if adapter is not None:
        adapted = models.load_with_adapter(model, adapter, base=resolved, allow_other_base=cfg.base.allow_other_base)
        return Averager(adapted, n_layers, placed=placed), tokenizer
    return Averager(model, n_layers, [load_state(full_dir(cfg.tuned))], placed=placed), tokenizer


def _eval_config(cfg: SweepConfig) -> Any:
    """How every point is scored: the sweep's tasks, sources, limit and perplexity window."""
    from medtune.evaluate.run import EvalConfig

    return EvalConfig(tasks=cfg.medical_tasks + cfg.general_tasks, data_root=str(cfg.root()), limit=cfg.limit,
                      task_sources=cfg.task_sources, progress=cfg.progress, ppl_max_tokens=cfg.ppl_max_tokens,
                      ppl_stride=cfg.ppl_stride)


def _score(avg: Any, tokenizer: Any, cfg: SweepConfig, method: str,
           params: M.Params) -> tuple[SweepPoint, list[dict[str, Any]]]:
    """The point scored on every validation item, and the per-item prediction rows."""
    from medtune.evaluate.records import TaskScore
    from medtune.evaluate.run import group_results, score_model
    from medtune.evaluate.scores import mean_score

    avg.set(method, params)
    ecfg = _eval_config(cfg)
    started = time.perf_counter()
    res, preds = score_model(avg.model, tokenizer, ecfg)
    groups = group_results(ecfg.group_names, res, preds)
    shown = {t: TaskScore.model_validate(r).headline for t, r in res.items()}
    per = {t: m.model_dump(mode="json") for t, m in shown.items() if m} | {g: r["acc"] for g, r in groups.items()}
    return SweepPoint(method=method, params=params, label=M.label(method, params),
                      medical=mean_score(cfg.medical_tasks, res, groups),
                      general=mean_score(cfg.general_tasks, res, groups), tasks=per,
                      seconds=round(time.perf_counter() - started, 1)), preds


def _search(cfg: SweepConfig, result: SweepResult, loaded: tuple[Any, Any] | None, rows: dict[tuple[str, str], Any],
            path: Path, console: Any) -> None:
    """The ``search:`` block after the grid: its points appended to ``result`` (and saved) as they are scored."""
    from medtune.evaluate.run import task_pool
    from medtune.merge import search_run as R

    from medtune import models

    assert cfg.search is not None
    out, ecfg, parents = path.parent, _eval_config(cfg), cfg.search.parents
    key = R.parents_key(result.key, [tuned_identity(p) for p in parents]) if parents else result.key
    if parents:  # the base with every parent, in place of the grid's base and tuned model
        from medtune.merge.parents import load

        loaded = load(cfg.base, parents, cfg.device)
    loaded = loaded or _averager(cfg)
    cache = R.load_cache(out, key, R.model_scorer(loaded[0], loaded[1], ecfg))
    for (method, params_json), preds in rows.items():
        R.add_rows(cache, method, json.loads(params_json), preds)
    objective = R.objective(cfg.medical_tasks, cfg.general_tasks)
    base_path = models.resolve(cfg.base.spec, allow_pickle=cfg.base.allow_pickle).path

    def add(point: SweepPoint) -> None:
        point = point.model_copy(update=_where(loaded[0].placed))
        R.save_cache(out, key, cache)
        if result.find(point.method, point.params) is not None:
            return  # the grid's point (or one proposed before): scored once, recorded once
        point = R.write_mergekit(point.model_copy(update={"parents": list(parents)}), out, base_path,
                                 parents or [cfg.tuned], loaded[0].n_layers)
        result.points.append(point)
        result.mark()
        result.save(path)
        if point.selectable:
            console.print(f"search #{point.search.order} {point.label}: medical {100 * point.medical:.1f}, "  # type: ignore[union-attr]
                          f"general {100 * point.general:.1f}")

    grid = sum(p.search is None for p in result.points)
    result.search = R.run(cfg.search, task_pool(ecfg), objective, cache, cfg.retain, grid, result.key, add)
    R.save_cache(out, key, cache)


def _where(placed: Placement | None) -> dict[str, str]:
    """The fields of a point that say where it was scored."""
    return {"device": placed.device, "dtype": placed.dtype} if placed is not None else {}


@outdir.writes_into("sweep")
def sweep(cfg: SweepConfig) -> SweepResult:
    from rich.console import Console

    console = Console()
    out = Path(cfg.out)
    path = out / "results.json"
    base_id, tuned_id = weights_hash.model_identity(cfg.base.spec), tuned_identity(cfg.tuned)
    from medtune.placement import resolve

    dtype = resolve(cfg.device, cfg.base.dtype).dtype
    key = _key(cfg, base_id, tuned_id, dtype)
    old = SweepResult.load(path)
    kept = [p for p in (old.points if old else []) if p.key == key and p.search is None]  # a search runs again
    if old is not None and old.points and not kept:
        console.print(f"sweep: {_why_not_reused(old, base_id, tuned_id, dtype)}: scoring again")
    result = SweepResult(config=cfg.model_dump(mode="json"), key=key, base_identity=base_id, tuned_identity=tuned_id,
                         points=kept)
    loaded: tuple[Any, Any] | None = None
    rows: dict[tuple[str, str], Any] = {}
    for method, params in plan(cfg):
        if result.find(method, params) is not None:
            continue
        loaded = loaded or _averager(cfg)
        point, rows[(method, json.dumps(params, sort_keys=True))] = _score(*loaded, cfg, method, params)
        point = point.model_copy(update={"key": key, **_where(loaded[0].placed)})
        result.points.append(point)
        result.mark()
        result.save(path)  # every point is saved as soon as it is scored
        console.print(f"{point.label}: medical {100 * point.medical:.1f}, general {100 * point.general:.1f}")
    if cfg.search is not None:
        _search(cfg, result, loaded, rows, path, console)
    base_general = result.find("linear", {"alpha": 0.0}).general  # type: ignore[union-attr]
    result.mark(cfg.selection_rule(), base_general)
    result.save(path)
    plot_frontier(result, out / "frontier.png", axes=(describe(cfg.general_tasks), describe(cfg.medical_tasks)))
    sel = result.selected_point
    assert sel is not None
    console.print(f"selected {sel.label} by rule '{cfg.rule}': medical {100 * sel.medical:.1f}, "
                  f"general {100 * sel.general:.1f} (base general {100 * base_general:.1f}); {path}")
    if result.search is not None:
        console.print(search_vs_grid(result))
    return result


def search_vs_grid(result: SweepResult) -> str:
    """One line: the grid's and the search's best by the sweep's rule (validation) and the items each scored."""
    s, grid, found = result.search, result.best("grid"), result.best("search")
    assert s is not None

    def said(p: SweepPoint | None) -> str:
        return f"{p.label} (medical {100 * p.medical:.1f}, general {100 * p.general:.1f})" if p else "none"

    return (f"search vs grid (validation, rule '{result.rule.rule if result.rule else '?'}'): grid best {said(grid)} "
            f"from {s.grid_scored} scored items; search best {said(found)} from {s.scored} scored items "
            f"({s.proposed} points proposed, {s.complete} scored on all {s.items} items; {s.sampler} seed {s.seed})")


MARKERS = {"hma": "^", "task_arithmetic": "s", "ties": "D", "dare_ties": "P", "dare_linear": "X", "slerp": "v"}
"""Scatter marker of each method's points in the frontier plots (others: "o")."""


def draw_points(ax: Any, result: SweepResult, color: str | None = None, prefix: str = "") -> None:
    """The alpha sweep as a line with alpha labels, every other method's points as its own markers."""
    plain = sorted([p for p in result.points if p.method == "linear"], key=lambda p: p.alpha or 0.0)
    ax.plot([100 * p.general for p in plain], [100 * p.medical for p in plain], "-o", color=color or "#1f77b4",
            ms=5, label=f"{prefix}α sweep (WiSE-FT)", zorder=2)
    for p in plain:
        ax.annotate(f"{p.alpha:g}", (100 * p.general, 100 * p.medical), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color=color or "#1f77b4")
    grid = [p for p in result.points if p.search is None]
    others = sorted({p.method for p in grid} - {"linear"}, key=list(M.MERGE_METHODS).index)
    for i, name in enumerate(others):
        pts = [p for p in grid if p.method == name]
        ax.scatter([100 * p.general for p in pts], [100 * p.medical for p in pts], marker=MARKERS.get(name, "o"), s=30,
                   color=color or f"C{i + 2}", alpha=0.7, label=f"{prefix}{name}", zorder=2)
    draw_search(ax, result, prefix)


def draw_search(ax: Any, result: SweepResult, prefix: str = "") -> None:
    """The search's fully scored points, coloured by the order they were proposed in and numbered with it
    (points stopped early by successive halving were scored on a subsample only and are not drawn)."""
    pts = sorted([p for p in result.points if p.search is not None and p.selectable], key=lambda p: p.search.order)  # type: ignore[union-attr]
    if not pts:
        return
    order = [p.search.order for p in pts]  # type: ignore[union-attr]
    ax.scatter([100 * p.general for p in pts], [100 * p.medical for p in pts], c=order, cmap="viridis", s=26,
               marker=MARKERS.get(pts[0].method, "o"), edgecolors="black", linewidths=0.4, zorder=2,
               label=f"{prefix}search {pts[0].method} (colour, number: order {order[0]}..{order[-1]})")
    for p, n in zip(pts, order):
        ax.annotate(str(n), (100 * p.general, 100 * p.medical), textcoords="offset points", xytext=(3, -7), fontsize=5,
                    color="#444444")


def plot_frontier(result: SweepResult, path: Path, title: str = "medical vs general ability",
                  axes: tuple[str, str] = ("mean score", "mean score")) -> None:
    """The sweep's points, Pareto front and selection; ``axes``: what the general and medical scores are
    (:func:`medtune.evaluate.scores.describe`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    draw_points(ax, result)
    front = sorted([p for p in result.points if p.pareto], key=lambda p: p.general)
    ax.plot([100 * p.general for p in front], [100 * p.medical for p in front], ":", color="grey", lw=1,
            label="Pareto front", zorder=1)
    for alpha, name, color in ((0.0, "base", "black"), (1.0, "tuned", "#d62728")):
        p = result.find("linear", {"alpha": alpha})
        if p:
            ax.scatter([100 * p.general], [100 * p.medical], s=120, facecolors="none", edgecolors=color, lw=2,
                       label=name, zorder=3)
    s = result.selected_point
    if s is not None:
        ax.scatter([100 * s.general], [100 * s.medical], marker="*", s=260, color="#ff7f0e", label=f"selected ({s.label})",
                   zorder=4)
        if result.rule is not None and result.rule.rule == "retain" and result.base_general is not None:
            ax.axvline(100 * result.rule.retain * result.base_general, color="#ff7f0e", ls="--", lw=1, alpha=0.6)
    ax.set_xlabel(f"general score: {axes[0]} (%)")
    ax.set_ylabel(f"medical score: {axes[1]} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
