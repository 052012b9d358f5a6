"""The study report's numbers, from the study's results object (no model is loaded here).

:func:`collect` turns a :class:`~medtune.results.StudyResults` (gathered by the study from its
step directories) into one JSON-ready dict (written as ``report.json``),
:mod:`medtune.report.render` turns that dict into Markdown and HTML, and
:mod:`medtune.report.plots` draws the figures. Every number in the report comes from a results
record of the study; none is computed from scratch except the averages, their intervals and the
paired differences. The report sits below the study: it imports nothing from ``medtune.study``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtune import atomic, outdir
from medtune.data.adapters.mmlu import MULTIMEDQA_MMLU_SUBJECTS
from medtune.data.adapters.rows import iter_lines
from medtune.evaluate.tasks import GROUPS, TASKS
from medtune.results import ModelEval, StudyResults

DISPLAY = {"pubmedqa": "PubMedQA", "medmcqa": "MedMCQA", "medqa4": "MedQA-USMLE", "medqa5": "MedQA-USMLE 5-opt",
           "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "mmlu_general": "MMLU (non-medical)",
           "ppl_general": "General perplexity", "ppl_medical": "Medical perplexity",
           "medmcqa_cloze": "MedMCQA cloze", "medqa4_cloze": "MedQA-USMLE cloze",
           "mmlu_general_cloze": "MMLU (non-medical) cloze",
           "multimedqa": "MultiMedQA avg", "mmlu_medical": "MMLU medical avg",
           **{f"mmlu_{s}": "MMLU " + s.replace("_", " ") for s in MULTIMEDQA_MMLU_SUBJECTS}}
"""Column titles of the report's tables."""


def is_cloze(task: str) -> bool:
    """A task in the OLMES cloze formulation (each option's text scored), as opposed to lm-eval's letters."""
    return TASKS[task].template == "cloze"


