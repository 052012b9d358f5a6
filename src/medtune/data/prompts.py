"""Prompt templates, kept as data.

Two kinds:

* **evaluation prompts** reproduce lm-evaluation-harness's templates character for character
  (``pubmedqa``, ``medmcqa``, ``medqa_4options``, ``arc_easy``/``arc_challenge``, ``mmlu``), so our
  accuracies are comparable with published numbers;
* **training texts** turn a QA record into one continued-pretraining document, split into the
  prompt part and the answer part (the answer part is what answer-only loss trains on).

A template is a frozen dataclass of strings; ``asdict(template)`` is written next to every
artifact that used it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from medtune.data.records import QARecord
from medtune.errors import ConfigError


@dataclass(frozen=True)
class EvalTemplate:
    """How lm-eval builds one multiple-choice request for a dataset."""

    name: str
    text: str
    """Format string over {question}, {question_stripped}, {context}, {context_block} ("Context: ...\\n" when
    the item has one), {options_block}."""
    option_line: str = "{label}. {option}\n"
    """One line of {options_block}."""
    choices: Literal["labels", "options"] = "labels"
    """What the model scores: the option labels (" A") or the option texts (" yes")."""
    description: str = ""
    """Prefix before the prompt (and before few-shot exemplars): MMLU's subject line."""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    source: str = ""
    """The lm-evaluation-harness task file this reproduces."""


@dataclass(frozen=True)
class EvalPrompt:
    """One request: the context to condition on, the continuations to score, and the gold index."""

    id: str
    context: str
    continuations: tuple[str, ...]
    """Each already prefixed by the target delimiter, as lm-eval scores them (e.g. " A")."""
    gold: int
    choice_chars: tuple[int, ...] = ()
    """Characters of each choice without the delimiter: lm-eval's ``acc_norm`` divides by these."""


EVAL_TEMPLATES: dict[str, EvalTemplate] = {
    "pubmedqa": EvalTemplate(
        name="pubmedqa",
        text="Abstract: {context}\nQuestion: {question}\nAnswer:",
        choices="options",
        source="lm_eval/tasks/pubmedqa/preprocess_pubmedqa.py (lm-eval 0.4.13)",
    ),
    "medmcqa": EvalTemplate(
        name="medmcqa",
        text="Question: {question}\nChoices:\n{options_block}Answer:",
        source="lm_eval/tasks/medmcqa/utils_medmcqa.py (lm-eval 0.4.13)",
    ),
    "medqa": EvalTemplate(
        name="medqa",
        text="Question: {question}\n{options_block}Answer:",
        source="lm_eval/tasks/medqa/preprocess_medqa.py (lm-eval 0.4.13)",
    ),
    "arc": EvalTemplate(
        name="arc",
        text="Question: {question}\nAnswer:",
        choices="options",
        source="lm_eval/tasks/arc/arc_easy.yaml (lm-eval 0.4.13)",
    ),
    "letter": EvalTemplate(
        name="letter",
        text="{context_block}Question: {question}\n{options_block}Answer:",
        source="lm_eval/tasks/medqa/preprocess_medqa.py (lm-eval 0.4.13), the same string for an item without a "
               "context; a context is shown first as 'Context: ...', as the training texts show it",
    ),
    "cloze": EvalTemplate(
        name="cloze",
        text="{context_block}Question: {question}\nAnswer:",
        choices="options",
        source="OLMES cloze formulation (Gu et al. 2024, arXiv:2406.08446): no options shown, each answer text "
               "scored after the question; the same strings as lm-eval's arc_easy.yaml",
    ),
    "mmlu": EvalTemplate(
        name="mmlu",
        text="{question_stripped}\n{options_block}Answer:",
        description="The following are multiple choice questions (with answers) about {subject}.\n\n",
        source="lm_eval/tasks/mmlu/default/_default_template_yaml (lm-eval 0.4.13)",
    ),
}
"""Evaluation templates by name."""

DEFAULT_EVAL_TEMPLATE: dict[str, str] = {
    "pubmedqa": "pubmedqa",
    "medmcqa": "medmcqa",
    "medqa4": "medqa",
    "medqa5": "medqa",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "arc": "arc",  # an ARC file whose name says neither Easy nor Challenge (same lm-eval prompt)
    "mmlu": "mmlu",
    "qa": "letter",  # a user's own bank (adapter qa)
}
"""Which evaluation template a dataset uses by default."""


def get_eval_template(name: str) -> EvalTemplate:
    try:
        return EVAL_TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown evaluation template '{name}' (valid: {', '.join(sorted(EVAL_TEMPLATES))})") from None


