"""The study's plan: which steps it runs, in what order, on what each depends and who writes each directory.

One function, :func:`plan`, answers this for the run, the dry run (``medtune study --dry-run``) and the study
config's validator (no two steps may share a directory), so the three cannot disagree. A planned step says
what it is of (the base model, a variant, a sweep point); :mod:`medtune.study.steps` builds the stage config
it runs with. The steps at a sweep's selected point are planned once the sweep has selected it (the
:class:`Points` say so); until then they are a :class:`Waiting` record. This module does not import the
study config (its validator imports this), so the config is only read, never named, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from medtune.evaluate.tasks import TASKS
from medtune.merge.records import SweepPoint, SweepResult
from medtune.study.layout import StudyLayout

Kind = Literal["eval", "train", "sweep", "merge", "report"]


@dataclass(frozen=True)
class Planned:
    """A step of the plan, before its stage config is built."""

    name: str
    """Also the step's directory under the study directory, e.g. ``train/lora``."""
    kind: Kind
    owner: str
    """What writes the directory, as the validator names it ("variant 'lora'")."""
    deps: tuple[str, ...] = ()
    variant: str | None = None
    """The variant it trains, sweeps or evaluates (None: the base model, the report)."""
    suffix: str | None = None
    """A merge and its evaluations: "averaged" (the selected point) or the kind of a point reported for comparison."""
    point: SweepPoint | None = None
    """A merge and its evaluations: the sweep point merged."""
    generate: bool = False
    """An evaluation: scored by generation (``eval-gen/...``)."""
    note: str = ""


@dataclass(frozen=True)
class Waiting:
    """Steps not known until a sweep selects its point: named now, planned once it has."""

    names: tuple[str, ...]
    after: str
    """The sweep step they wait for."""

    @property
    def reason(self) -> str:
        return f"wait for {self.after}'s selected alpha"


class Points(Protocol):
    """The sweep points the plan merges: the selected one and the best of each kind (None: not known)."""

    def selected(self, variant: str) -> SweepPoint | None: ...

    def best(self, variant: str, kind: str) -> SweepPoint | None: ...


@dataclass(frozen=True)
class SweptPoints:
    """The points the sweeps on disk selected (None while a sweep is not complete)."""

    layout: StudyLayout

    def selected(self, variant: str) -> SweepPoint | None:
        res = SweepResult.load(self.layout.sweep_results(variant))
        return res.selected_point if res else None

    def best(self, variant: str, kind: str) -> SweepPoint | None:
        """The point of ``kind`` (a method name; "uniform" is linear with 0 < alpha < 1) that the averaging
        rule picks on validation among points of that kind (None when the sweep has none)."""
        res = SweepResult.load(self.layout.sweep_results(variant))
        return res.best(kind) if res else None


@dataclass(frozen=True)
class NoPoints:
    """Nothing selected yet: the steps known before anything runs."""

    def selected(self, variant: str) -> SweepPoint | None:
        return None

    def best(self, variant: str, kind: str) -> SweepPoint | None:
        return None


@dataclass(frozen=True)
class StandIn:
    """A stand-in point for every selection, the best of each kind another than the selected one (the names of
    the steps at a point do not depend on it), so the plan holds every step the study can run; a variant not
    swept selects the tuned model itself."""

    swept: tuple[str, ...]

    def selected(self, variant: str) -> SweepPoint | None:
        alpha = 0.5 if variant in self.swept else 1.0
        return SweepPoint(method="linear", params={"alpha": alpha}, label="stand-in", medical=0.0, general=0.0)

    def best(self, variant: str, kind: str) -> SweepPoint | None:
        return SweepPoint(method="linear", params={"alpha": 0.25}, label="stand-in", medical=0.0, general=0.0)


