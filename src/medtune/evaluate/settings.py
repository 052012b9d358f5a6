"""The evaluation settings a stage and the study share, declared once.

``medtune eval`` (:class:`~medtune.evaluate.run.EvalConfig`) and a study's ``evaluation`` section
(:class:`~medtune.study.config.StudyEvalConfig`) both embed :class:`TaskSettings`; the sweep embeds
:class:`ScoringSettings`. A task list is a :data:`TaskList`: a list of task or group names, checked
against the registry when the config is read.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from medtune.config import Names, RelativePath, StrictModel
from medtune.evaluate.tasks import TaskDef, define_groups, define_tasks, expand, task_names_line


def known_tasks(names: list[str]) -> list[str]:
    """``names`` if it names at least one task and each is a task or group (built-in or defined in the config)."""
    if not names:
        raise ValueError(f"no task given ({task_names_line()})")
    try:
        expand(names)
    except Exception as err:  # ConfigError -> the validation error that names the field
        raise ValueError(str(err)) from None
    return names


TaskList = Annotated[Names, AfterValidator(known_tasks)]
"""Task or group names (medtune.evaluate.tasks.TASKS and GROUPS, or the config's own task_defs / task_groups)."""

PPL_STRIDE = 512
"""Perplexity: tokens the window advances by, unless ``ppl_stride`` says otherwise."""


def _default_stride(value: object) -> object:
    """``null`` is the default stride: study files saved when the study's ``ppl_stride`` meant "the eval
    default" by null still load to the same settings."""
    return PPL_STRIDE if value is None else value


class TaskData(StrictModel):
    """Where the tasks' data lives (eval, sweep, merge's greedy soup, study)."""

    data_root: RelativePath = "../shared/data"
    """Directory the tasks' data paths are relative to (the official files' layout); itself relative to the
    config file that names it."""


class ScoringSettings(TaskData):
    """Where the tasks' data lives and how much of a perplexity text is scored (eval, sweep, study)."""

    ppl_max_tokens: int | None = Field(50_000, ge=16)
    """Perplexity tasks: score only the first N tokens of the text (None: all)."""
    ppl_stride: Annotated[int, BeforeValidator(_default_stride)] = Field(PPL_STRIDE, ge=1)
    """Perplexity tasks: tokens the window advances by (512: every token of a 1024-token window is scored with
    at least 512 tokens of context; 1024: disjoint windows, as lm-eval's rolling log-likelihood, half the
    forward passes)."""


class TaskSettings(ScoringSettings):
    """Which tasks to score and how: shared by ``medtune eval`` and the study's ``evaluation``."""

    task_defs: dict[str, TaskDef] = Field(default_factory=dict)
    """Your own multiple-choice tasks by name, e.g. {my_exam: {source: {adapter: qa, path: exam.csv, fields: {...}},
    formulation: both}}; then name them in `tasks` (and a study's averaging task lists); relative paths are
    relative to data_root (see docs/own-data.md)."""
    task_groups: dict[str, list[str]] = Field(default_factory=dict)
    """Your own groups of tasks by name, e.g. {hospital: [my_exam, my_exam_2]}: named in `tasks`, a group scores its
    tasks and adds the size-weighted aggregate accuracy, as the built-in groups."""
    tasks: TaskList = Field(default_factory=lambda: ["pubmedqa", "medmcqa", "medqa4", "arc_easy", "arc_challenge",
                                                     "mmlu_general", "ppl_general"])
    """Tasks or groups to score (a group, e.g. multimedqa or mmlu_medical, scores its tasks and adds its aggregate
    line); a task's domain (medical in-domain, medical out-of-domain, general) comes from the task registry.
    On the command line: --tasks pubmedqa,medmcqa."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N items of each task (deterministic; the full split when unset; keep the PubMedQA
    test whole when publishing)."""
    max_new_tokens: int = Field(16, ge=1)
    """Generation: tokens to decode per item."""
    chat_template: bool | list[str] = False
    """Generation: wrap each prompt as a user turn in the tokenizer's chat template (instruction-tuned models),
    for every task (true) or the listed ones. Instruction-tuned models (SmolLM2-Instruct) may end their turn
    right after a bare "Answer:" prompt on some tasks and ramble inside a chat turn on others."""
    token_budget: int = Field(4096, ge=64)
    """Tokens per scoring batch: rows x the padded length of what each item adds beyond the prefix all of a
    task's prompts share (few-shot exemplars: run once, its cache held once for every row)."""

    _define_tasks = field_validator("task_defs")(define_tasks)
    _define_groups = field_validator("task_groups")(define_groups)

    @property
    def task_names(self) -> list[str]:
        """The tasks scored, groups (e.g. multimedqa) expanded, each once."""
        return expand(self.tasks)[0]

    @property
    def group_names(self) -> list[str]:
        """The groups in ``tasks``, whose aggregate lines are added (a study's report shows them as columns)."""
        return expand(self.tasks)[1]
