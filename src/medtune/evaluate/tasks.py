"""The evaluation tasks: one short entry each, in one visible registry.

Paths are relative to the eval config's ``data_root`` and follow the layout of the benchmark
files' official releases (the layout of ``../shared/data``); a config can point any task at another
source, a Hub dataset included, with ``task_sources``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "pubmedqa": Task(
        "pubmedqa", "mc", "medical_in",
        {"adapter": "pubmedqa", "path": "pubmedqa/test_set.json"},
        {"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"},
        note="official PQA-L test split (500); lm-eval task pubmedqa",
    ),
    "medmcqa": Task(
        "medmcqa", "mc", "medical_in",
        {"adapter": "medmcqa", "path": "medmcqa/dev.json"},
        None, group_by="subject", metrics=("acc", "acc_norm"),
        note="official dev split (= Hub validation, 4183); lm-eval task medmcqa",
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
    "ppl_general": Task(
        "ppl_general", "ppl", "general",
        {"adapter": "text", "path": "general/replay/wikitext-2_test.tokens.txt"},
        note="token-level perplexity (sliding window) on WikiText-2 test; lower is better",
    ),
}
"""Task name -> task. ``medtune eval --tasks`` takes a comma-separated list of these names."""


def get_task(name: str) -> Task:
    from medtune.errors import ConfigError

    try:
        return TASKS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task '{name}' (valid: {', '.join(TASKS)}).{hint}") from None
