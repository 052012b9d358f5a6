"""What a finished study prints at its end, besides the shipped model: each model's paired change vs
the base on the in-domain tasks and perplexities (test splits), saying plainly whether the change
clears its 95 % interval, and each sweep's trade-off on validation.

Pure: :func:`changes` and :func:`tradeoffs` read the gathered :class:`~medtune.study_records.StudyResults`
(and the predictions files through the report's paired deltas) and return typed lines; the study's
runner prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from medtune.evaluate.tasks import TASKS
from medtune.study_records import StudyResults


@dataclass(frozen=True)
class Change:
    """One model's paired change vs the base on one task (accuracy points, or perplexity in %)."""

    model: str
    task: str
    kind: str
    """"acc" (change in accuracy, points) or "ppl" (change in perplexity, % of the base's)."""
    value: float
    ci95: tuple[float, float] | None
    n: int

    @property
    def cleared(self) -> bool:
        """The interval excludes 0: a measured change, not noise."""
        return self.ci95 is not None and (self.ci95[0] > 0 or self.ci95[1] < 0)

    def text(self) -> str:
        unit = " pts" if self.kind == "acc" else " %"
        ci = f" [{self.ci95[0]:+.1f}, {self.ci95[1]:+.1f}]" if self.ci95 else " (no interval)"
        return f"{self.value:+.1f}{unit}{ci}"

    def verdict(self) -> str:
        if self.ci95 is None:
            return "no interval (too few items)"
        if not self.cleared:
            return "inside its interval: no measured change"
        better = self.value > 0 if self.kind == "acc" else self.value < 0
        return "measured " + ("gain" if better else "loss")


@dataclass(frozen=True)
class Tradeoff:
    """A sweep point on validation: the selection rule's medical and general scores."""

    variant: str
    label: str
    medical: float
    general: float
    selected: bool


@dataclass(frozen=True)
class Prior:
    """A model that gives one answer to most items of a task: its accuracy there is mostly that answer's prior."""

    model: str
    task: str
    choice: int
    """1-based."""
    answer: str | None
    """The answer as the model said it ("yes"); None in results of an older medtune."""
    share: float
    majority: float
    """Accuracy of always giving the most frequent gold answer."""

    def text(self) -> str:
        from medtune.report.render import shown_answer

        return (f"{self.model} answers {shown_answer(self.choice, self.answer)} on {100 * self.share:.0f} % of "
                f"{self.task} items: its accuracy "
                f"there is mostly that answer's prior (always the most frequent gold answer scores "
                f"{100 * self.majority:.1f} %)")


PRIOR_SHARE = 0.9
"""A model whose most frequent answer covers this share of a task's items is flagged as answering its prior."""


def priors(results: StudyResults) -> list[Prior]:
    """Models (base included) that give one answer to at least PRIOR_SHARE of a medical task's items."""
    from medtune.report.build import answer_spread

    tasks = [t for t in results.tasks if TASKS[t].kind != "ppl" and TASKS[t].domain != "general"]
    spread = answer_spread(results.rows, tasks)
    out = []
    for row in results.rows:
        for task, s in spread.rows.get(row.label, {}).items():
            if s.share >= PRIOR_SHARE and s.n >= 10:
                out.append(Prior(row.label, task, s.choice, s.answer, s.share, spread.majority[task]))
    return out


def changes(results: StudyResults, reference: str = "base") -> list[Change]:
    """Paired changes vs the base (``reference`` "control": vs the general-text control) of every other model
    row, on the in-domain tasks and every perplexity task."""
    from medtune.report.build import paired_deltas

    acc_tasks = [t for t in results.tasks if TASKS[t].kind != "ppl" and TASKS[t].domain == "medical_in"]
    ppl_tasks = [t for t in results.tasks if TASKS[t].kind == "ppl"]
    deltas = paired_deltas(results.rows, acc_tasks, [], ppl_tasks, reference=reference)
    out = []
    for row in results.rows:
        for task in [*acc_tasks, *ppl_tasks]:
            d = deltas.get(row.label, {}).get(task)
            if d is None:
                continue
            if d.is_ppl:
                ci, value, kind = d.rel_ci95, d.rel or 0.0, "ppl"
            else:
                ci, value, kind = d.ci95, d.value, "acc"
            out.append(Change(row.label, task, kind, 100 * value, (100 * ci[0], 100 * ci[1]) if ci else None, d.n))
    return out


def tradeoffs(results: StudyResults) -> list[Tradeoff]:
    """Every linear (alpha) point of each sweep, in alpha order, and the selected point whatever its kind."""
    out = []
    for variant, sweep in results.sweeps.items():
        sel = sweep.selected_point
        pts = sorted((p for p in sweep.points if p.method == "linear"), key=lambda p: p.alpha or 0.0)
        if sel is not None and sel.method != "linear":
            pts.append(sel)
        out += [Tradeoff(variant, p.label, p.medical, p.general, sel is not None and p.identity == sel.identity)
                for p in pts]
    return out