def generated_tasks(cfg: Any) -> list[str]:
    """The tasks also scored by generation: ``evaluation.generate_tasks``, else the medical multiple-choice tasks
    in their lm-eval formulation (a cloze task's prompt shows no options to answer from; perplexity has
    nothing to generate)."""
    if cfg.evaluation.generate_tasks is not None:
        return list(cfg.evaluation.generate_tasks)
    return [t for t in cfg.evaluation.task_names
            if TASKS[t].kind == "mc" and TASKS[t].domain != "general" and TASKS[t].template is None]


def plan(cfg: Any, layout: StudyLayout, points: Points) -> list[Planned | Waiting]:
    """Every step of the study ``cfg`` (a StudyConfig) in run order, as far as ``points`` tell: the base model's
    evaluation; per variant its training, evaluation and sweep, then the merge at the selected point and its
    evaluation; the points reported for comparison; the report, which reads all of them."""
    items: list[Planned | Waiting] = [*_evals(cfg, layout, "base", "the base model's evaluation", ())]
    compared: list[Planned] = []  # after everything else
    searching: list[Planned | Waiting] = []  # a multi-parent search's sweep: after every parent's training
    for v in (variant.name for variant in cfg.variants):
        mine, train, sweep = f"variant '{v}'", layout.train_step(v), layout.sweep_step(v)
        searched = _searched_parents(cfg, v)
        items += [Planned(train, "train", mine, variant=v), *_evals(cfg, layout, v, mine, (train,), variant=v)]
        if not cfg.has_sweep(v):  # the control: compared with, not averaged or shipped
            continue
        mine_after = searching if searched else items
        mine_after.append(Planned(sweep, "sweep", mine, (train, *(layout.train_step(p) for p in searched)), variant=v,
                                  note="" if v in cfg.swept else "alpha 0 and 1 only (not in averaging.variants)"))
        selected = points.selected(v)
        if selected is None:
            mine_after.append(Waiting((layout.merge_step(v), layout.eval_step(layout.averaged_label(v))), sweep))
            continue
        mine_after += _averaged(cfg, layout, v, selected, "averaged")
        for kind in cfg.averaging.test_best_of if v in cfg.swept else []:
            point = points.best(v, kind)
            if point is not None and point.identity != selected.identity:
                compared += _averaged(cfg, layout, v, point, kind)
    items += searching + compared
    items.append(Planned(layout.report_step(), "report", "the report",
                         tuple(i.name for i in items if isinstance(i, Planned))))
    return items


def _searched_parents(cfg: Any, variant: str) -> list[str]:
    """The other variants a multi-parent search averages with ``variant``: it runs once, in the sweep of the
    first parent named in ``averaging.search.parents`` (which then waits for every parent's training)."""
    search = cfg.averaging.search
    parents = search.parents if search is not None else []
    if not parents or variant != parents[0] or variant not in cfg.swept:
        return []
    return [p for p in parents if p != variant]


def _evals(cfg: Any, layout: StudyLayout, label: str, owner: str, deps: tuple[str, ...],
           **of: Any) -> list[Planned]:
    """The evaluation of the model ``label``, and its evaluation by generation when the study asks for one."""
    modes = [False, True] if cfg.evaluation.generate and generated_tasks(cfg) else [False]
    return [Planned(layout.eval_step(label, g), "eval", owner, deps, generate=g, **of) for g in modes]


def _averaged(cfg: Any, layout: StudyLayout, variant: str, point: SweepPoint, suffix: str) -> list[Planned]:
    """The merge at a sweep point and its evaluation; none when the point is the base or the tuned model.
    ``suffix`` "averaged" is the selected point (``merge/V``, ``eval/V-averaged``); another suffix is a
    point reported for comparison (``merge/V-SUFFIX``, ``eval/V-SUFFIX``)."""
    if point.is_endpoint() is not None:
        return []
    owner = f"the {suffix} model of variant '{variant}'"
    merge = Planned(layout.merge_step(variant, suffix), "merge", owner, (layout.sweep_step(variant),), variant,
                    suffix, point, note=point.label)
    return [merge, *_evals(cfg, layout, layout.averaged_label(variant, suffix), owner, (merge.name,),
                           variant=variant, suffix=suffix, point=point)]