def mean_with_ci(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean of task accuracies with a normal 95 % interval, the tasks' items taken as independent.

    stderr(mean of k tasks) = sqrt(sum of stderr_i^2) / k; the interval is clipped to [0, 1]."""
    if not parts:
        return None
    k = len(parts)
    value = sum(p["value"] for p in parts) / k
    se = math.sqrt(sum(p["stderr"] ** 2 for p in parts)) / k
    return {"value": value, "stderr": se, "ci95": [max(0.0, value - 1.96 * se), min(1.0, value + 1.96 * se)], "n": sum(p["n"] for p in parts)}


def columns(tasks: list[str], groups: list[str] | None = None, listed: list[str] | None = None) -> dict[str, Any]:
    """The study's tasks by role, in the main table's column order: medical multiple-choice in lm-eval's
    letter formulation (in-domain, out-of-domain), the cloze formulation (of any domain: MMLU
    non-medical's too), task groups (leaderboard averages), general accuracy in lm-eval's
    formulation, perplexity. Each task has one column; the averages are over the lm-eval ones. A task
    that is in the study only through a group (not in ``listed``) gets no column of its own: it is in the group's table (``suite``)."""
    groups = groups or []
    through_group = {t for g in groups for t in GROUPS[g].tasks} - set(tasks if listed is None else listed)
    shown = [t for t in tasks if t not in through_group]
    mc = lambda t, dom: TASKS[t].kind == "mc" and TASKS[t].domain == dom
    return {"medical_in": [t for t in shown if mc(t, "medical_in") and not is_cloze(t)],
            "medical_ood": [t for t in shown if mc(t, "medical_ood") and not is_cloze(t)],
            "cloze": [t for t in shown if TASKS[t].kind == "mc" and is_cloze(t)],
            "groups": list(groups),
            "general": [t for t in shown if mc(t, "general") and not is_cloze(t)],
            "ppl": [t for t in shown if TASKS[t].kind == "ppl"],
            "suite": {g: list(GROUPS[g].tasks) for g in groups}}


def model_row(m: ModelEval, cols: dict[str, Any]) -> dict[str, Any]:
    """One table row: each task's headline metric, each group's aggregate, the medical and general
    averages, the averaging point. The medical average is over the letter-formulation tasks shown."""
    res = m.result
    row: dict[str, Any] = {"label": m.label, "kind": m.kind, "step": m.step,
                           "tasks": {t: res.headline(t) for t in res.tasks},
                           "groups": {g: (res.groups.get(g) or {}).get("acc") for g in cols["groups"]}}
    row["medical_avg"] = mean_with_ci([res.acc(t) for t in cols["medical_in"] + cols["medical_ood"] if res.acc(t)])
    row["general_avg"] = mean_with_ci([res.acc(t) for t in cols["general"] if res.acc(t)])
    row["unparsed"] = res.unparsed()
    if m.variant:
        row["variant"] = m.variant
    if m.note:
        row["note"] = m.note
    if m.point is not None:
        row.update({"method": m.point.method, "params": m.point.params, "endpoint": m.point.is_endpoint()})
    return row


Reader = Callable[[Path], list[dict[str, Any]]]
"""Reads an eval step's predictions.jsonl; :func:`collect` passes one that caches, so each file is read once."""


def _predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for _, line in iter_lines(path) if line.strip()]


def _correct(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(task, item id) -> 1.0 if the prediction was right (multiple-choice rows of predictions.jsonl)."""
    return {(r["task"], str(r["id"])): float(r["pred"] == r["gold"]) for r in rows if "gold" in r}


def _doc_nll(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, int]]:
    """(task, document id) -> (summed negative log-likelihood, tokens) (perplexity rows of predictions.jsonl)."""
    return {(r["task"], str(r["id"])): (float(r["nll"]), int(r["tokens"])) for r in rows if "nll" in r}


def _acc_changes(ref: dict[tuple[str, str], float], mine: dict[tuple[str, str], float], tasks: list[str],
                 groups: list[str]) -> dict[str, Any]:
    from medtune.evaluate import metrics

    diffs: dict[str, list[float]] = {}
    for key, right in mine.items():
        if key in ref:
            diffs.setdefault(key[0], []).append(right - ref[key])
    out: dict[str, Any] = {t: {**metrics.summarize(d), "changed": sum(x != 0 for x in d)}
                           for t in tasks if (d := diffs.get(t))}
    for g in groups:  # a group's change: its aggregation applied to the per-item differences of its tasks
        parts = [diffs.get(t, []) for t in GROUPS[g].tasks]
        if all(parts):
            out[g] = {**metrics.group_summary(parts, weight_by_size=GROUPS[g].weight_by_size),
                      "changed": sum(x != 0 for p in parts for x in p)}
    return out


def _ppl_changes(ref: dict[tuple[str, str], tuple[float, int]], mine: dict[tuple[str, str], tuple[float, int]],
                 tasks: list[str]) -> dict[str, Any]:
    from medtune.evaluate import metrics

    out: dict[str, Any] = {}
    for t in tasks:
        keys = [k for k in mine if k[0] == t and k in ref]
        if keys:
            out[t] = metrics.paired_perplexity_change([ref[k][0] for k in keys], [mine[k][0] for k in keys],
                                                      [ref[k][1] for k in keys])
    return out


def answer_spread(rows: list[ModelEval], tasks: list[str], read: Reader = _predictions) -> dict[str, Any]:
    """Per task: the accuracy of always giving the most frequent gold answer, and per row (by label) the
    share of items that got the row's own most frequent answer (which choice, 1-based, and the answer as the
    model said it, when the predictions record it). A model that
    gives one answer to every item scores its prior, whatever it learned: this says when a score is that."""
    out: dict[str, Any] = {"majority": {}, "rows": {}}
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.step not in seen:
            per: dict[str, list[tuple[int, int]]] = {}
            said: dict[tuple[str, int], set[str]] = {}  # (task, choice) -> the answers the model said by it
            for p in read(r.predictions):
                if "gold" in p and p["task"] in tasks:
                    per.setdefault(p["task"], []).append((int(p["pred"]), int(p["gold"])))
                    said.setdefault((p["task"], int(p["pred"])), set()).add(str(p["answer"]) if "answer" in p else "")
            spread: dict[str, Any] = {}
            for t, pairs in per.items():
                preds = [p for p, _ in pairs]
                top = max(set(preds), key=preds.count)
                # the choice's words when every item's choice there is the same answer ("yes"); a task whose
                # options differ per item (ARC) shares only the position
                words = said.get((t, top), set())
                spread[t] = {"choice": top + 1, "answer": next(iter(words)) if len(words) == 1 and "" not in words else None,
                             "share": preds.count(top) / len(preds), "n": len(preds)}
                golds = [g for _, g in pairs]
                out["majority"].setdefault(t, max(golds.count(g) for g in set(golds)) / len(golds))
            seen[r.step] = spread
        out["rows"][r.label] = seen[r.step]
    return out


def paired_deltas(rows: list[ModelEval], tasks: list[str], groups: list[str] | None = None,
                  ppl_tasks: list[str] | None = None, read: Reader = _predictions) -> dict[str, dict[str, Any]]:
    """Per row (by label) and task: accuracy minus the base model's on the same items, with a
    percentile-bootstrap 95 % interval over items and the number of items whose correctness changed
    (for each group: the group's aggregate of the same differences, stratified by task). For each
    perplexity task: perplexity minus the base's on the same documents, bootstrapped over documents.
    Paired, so much tighter than comparing the two rows' own intervals."""
    base = next((r for r in rows if r.kind == "base"), None)
    if base is None:
        return {}
    base_rows = read(base.predictions)
    ref, ref_nll = _correct(base_rows), _doc_nll(base_rows)
    by_step: dict[str, dict[str, Any]] = {}  # a row that repeats another model reads its file once
    deltas: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.step == base.step:
            continue
        if r.step not in by_step:
            mine = read(r.predictions)
            by_step[r.step] = {**_acc_changes(ref, _correct(mine), tasks, groups or []),
                               **_ppl_changes(ref_nll, _doc_nll(mine), ppl_tasks or [])}
        deltas[r.label] = by_step[r.step]
    return deltas


def _row_at(rows: list[ModelEval], variant: str, point: Any) -> ModelEval | None:
    """The test row of ``variant``'s sweep point (the base's or the tuned model's row at alpha 0 or 1)."""
    hit = next((r for r in rows if r.variant == variant and r.point is not None and r.point.identity == point.identity),
               None)
    end = point.is_endpoint()
    if hit is None and end is not None:
        hit = next((r for r in rows if (r.kind == "base" if end == 0 else (r.kind == "tuned" and r.variant == variant))),
                   None)
    return hit


def search_vs_grid(results: StudyResults, tasks: list[str], groups: list[str],
                   read: Reader = _predictions) -> dict[str, Any]:
    """Per variant whose sweep searched: the grid's and the search's best by the rule on validation with the
    items each scored, and, where both were scored on test, the search's model's accuracy minus the grid's,
    paired on the same test items."""
    out: dict[str, Any] = {}
    for v, sw in results.sweeps.items():
        if sw.search is None:
            continue
        grid, found = sw.best("grid"), sw.best("search")
        said = lambda p, n: {"label": p.label if p else None, "medical": p.medical if p else None,  # noqa: E731
                             "general": p.general if p else None, "scored": n}
        entry: dict[str, Any] = {"grid": said(grid, sw.search.grid_scored), "search": said(found, sw.search.scored),
                                 "summary": sw.search.model_dump()}
        g_row = _row_at(results.rows, v, grid) if grid else None
        s_row = _row_at(results.rows, v, found) if found else None
        if g_row is not None and s_row is not None:
            entry["test"] = {"label": f"{s_row.label} − {g_row.label}",
                             "change": _acc_changes(_correct(read(g_row.predictions)), _correct(read(s_row.predictions)),
                                                    tasks, groups)}
        out[v] = entry
    return out


def _ship(results: StudyResults) -> dict[str, Any] | None:
    ship = results.ship
    if ship is None:
        return None
    return {"candidates": [{"label": c.label, "variant": c.variant, "medical": c.medical, "general": c.general,
                            **({"method": c.point.method, "params": c.point.params} if c.point else {})}
                           for c in ship.candidates],
            "selected": ship.selected, "rule": ship.rule.describe(), "rule_name": ship.rule.rule,
            "retain": ship.rule.retain, "base_general": ship.base_general, "row": ship.row}


def collect(results: StudyResults) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict."""
    cols = columns(results.tasks, results.groups, results.listed)
    data: dict[str, Any] = {
        "name": results.name, "model": results.model, "columns": cols,
        "display": {t: DISPLAY.get(t, t) for t in [*results.tasks, *results.groups]},
        "rows": [model_row(r, cols) for r in results.rows], "gen_rows": [model_row(r, cols) for r in results.gen_rows],
        "ship": _ship(results),
        "sweeps": {v: {"points": [p.model_dump(mode="json") for p in s.points], "selected": s.selected}
                   for v, s in results.sweeps.items()},
        "curves": {v: [[h["step"], h["loss"]] for h in t.history] for v, t in results.train.items()},
        "train": {v: {**t.run, "seconds": t.seconds, "tokens": t.history[-1]["tokens"] if t.history else 0,
                      "method": t.method} for v, t in results.train.items()},
        "mix": {v: m.model_dump() for v, m in results.mix.items()},
        "validation": results.validation.model_dump(),
        "steps": [t.model_dump() for t in results.steps],
        "commands": results.commands, "stale": results.stale}
    suite = [t for tasks in cols["suite"].values() for t in tasks]
    mc = list(dict.fromkeys(cols["medical_in"] + cols["medical_ood"] + cols["cloze"] + suite + cols["general"]))
    read = functools.cache(_predictions)  # deltas and spread read the same files: once each, per report
    data["deltas"] = paired_deltas(results.rows, mc, cols["groups"], cols["ppl"], read)
    data["search_vs_grid"] = search_vs_grid(results, mc, cols["groups"], read)
    data["gen_deltas"] = paired_deltas(results.gen_rows, cols["medical_in"] + cols["medical_ood"], read=read)
    data["spread"] = answer_spread(results.rows, cols["medical_in"] + cols["medical_ood"] + cols["cloze"] + cols["general"],
                                   read)
    return data


def write_report(results: StudyResults, rdir: Path) -> Path:
    """Write report.json, report.md, report.html and the figures into ``rdir``; returns it."""
    from medtune.report import plots, render

    data = collect(results)
    rdir = outdir.claim(rdir, "report")
    images = {"frontier.png": plots.frontier(data, rdir / "frontier.png"),
              "curves.png": plots.curves(data, rdir / "curves.png"),
              "changes.png": plots.changes(data, rdir / "changes.png")}
    images = {k: v for k, v in images.items() if v is not None}
    atomic.write_json(rdir / "report.json", data)
    atomic.write_text(rdir / "report.md", render.markdown(data, sorted(images)))
    atomic.write_text(rdir / "report.html", render.html(data, images))
    return rdir
