"""One number per task or group, higher is better: what a sweep selects on and a study compares.

A multiple-choice task gives its accuracy (``acc``), a group its aggregate accuracy (as lm-eval
aggregates it), and a perplexity task ``1 / perplexity``: the geometric-mean probability per token,
in (0, 1] like an accuracy, so a mean over tasks, the "keep 98 % of the base's general score" rule and
the weighted rule all read the right way round (keeping 98 % of ``1 / ppl`` means a perplexity at most
``base / 0.98``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medtune.evaluate.tasks import GROUPS, TASKS


def selection_score(name: str, results: Mapping[str, Any], groups: Mapping[str, Any]) -> float:
    """The higher-is-better score of task or group ``name`` from an evaluation's results."""
    if name in GROUPS:
        return float(groups[name]["acc"]["value"])
    if TASKS[name].kind == "ppl":
        return 1.0 / float(results[name]["perplexity"]["value"])
    return float(results[name]["acc"]["value"])


def mean_score(names: Sequence[str], results: Mapping[str, Any], groups: Mapping[str, Any]) -> float:
    """Mean of :func:`selection_score` over ``names`` (a study's medical or general score)."""
    return sum(selection_score(n, results, groups) for n in names) / len(names)


def describe(names: Sequence[str]) -> str:
    """What :func:`mean_score` over ``names`` is, as a person reads it: "accuracy on arc_easy",
    "100 / perplexity on ppl_general", "mean of accuracy on pubmedqa, medqa4" (shown in %)."""
    acc = [n for n in names if n in GROUPS or TASKS[n].kind != "ppl"]
    ppl = [n for n in names if n not in GROUPS and TASKS[n].kind == "ppl"]
    parts = ([f"accuracy on {', '.join(acc)}"] if acc else []) + ([f"100 / perplexity on {', '.join(ppl)}"] if ppl else [])
    return ("mean of " if len(names) > 1 else "") + " and ".join(parts)
