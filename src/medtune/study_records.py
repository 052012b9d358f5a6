"""The study's results as one typed object: what the study gathers and the report shows.

:class:`StudyResults` is built by :func:`medtune.study.gather.gather` from the step directories
(through the typed records each stage owns: :class:`~medtune.evaluate.records.EvalResult`,
:class:`~medtune.merge.records.SweepResult`) and handed to :func:`medtune.report.build.write_report`.
It lives below both, so the report never imports the study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from medtune.data.spec import SourceConfig
from medtune.evaluate.records import EvalResult
from medtune.merge.records import SweepPoint, SweepResult
from medtune.merge.selection import SelectionRule
from medtune.train.records import CurvePoint, SelectedStep, TrainRun, ValidationPoint

RowKind = Literal["base", "tuned", "control", "averaged", "compared"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class ModelEval(_Record):
    """One evaluated model of the study: a row of the report's tables."""

    label: str
    kind: RowKind
    step: str
    """The eval step (``eval/lora``), also its directory under the study."""
    result: EvalResult
    predictions: Path
    variant: str | None = None
    point: SweepPoint | None = None
    """The averaging point this model is (averaged and compared rows)."""
    note: str | None = None


class Candidate(_Record):
    """A model the shipping rule chooses among (validation scores)."""

    label: str
    variant: str | None
    medical: float
    general: float
    point: SweepPoint | None = None


class ShipChoice(_Record):
    candidates: list[Candidate]
    selected: int
    rule: SelectionRule
    base_general: float
    row: str | None = None
    """Label of the report row of the chosen model."""


class TrainSummary(_Record):
    """A variant's training run, from its curves (:class:`~medtune.train.records.TrainCurves`)."""

    run: TrainRun
    seconds: float
    history: list[CurvePoint]
    method: str
    validation: list[ValidationPoint] = Field(default_factory=list)
    """The validation curves (eval_every), when the run scored them."""
    selected: SelectedStep | None = None
    """select_on: the step whose model the variant is (not the last)."""


class MixSummary(_Record):
    general_share_target: float
    general_share_realised: float
    source_tokens: dict[str, int]
    blocks: int
    block_size: int
    leakage_dropped: int


class Validation(_Record):
    """What the shipping choice and the sweeps were scored on."""

    medical: list[str]
    general: list[str]
    sources: dict[str, SourceConfig]
    """Per task, its validation split."""
    limit: int | None

    @field_serializer("sources")
    def _sources(self, sources: dict[str, SourceConfig]) -> dict[str, dict[str, Any]]:
        return {t: s.model_dump(mode="json", exclude_none=True) for t, s in sources.items()}


class StepTime(_Record):
    step: str
    seconds: float
    """Wall time summed over its sittings."""
    finished: str = ""
    sittings: int = 1
    """How many runs it took (more than one: interrupted and resumed)."""


class StudyResults(_Record):
    """Everything the report shows, typed."""

    name: str
    model: str
    tasks: list[str]
    """Every task scored, groups expanded."""
    validation: Validation
    groups: list[str] = Field(default_factory=list)
    """Task groups of the study (e.g. multimedqa): an aggregate column each, their tasks in a table below."""
    listed: list[str] | None = None
    """Tasks the study names itself (None: all of ``tasks``); a task there only through a group is shown
    in the group's table, not as a column of the main one."""
    rows: list[ModelEval] = Field(default_factory=list)
    gen_rows: list[ModelEval] = Field(default_factory=list)
    sweeps: dict[str, SweepResult] = Field(default_factory=dict)
    ship: ShipChoice | None = None
    train: dict[str, TrainSummary] = Field(default_factory=dict)
    mix: dict[str, MixSummary] = Field(default_factory=dict)
    steps: list[StepTime] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    stale: list[str] = Field(default_factory=list)
    """Steps left out because their settings or inputs changed since they ran (``--report-only``)."""
    reported_split: str = "test"
    """What the reported rows were scored on: ``test``, or ``validation`` for a pilot (StudyEvalConfig)."""
