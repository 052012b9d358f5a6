"""What ``medtune eval`` writes and the study and report read: typed records with their load/save.

``results.json`` is an :class:`EvalResult` (per task a :class:`TaskScore` of :class:`Metric` records),
``predictions.jsonl`` a list of :class:`Prediction` rows; nobody else parses either file. The metric a
table shows for a task (its *headline*) is chosen by :attr:`TaskScore.headline` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from medtune import atomic
from medtune.records import ReadRecord


class Metric(ReadRecord):
    """One number with its uncertainty: an accuracy, a perplexity, a group's aggregate accuracy."""

    value: float
    n: int
    """Items scored (a perplexity: tokens)."""
    stderr: float | None = None
    """Standard error of the mean (accuracies; a perplexity has none)."""
    ci95: tuple[float, float] | None = None
    """95 % interval (bootstrap for a task, normal for an average of tasks)."""
    weight_by_size: bool | None = None
    """A group's aggregate: the mean over all items (True) or of its tasks' means (False)."""
    tasks: int | None = None
    """A group's aggregate: how many tasks it is over."""


class TaskScore(ReadRecord):
    """One task's scores (accuracy, length-normalised accuracy, perplexity) and its run facts (kept as they are)."""

    acc: Metric | None = None
    acc_norm: Metric | None = None
    acc_parsed: Metric | None = None
    """Generation: accuracy on the outputs that named an option."""
    perplexity: Metric | None = None
    unparsed: int | None = None
    """Generation: outputs that name no option (they count as wrong)."""
    macro_f1: Metric | None = None
    """A class-labelled task (PubMedQA): macro-averaged F1 over its classes, with a bootstrap interval."""
    recall_by_class: dict[str, Metric] | None = None
    """A class-labelled task: per class, the accuracy on the items of that gold class."""

    @property
    def headline(self) -> Metric | None:
        """The metric a table shows and a sweep point records for the task: accuracy, else perplexity."""
        return self.acc or self.perplexity


class GroupScore(ReadRecord):
    """A task group's aggregate accuracy (as lm-eval aggregates it) and its tasks' accuracies."""

    acc: Metric
    tasks: dict[str, float] | None = None
    aggregation: str | None = None
    seconds: float | None = None


class EvalResult(ReadRecord):
    """One model scored on its tasks and groups, with the run's provenance (device, dtype, packages: kept as they are)."""

    model: str
    adapter: str | None = None
    mode: str = "loglikelihood"
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    groups: dict[str, GroupScore] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult | None":
        """The results of an eval directory (or its results.json); None when it has not run."""
        path = Path(path)
        path = path / "results.json" if path.is_dir() or not path.suffix else path
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json"))

    def acc(self, task: str) -> Metric | None:
        score = self.tasks.get(task)
        return score.acc if score else None

    def headline(self, task: str) -> Metric | None:
        """The metric a table shows for a task (:attr:`TaskScore.headline`)."""
        score = self.tasks.get(task)
        return score.headline if score else None

    def group_acc(self, group: str) -> Metric | None:
        score = self.groups.get(group)
        return score.acc if score else None

    def unparsed(self) -> dict[str, int]:
        return {t: r.unparsed for t, r in self.tasks.items() if r.unparsed is not None}


@dataclass(frozen=True)
class Prediction:
    """One row of ``predictions.jsonl``: a multiple-choice (or generated) answer, or a perplexity document.

    Only the fields the study and report compare are read; the rest of a row (log-likelihoods, the
    generated text) stays in the file."""

    task: str
    id: str
    gold: int | None = None
    """Multiple-choice and generation rows: the right choice (0-based)."""
    pred: int | None = None
    """The chosen choice (0-based; generation: None when the output named no option)."""
    answer: str | None = None
    """The chosen option as the model said it ("yes", "B"); None in predictions of an older medtune."""
    nll: float | None = None
    """Perplexity rows: the document's summed negative log-likelihood (nats)."""
    tokens: int | None = None
    """Perplexity rows: the document's scored tokens."""

    @property
    def is_choice(self) -> bool:
        """A multiple-choice (or generation) row, as opposed to a perplexity document."""
        return self.gold is not None

    @property
    def correct(self) -> float:
        return float(self.pred == self.gold)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Prediction":
        opt = lambda key, kind: None if raw.get(key) is None else kind(raw[key])  # noqa: E731
        return cls(task=raw["task"], id=str(raw["id"]), gold=opt("gold", int), pred=opt("pred", int),
                   answer=opt("answer", str), nll=opt("nll", float), tokens=opt("tokens", int))

    @classmethod
    def read(cls, path: Path) -> "list[Prediction]":
        """The rows of an eval directory's ``predictions.jsonl``; none when it is missing."""
        from medtune.data.adapters.rows import iter_lines

        if not path.is_file():
            return []
        return [cls.from_json(json.loads(line)) for _, line in iter_lines(path) if line.strip()]