def template_for(record: QARecord) -> EvalTemplate:
    try:
        return EVAL_TEMPLATES[DEFAULT_EVAL_TEMPLATE[record.dataset]]
    except KeyError:
        raise ConfigError(
            f"no evaluation template for dataset '{record.dataset}' (known: {', '.join(sorted(DEFAULT_EVAL_TEMPLATE))})"
        ) from None


def _labels(record: QARecord) -> tuple[str, ...]:
    return record.option_labels or tuple("ABCDEFGHIJ"[: len(record.options)])


def _fields(record: QARecord, template: EvalTemplate) -> dict[str, Any]:
    labels = _labels(record)
    block = "".join(template.option_line.format(label=l, option=o) for l, o in zip(labels, record.options))
    return {
        "question": record.question,
        "question_stripped": record.question.strip(),
        "context": record.context or "",
        "context_block": f"Context: {record.context}\n" if record.context else "",
        "options_block": block,
    }


def description(record: QARecord, template: EvalTemplate) -> str:
    subject = str(record.meta.get("subject", "")).replace("_", " ")
    return template.description.format(subject=subject)


def render_question(record: QARecord, template: EvalTemplate) -> str:
    """The prompt text for one record, without description or exemplars (lm-eval's doc_to_text)."""
    return template.text.format(**_fields(record, template))


def continuations(record: QARecord, template: EvalTemplate) -> tuple[str, ...]:
    """The scored continuations with the target delimiter (lm-eval's doc_to_choice)."""
    # The letter tasks (MedMCQA, MedQA, MMLU) score "A", "B", ... as lm-eval hard-codes them;
    # ARC and PubMedQA score the option texts themselves.
    raw = tuple("ABCDEFGHIJ"[: len(record.options)]) if template.choices == "labels" else record.options
    return tuple(template.target_delimiter + c for c in raw)


def eval_prompt(record: QARecord, template: EvalTemplate | None = None, fewshot: Sequence[QARecord] = ()) -> EvalPrompt:
    """The full request lm-eval would build: description, k exemplars with their gold answers, the question."""
    template = template or template_for(record)
    parts = [render_question(ex, template) + continuations(ex, template)[ex.answer] for ex in fewshot]
    parts.append(render_question(record, template))
    context = description(record, template) + template.fewshot_delimiter.join(parts)
    conts = continuations(record, template)
    chars = tuple(len(c) - len(template.target_delimiter) for c in conts)
    return EvalPrompt(record.id, context, conts, record.answer, chars)


@dataclass(frozen=True)
class TrainTemplate:
    """A QA record as one continued-pretraining document: ``prompt`` then ``answer``."""

    name: str
    prompt: str
    """Format string over {context_block}, {question}, {options_block}."""
    answer: str
    """Format string over {answer_label}, {answer_text}, {explanation_block}."""
    context_line: str = "Context: {context}\n"
    option_line: str = "{label}. {option}\n"
    explanation_line: str = "\n{explanation}"


TRAIN_TEMPLATES: dict[str, TrainTemplate] = {
    "qa_text": TrainTemplate(
        name="qa_text",
        prompt="{context_block}Question: {question}\n{options_block}Answer:",
        answer=" {answer_text}{explanation_block}",
    ),
}
"""Continued-pretraining document templates. ``qa_text`` (default): optional context, the question,
the lettered options (except for yes/no/maybe PubMedQA items, whose options are the answer words),
and the answer text, followed by the source's explanation (PubMedQA long answer, MedMCQA ``exp``)
when it has one. Documents are separated by the tokenizer's EOS token when packed."""


def get_train_template(name: str) -> TrainTemplate:
    try:
        return TRAIN_TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown training template '{name}' (valid: {', '.join(sorted(TRAIN_TEMPLATES))})") from None


@dataclass(frozen=True)
class TrainText:
    id: str
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def training_text(record: QARecord, template: TrainTemplate) -> TrainText:
    labels = _labels(record)
    lettered = record.dataset != "pubmedqa"
    block = "".join(template.option_line.format(label=l, option=o) for l, o in zip(labels, record.options)) if lettered else ""
    ctx = template.context_line.format(context=record.context) if record.context else ""
    explanation = record.meta.get("long_answer") or record.meta.get("explanation") or record.meta.get("exp")
    answer_text = f"{labels[record.answer]}. {record.answer_text}" if lettered else record.answer_text
    return TrainText(
        record.id,
        template.prompt.format(context_block=ctx, question=record.question, options_block=block),
        template.answer.format(
            answer_label=labels[record.answer],
            answer_text=answer_text,
            explanation_block=template.explanation_line.format(explanation=explanation) if explanation else "",
        ),
    )


def template_provenance(*templates: EvalTemplate | TrainTemplate) -> list[dict[str, Any]]:
    """JSON-able copies of the templates, to store next to an artifact."""
    return [{"kind": type(t).__name__, **asdict(t)} for t in templates]
