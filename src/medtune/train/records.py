"""``curves.json`` of ``medtune train``: the run's facts and its loss history, as a typed record with its
load/save, owned by the training stage (the study and report read it through :class:`TrainCurves`)."""

from __future__ import annotations

import json
from pathlib import Path

from medtune import atomic
from medtune.records import ReadRecord


class CurvePoint(ReadRecord):
    """One logged optimizer step."""

    step: int
    loss: float
    """Training loss (nats / token)."""
    tokens: int
    """Tokens trained on so far."""
    lr: float | None = None
    grad_norm: float | None = None


class ValidationPoint(ReadRecord):
    """One point of a validation curve (``eval_every``): a task's metric on its validation subset after
    ``step`` optimizer steps."""

    step: int
    task: str
    metric: str
    value: float
    n: int
    """Items scored (perplexity: tokens)."""


class TrainRun(ReadRecord):
    """How the run was set up (the rest of the facts: device, parallelism, precision, kept as written)."""

    steps: int
    processes: int
    global_batch: int
    """Blocks per optimizer step, over all processes."""


class SelectedStep(ReadRecord):
    """``select_on``: the validation scoring whose model the run kept in model/."""

    step: int
    task: str
    metric: str
    value: float


class TrainCurves(ReadRecord):
    run: TrainRun
    history: list[CurvePoint]
    seconds: float
    """Wall time of the training loop, resumed runs' earlier parts included."""
    validation: list[ValidationPoint] | None = None
    """The validation curves (``eval_every``; absent in files written before them)."""
    selected: SelectedStep | None = None
    """select_on: the step whose model is model/ (the last step's is in last/ when it differs)."""

    @classmethod
    def load(cls, path: str | Path) -> "TrainCurves | None":
        """The curves of a training directory (or the file itself); None when training has not finished."""
        path = Path(path)
        path = path / "curves.json" if path.is_dir() else path
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json"))
