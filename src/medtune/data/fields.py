"""The field mapping of a user's own QA bank: which column or key holds what (``fields:`` of a source).

A mapping, not code, as LLaMA-Factory's ``dataset_info.json`` columns or an lm-eval task YAML's
``doc_to_text``: the ``qa`` adapter (:mod:`medtune.data.adapters.qa`) reads any JSON / JSON-lines /
CSV / Parquet file or Hub dataset through it into the same :class:`~medtune.data.records.QARecord`
the built-in adapters produce.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from medtune.config import StrictModel

AnswerFormat = Literal["letter", "index0", "index1", "text"]


class QAFields(StrictModel):
    """Where each part of a multiple-choice item is in a row (column names, or JSON keys)."""

    question: str = "question"
    """The question (stem)."""
    options: str | list[str] = "options"
    """The options: one field holding a list of texts (or an object label -> text, as MedQA's
    ``{"A": ..., "B": ...}``), or a list of fields, one option each (``[a, b, c, d, e]``). With a list of
    fields, empty trailing option cells are dropped, so 4- and 5-option items can share one file."""
    answer: str = "answer"
    """The correct answer, in the form ``answer_format`` says."""
    answer_format: AnswerFormat = "letter"
    """letter: ``A``, ``B``, ... (any case; an object's own labels for object options); index0 / index1:
    the option's 0- or 1-based position; text: the option's text itself."""
    context: str | None = None
    """A passage the question is about (shown before the question), if any."""
    explanation: str | None = None
    """An explanation of the answer, trained on after the answer (as MedMCQA's ``exp``), if any."""
    id: str | None = None
    """The item's id (unique in the source); default: ``<file stem>:<line>`` (``<split>:<row index>`` on the Hub)."""
    subject: str | None = None
    """A subject per item, for ``subjects`` / ``exclude_subjects`` filters and subject-stratified folds."""

    @model_validator(mode="after")
    def _options_named(self) -> "QAFields":
        if isinstance(self.options, list):
            if len(self.options) < 2:
                raise ValueError("options: a list of fields needs at least two (one per option)")
            if len(set(self.options)) != len(self.options):
                raise ValueError(f"options: a field is named twice ({', '.join(self.options)})")
        return self

    @property
    def required(self) -> list[str]:
        """The fields every row must have (the optional option columns included: they may be empty)."""
        opts = self.options if isinstance(self.options, list) else [self.options]
        return [self.question, *opts, self.answer]
