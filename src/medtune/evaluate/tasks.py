"""The evaluation tasks: one short entry each, in one visible registry.

Paths are relative to the eval config's ``data_root`` and follow the layout of the benchmark
files' official releases (the layout of ``../shared/data``); a config can point any task at another
source, a Hub dataset included, with ``task_sources``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import model_validator

from medtune.config import StrictModel
from medtune.data.adapters.pubmedqa import OPTIONS as PUBMEDQA_CLASSES
from medtune.data.adapters.mmlu import MULTIMEDQA_MMLU_SUBJECTS
from medtune.data.registry import QA_ADAPTERS
from medtune.data.spec import SourceConfig


@dataclass(frozen=True)
class Task:
    name: str
    kind: Literal["mc", "ppl"]
    domain: Literal["medical_in", "medical_ood", "general"]
    """What the score stands for in a study: in-domain medical, out-of-domain medical, or general ability."""
    source: dict[str, Any]
    """SourceConfig fields of the evaluated split."""
    fewshot_source: dict[str, Any] | None = None
    """Where few-shot exemplars come from (the first k items, as lm-eval's ``first_n`` sampler)."""
    group_by: str | None = None
    """Record meta key for a per-group breakdown (and per-group few-shot exemplars)."""
    metrics: tuple[str, ...] = ("acc",)
    template: str | None = None
    """Evaluation template (``EVAL_TEMPLATES``) used instead of the dataset's lm-eval one, e.g. ``cloze``."""
    extra_sources: tuple[dict[str, Any], ...] = ()
    """Perplexity tasks: further sources whose documents are interleaved with the first one's."""
    note: str = ""
    classes: tuple[str, ...] = ()
    """The answer classes, in choice order, when every item's choices are the same labels (PubMedQA's
    yes / no / maybe): the results then add macro-F1 and per-class recall next to accuracy."""


def _mmlu_subject(subject: str) -> Task:
    """One MMLU subject as lm-eval's ``mmlu_<subject>`` task: test split scored, dev split (5 items) for few-shot."""
    return Task(
        f"mmlu_{subject}", "mc", "medical_ood",
        {"adapter": "mmlu", "path": "general/mmlu/test", "subjects": [subject]},
        {"adapter": "mmlu", "path": "general/mmlu/dev", "split": "dev", "subjects": [subject]},
        note=f"MMLU {subject.replace('_', ' ')} test; lm-eval task mmlu_{subject} (subject description, letter choices)",
    )


TASKS: dict[str, Task] = {
    "pubmedqa": Task(
        "pubmedqa", "mc", "medical_in",
        {"adapter": "pubmedqa", "path": "pubmedqa/test_set.json"},
        {"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"},
        note="official PQA-L test split (500); lm-eval task pubmedqa", classes=PUBMEDQA_CLASSES,
    ),
    "medmcqa": Task(
        "medmcqa", "mc", "medical_in",
        {"adapter": "medmcqa", "path": "medmcqa/dev.json"},
        None, group_by="subject", metrics=("acc", "acc_norm"),
        note="official dev split (= Hub validation, 4183); lm-eval task medmcqa",
    ),
    "medqa5": Task(
        "medqa5", "mc", "medical_ood",
        {"adapter": "medqa", "path": "medqa_usmle/5_options/test.jsonl"},
        {"adapter": "medqa", "path": "medqa_usmle/5_options/dev.jsonl"},
        metrics=("acc", "acc_norm"),
        note="MedQA-USMLE US 5-option test (1273); lm-eval's medqa_4options prompt with options A-E "
             "(bench/lmeval_tasks/medqa_5options.yaml)",
    ),
    "medqa4": Task(
        "medqa4", "mc", "medical_ood",
        {"adapter": "medqa", "path": "medqa_usmle/4_options/phrases_no_exclude_test.jsonl"},
        {"adapter": "medqa", "path": "medqa_usmle/4_options/phrases_no_exclude_dev.jsonl"},
        metrics=("acc", "acc_norm"),
        note="MedQA-USMLE US 4-option test (1273); lm-eval task medqa_4options",
    ),
    "arc_challenge": Task(
        "arc_challenge", "mc", "general",
        {"adapter": "arc", "path": "general/arc/ARC-Challenge-Test.jsonl"},
        {"adapter": "arc", "path": "general/arc/ARC-Challenge-Dev.jsonl"},
        metrics=("acc", "acc_norm"), note="ARC-Challenge test (1172), scored on the answer texts",
    ),
    "arc_easy": Task(
        "arc_easy", "mc", "general",
        {"adapter": "arc", "path": "general/arc/ARC-Easy-Test.jsonl"},
        {"adapter": "arc", "path": "general/arc/ARC-Easy-Dev.jsonl"},
        metrics=("acc", "acc_norm"), note="ARC-Easy test (2376), scored on the answer texts",
    ),
    "mmlu_general": Task(
        "mmlu_general", "mc", "general",
        {"adapter": "mmlu", "path": "general/mmlu/test", "exclude_subjects": "medical"},
        {"adapter": "mmlu", "path": "general/mmlu/dev", "split": "dev", "exclude_subjects": "medical"},
        group_by="subject", note="MMLU test without its medical subjects; lm-eval mmlu prompt",
    ),
    **{f"mmlu_{s}": _mmlu_subject(s) for s in MULTIMEDQA_MMLU_SUBJECTS},
    "ppl_medical": Task(
        "ppl_medical", "ppl", "medical_in",
        {"adapter": "pubmedqa", "path": "pubmedqa/test_set.json"},
        extra_sources=({"adapter": "medmcqa", "path": "medmcqa/dev.json",
                        "fold": {"share": 0.5, "take": "held_out", "stratify": "subject"}},),
        note="token-level perplexity on held-out medical prose: the PubMedQA test abstracts (with their long answers) "
             "and the explanations of the MedMCQA dev half that studies hold out (fold share 0.5, stratified by subject, "
             "default salt; the studies train on the other half), documents interleaved; lower is better",
    ),
    "ppl_general": Task(
        "ppl_general", "ppl", "general",
        {"adapter": "text", "path": "general/replay/wikitext-2_test.tokens.txt"},
        note="token-level perplexity (sliding window) on WikiText-2 test; lower is better",
    ),
}
"""Task name -> task. ``medtune eval --tasks`` takes a comma-separated list of these names."""


def _cloze(letter: Task) -> Task:
    """The OLMES cloze formulation of a letter task: same items, each option's text scored after the question."""
    return replace(letter, name=f"{letter.name}_cloze", metrics=("acc", "acc_norm"), template="cloze",
                   note=f"{letter.note.split(';')[0]}, cloze formulation (OLMES): each option text scored after "
                        "'Question: ...\\nAnswer:'; acc_norm per character")


# What a small model's score can show; the letter tasks stay the leaderboard-comparable numbers.
# PubMedQA already scores its answer words (yes/no/maybe). MMLU non-medical too: in the letter
# formulation SmolLM2-135M answers "A" on ~all items, so its score is the share of gold "A"s and
# forgetting could not show in it (OLMES scores MMLU in both formulations for the same reason).
TASKS |= {f"{name}_cloze": _cloze(TASKS[name]) for name in ("medmcqa", "medqa4", "mmlu_general")}


@dataclass(frozen=True)
class TaskGroup:
    """Several tasks scored together, with one aggregate accuracy, as an lm-eval group."""

    name: str
    tasks: tuple[str, ...]
    weight_by_size: bool
    """True: the group accuracy is the mean over all items of its tasks (lm-eval ``weight_by_size: True``);
    False: the unweighted mean of the task accuracies."""
    note: str = ""


GROUPS: dict[str, TaskGroup] = {
    "multimedqa": TaskGroup(
        "multimedqa", ("pubmedqa", "medmcqa", "medqa4", "mmlu_anatomy", "mmlu_clinical_knowledge",
                       "mmlu_college_medicine", "mmlu_medical_genetics", "mmlu_professional_medicine",
                       "mmlu_college_biology"), weight_by_size=True,
        note="lm-eval 0.4.13 lm_eval/tasks/benchmarks/multimedqa/multimedqa.yaml: the nine tasks, acc aggregated "
             "with weight_by_size: True (the Open Medical-LLM Leaderboard's suite)"),
    "mmlu_medical": TaskGroup(
        "mmlu_medical", tuple(f"mmlu_{s}" for s in MULTIMEDQA_MMLU_SUBJECTS), weight_by_size=True,
        note="the six MMLU medical subjects; size-weighted as lm-eval aggregates its mmlu groups "
             "(lm_eval/tasks/mmlu/default/_mmlu.yaml: weight_by_size: True)"),
}
"""Group name -> group. A group name in ``--tasks`` (or a study's task list) stands for its tasks and adds
its aggregate line."""


BUILTIN_TASKS = frozenset(TASKS)
BUILTIN_GROUPS = frozenset(GROUPS)
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TaskDef(StrictModel):
    """A user's own multiple-choice task, defined in a config (``task_defs: {my_exam: {...}}``) and then named
    in ``--tasks`` or a study's task lists like a built-in one, and scored the same way (log-likelihood per
    choice, acc and acc_norm with intervals, per-item predictions for paired changes)."""

    source: SourceConfig
    """The evaluated items: any QA source, typically ``adapter: qa`` with a ``fields`` mapping. A relative
    path is relative to the config's data_root, as the built-in tasks' paths are."""
    formulation: Literal["letter", "cloze", "both"] = "letter"
    """letter: the options shown lettered and the letter scored (lm-eval's MedQA prompt; a built-in
    adapter's source keeps its own lm-eval prompt); cloze: each option's text scored after the question
    (OLMES); both: two tasks, the name (letter) and ``<name>_cloze``."""
    fewshot_source: SourceConfig | None = None
    """Where few-shot exemplars come from (the first k items), for ``fewshot`` > 0."""
    domain: Literal["medical_in", "medical_ood", "general"] = "medical_in"
    """What the score stands for in a study's report: in-domain medical, out-of-domain medical, or general."""
    note: str = ""
    """A line describing the task in reports."""

    @model_validator(mode="after")
    def _multiple_choice(self) -> "TaskDef":
        for field_name in ("source", "fewshot_source"):
            src = getattr(self, field_name)
            if src is not None and src.adapter not in QA_ADAPTERS:
                raise ValueError(f"{field_name}: a task scores multiple-choice items; adapter {src.adapter!r} reads text "
                                 f"(QA adapters: {', '.join(sorted(QA_ADAPTERS))})")
        return self

    def tasks(self, name: str) -> list[Task]:
        """The registry entries this definition makes: one per formulation."""
        source = self.source.model_dump(mode="json", exclude_none=True)
        fewshot = self.fewshot_source.model_dump(mode="json", exclude_none=True) if self.fewshot_source else None
        note = self.note or f"user task ({self.source.path or self.source.hub})"
        letter = Task(name, "mc", self.domain, source, fewshot, metrics=("acc", "acc_norm"), note=note)
        if self.formulation == "letter":
            return [letter]
        cloze = _cloze(letter)
        return [replace(cloze, name=name)] if self.formulation == "cloze" else [letter, cloze]


def define_tasks(defs: dict[str, TaskDef]) -> dict[str, TaskDef]:
    """Make a config's user tasks the user entries of :data:`TASKS` (user groups cleared), so every stage, the
    study and the report resolve them by name as built-in ones. The registry holds the user tasks of the config
    read last: another config's tasks are gone, so a name is never resolved to a definition this config does not
    hold. A built-in name cannot be redefined. Returns ``defs`` (a pydantic validator's value)."""
    for registry, builtin in ((TASKS, BUILTIN_TASKS), (GROUPS, BUILTIN_GROUPS)):
        for stale in set(registry) - builtin:
            del registry[stale]
    for name, task_def in defs.items():
        if not _TASK_NAME.match(name):
            raise ValueError(f"task_defs: invalid task name {name!r} (letters, digits, '_', '-', '.')")
        made = task_def.tasks(name)
        for task in made:
            if task.name in BUILTIN_TASKS or task.name in GROUPS:
                raise ValueError(f"task_defs: {task.name!r} is a built-in task or group name; choose another name")
        TASKS.update({task.name: task for task in made})
    return defs


def define_groups(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Make a config's task groups the user entries of :data:`GROUPS`: each scores its tasks and adds the size-weighted aggregate
    accuracy (the mean over all their items), as the built-in groups. Members are task names, built-in or
    user-defined. Returns ``groups``."""
    for stale in set(GROUPS) - BUILTIN_GROUPS:
        del GROUPS[stale]
    for name, members in groups.items():
        if name in BUILTIN_GROUPS or name in TASKS or not _TASK_NAME.match(name):
            raise ValueError(f"task_groups: {name!r} is a task or built-in group name, or not a valid name")
        unknown = [m for m in members if m not in TASKS]
        if not members or unknown:
            raise ValueError(f"task_groups.{name}: " + (f"unknown task {unknown[0]!r} ({task_names_line()})" if unknown
                                                       else "give at least one task"))
        GROUPS[name] = TaskGroup(name, tuple(dict.fromkeys(members)), weight_by_size=True,
                                 note="user group: size-weighted (mean over the items of its tasks)")
    return groups


def task_names_line() -> str:
    """The valid names, for an error message."""
    return f"tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}"


def _unknown(name: str) -> Exception:
    import difflib

    from medtune.errors import ConfigError

    names = [*TASKS, *GROUPS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown task '{name}' ({task_names_line()}; your own: task_defs, task_groups).{hint}")


def expand(names: list[str]) -> tuple[list[str], list[str]]:
    """(tasks, groups) that ``names`` ask for: each group replaced by its tasks, every task once, in order."""
    tasks: list[str] = []
    groups: list[str] = []
    for name in names:
        if name in GROUPS:
            groups += [name] if name not in groups else []
            members = GROUPS[name].tasks
        elif name in TASKS:
            members = (name,)
        else:
            raise _unknown(name)
        tasks += [t for t in members if t not in tasks]
    return tasks, groups


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise _unknown(name) from None


def test_split_reason(task: str, src: SourceConfig) -> str | None:
    """Why ``src`` reads a test split of ``task`` (what training and selection must never score), or None.

    A whole source is a test split when it asks for the split ``test``, when a word of its path is
    ``test`` (``ARC-Easy-Test.jsonl``, ``test_set.json``), or when it is the task's registered source,
    which is the split ``medtune eval`` reports (MedMCQA's ``dev.json``). A fold of one is not: it is how a
    validation split is carved out of a file whose complement fold is then reported (docs/study.md, the
    MMLU subjects), and keeping the two folds apart is the reporting side's to check."""
    if src.fold is not None:
        return None
    if (src.split or "").lower() == "test":
        return "its split is test"
    if src.path is not None and "test" in re.split(r"[^a-z0-9]+", src.path.lower()):
        return f"its file {src.path} is a test file"
    registered = SourceConfig.model_validate(TASKS[task].source) if task in TASKS else None
    if registered is not None and registered.location == src.location and registered.split == src.split:
        return f"it is the task's own evaluated split ({src.location}), which `medtune eval` reports"
    return None
