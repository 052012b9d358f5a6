"""What the report shows, typed: :func:`medtune.report.build.collect` builds a :class:`Report` from the study's
results, :mod:`~medtune.report.render` and :mod:`~medtune.report.plots` read its fields, and ``report.json``
is its dump (the study's own records where they are shown as they are: validation, data mix, step times,
sweep points, a search's summary).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from medtune.evaluate.records import Metric
from medtune.merge.records import SearchSummary, SweepPoint, SweepResult
from medtune.records import Record
from medtune.study_records import MixSummary, StepTime, Validation
from medtune.train.records import ValidationPoint


class Columns(Record):
    """The study's tasks by role, in the main table's column order (see :func:`~medtune.report.build.columns`)."""

    medical_in: list[str]
    medical_ood: list[str]
    cloze: list[str]
    groups: list[str]
    general: list[str]
    ppl: list[str]
    suite: dict[str, list[str]]
    """Per group, its tasks (shown in the group's own table)."""

    @property
    def medical(self) -> list[str]:
        """The medical average's tasks: the letter-formulation ones, in-domain then out-of-domain."""
        return self.medical_in + self.medical_ood


class Row(Record):
    """One model's row of a results table."""

    label: str
    kind: str
    step: str
    tasks: dict[str, Metric | None]
    """Per task its headline metric (:attr:`~medtune.evaluate.records.TaskScore.headline`)."""
    groups: dict[str, Metric | None]
    medical_avg: Metric | None
    general_avg: Metric | None
    unparsed: dict[str, int]
    variant: str | None = None
    note: str | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    endpoint: float | None = None
    """The averaging point is the base (0) or the tuned model (1) itself; None for any other point."""

    @property
    def repeats(self) -> bool:
        """The row only repeats another model's (an averaged model at alpha 0 or 1)."""
        return (self.note or "").startswith("= ")


class PairedChange(Record):
    """A model's change vs a reference model on the same items (accuracy) or documents (perplexity)."""

    value: float
    """Accuracy (0-1) or perplexity, model minus reference."""
    n: int
    """Items (accuracy) or documents (perplexity) paired."""
    ci95: tuple[float, float] | None = None
    """Percentile-bootstrap 95 % interval; None with fewer than 2 documents."""
    stderr: float | None = None
    changed: int | None = None
    """Accuracy: items whose correctness changed."""
    weight_by_size: bool | None = None
    tasks: int | None = None
    rel: float | None = None
    """Perplexity: the change as a share of the reference's perplexity."""
    rel_ci95: tuple[float, float] | None = None
    base: float | None = None
    model: float | None = None
    tokens: int | None = None

    @property
    def is_ppl(self) -> bool:
        return self.rel is not None


Changes = dict[str, PairedChange]
"""Per task or group, its paired change."""


class AnswerShare(Record):
    """A model's most frequent answer on a task and the share of items it gave it."""

    choice: int
    """1-based."""
    answer: str | None
    """The answer as the model said it, when every item's choice there is the same words; else None."""
    share: float
    n: int


class Spread(Record):
    majority: dict[str, float] = Field(default_factory=dict)
    """Per task: the accuracy of always giving the most frequent gold answer."""
    rows: dict[str, dict[str, AnswerShare]] = Field(default_factory=dict)
    """Per row label, per task."""


class CandidateView(Record):
    label: str
    variant: str | None
    medical: float
    general: float
    method: str | None = None
    params: dict[str, Any] | None = None


class ShipView(Record):
    """The shipping choice as the report shows it."""

    candidates: list[CandidateView]
    selected: int | None
    rule: str
    """The rule as a person reads it."""
    rule_name: str
    retain: float
    base_general: float | None
    row: str | None
    """Label of the report row of the chosen model."""


class SweepView(Record):
    points: list[SweepPoint]
    selected: int | None

    def result(self) -> SweepResult:
        return SweepResult(points=self.points, selected=self.selected)


class TrainRow(Record):
    """A variant's training run (the run facts of its curves, kept as they are) with its tokens, time and method."""

    model_config = ConfigDict(extra="allow")

    steps: int
    processes: int
    global_batch: int
    seconds: float
    tokens: int
    method: str
    selected: int | None = None
    """select_on: the optimizer step whose model the variant is."""


class BestOf(Record):
    """A sweep's best point by the rule among the grid's or the search's, and the (point, item) pairs it scored."""

    label: str | None
    medical: float | None
    general: float | None
    scored: int


class PairedTest(Record):
    label: str
    change: Changes


class SearchVsGrid(Record):
    grid: BestOf
    search: BestOf
    summary: SearchSummary
    test: PairedTest | None = None
    """The search's model minus the grid's on the test items, when both were scored on test."""


class ClassView(Record):
    """A class-labelled task's (PubMedQA's) class metrics for one model: macro-F1, each class's recall, and the
    paired macro-F1 change vs the base and vs the control on the same items."""

    macro_f1: Metric
    recall: dict[str, Metric] = Field(default_factory=dict)
    """Per class (yes / no / maybe): the accuracy on the items of that gold class."""
    vs_base: PairedChange | None = None
    vs_control: PairedChange | None = None


class Report(Record):
    """Everything the report shows."""

    name: str
    model: str
    columns: Columns
    display: dict[str, str]
    """Column titles."""
    rows: list[Row]
    gen_rows: list[Row]
    ship: ShipView | None
    sweeps: dict[str, SweepView]
    curves: dict[str, list[tuple[int, float]]]
    """Per variant: (optimizer step, training loss)."""
    train: dict[str, TrainRow]
    mix: dict[str, MixSummary]
    validation: Validation
    steps: list[StepTime]
    commands: list[str]
    stale: list[str]
    deltas: dict[str, Changes] = Field(default_factory=dict)
    """Per row label (the base's left out): its paired changes vs the base."""
    search_vs_grid: dict[str, SearchVsGrid] = Field(default_factory=dict)
    gen_deltas: dict[str, Changes] = Field(default_factory=dict)
    spread: Spread = Field(default_factory=Spread)
    control: str | None = None
    """The general-text control's row label, when the study has one."""
    control_deltas: dict[str, Changes] = Field(default_factory=dict)
    """Per row label (the control's left out): its paired changes vs the control."""
    classes: dict[str, dict[str, ClassView]] = Field(default_factory=dict)
    """Per row label, per class-labelled task: macro-F1, per-class recall and their paired changes."""
    validation_curves: dict[str, list[ValidationPoint]] = Field(default_factory=dict)
    """Per variant: its validation curves during training (eval_every), when it scored them."""
    reported_split: str = "test"
    """What the reported rows were scored on: ``test``, or ``validation`` for a pilot."""

    def show(self, name: str) -> str:
        """A task's or group's column title."""
        return self.display.get(name, name)

    def shipped_row(self) -> Row | None:
        return next((r for r in self.rows if self.ship is not None and r.label == self.ship.row), None)
