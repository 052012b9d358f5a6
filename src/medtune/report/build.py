"""The study report's numbers, from the study's results object (no model is loaded here).

:func:`collect` turns a :class:`~medtune.results.StudyResults` (gathered by the study from its
step directories) into one JSON-ready dict (written as ``report.json``),
:mod:`medtune.report.render` turns that dict into Markdown and HTML, and
:mod:`medtune.report.plots` draws the figures. Every number in the report comes from a results
record of the study; none is computed from scratch except the averages, their intervals and the
paired differences. The report sits below the study: it imports nothing from ``medtune.study``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medtune import atomic, outdir
from medtune.data.adapters.rows import iter_lines
from medtune.evaluate.tasks import TASKS
from medtune.results import ModelEval, StudyResults

DISPLAY = {"pubmedqa": "PubMedQA", "medmcqa": "MedMCQA", "medqa4": "MedQA-USMLE", "arc_easy": "ARC-Easy",
           "arc_challenge": "ARC-Challenge", "mmlu_general": "MMLU (non-medical)", "ppl_general": "Perplexity"}
"""Column titles of the report's tables."""


def mean_with_ci(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean of task accuracies with a normal 95 % interval, the tasks' items taken as independent.

    stderr(mean of k tasks) = sqrt(sum of stderr_i^2) / k; the interval is clipped to [0, 1]."""
    if not parts:
        return None
    k = len(parts)
    value = sum(p["value"] for p in parts) / k
    se = math.sqrt(sum(p["stderr"] ** 2 for p in parts)) / k
    return {"value": value, "stderr": se, "ci95": [max(0.0, value - 1.96 * se), min(1.0, value + 1.96 * se)], "n": sum(p["n"] for p in parts)}


def columns(tasks: list[str]) -> dict[str, list[str]]:
    """The study's tasks by role: medical in-domain, medical out-of-domain, general accuracy, perplexity."""
    return {"medical_in": [t for t in tasks if TASKS[t].domain == "medical_in" and TASKS[t].kind == "mc"],
            "medical_ood": [t for t in tasks if TASKS[t].domain == "medical_ood" and TASKS[t].kind == "mc"],
            "general": [t for t in tasks if TASKS[t].domain == "general" and TASKS[t].kind == "mc"],
            "ppl": [t for t in tasks if TASKS[t].kind == "ppl"]}


def model_row(m: ModelEval, cols: dict[str, list[str]]) -> dict[str, Any]:
    """One table row: each task's headline metric, the medical and general averages, the averaging point."""
    res = m.result
    row: dict[str, Any] = {"label": m.label, "kind": m.kind, "step": m.step,
                           "tasks": {t: res.headline(t) for t in res.tasks}}
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


def _correct(path: Path) -> dict[tuple[str, str], float]:
    """(task, item id) -> 1.0 if the prediction was right, from an eval step's predictions.jsonl."""
    if not path.is_file():
        return {}
    rows = (json.loads(line) for _, line in iter_lines(path) if line.strip())
    return {(r["task"], str(r["id"])): float(r["pred"] == r["gold"]) for r in rows if "gold" in r}


def paired_deltas(rows: list[ModelEval], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Per row (by label) and task: accuracy minus the base model's on the same items, with a
    percentile-bootstrap 95 % interval over items and the number of items whose correctness changed.
    Paired, so much tighter than comparing the two rows' own intervals."""
    from medtune.evaluate import metrics

    base = next((r for r in rows if r.kind == "base"), None)
    if base is None:
        return {}
    ref = _correct(base.predictions)
    by_step: dict[str, dict[str, Any]] = {}  # a row that repeats another model reads its file once
    deltas: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.step == base.step:
            continue
        if r.step not in by_step:
            diffs: dict[str, list[float]] = {}
            for key, right in _correct(r.predictions).items():
                if key[0] in tasks and key in ref:
                    diffs.setdefault(key[0], []).append(right - ref[key])
            by_step[r.step] = {t: {**metrics.summarize(d), "changed": sum(x != 0 for x in d)}
                               for t in tasks if (d := diffs.get(t))}
        deltas[r.label] = by_step[r.step]
    return deltas


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
    cols = columns(results.tasks)
    data: dict[str, Any] = {
        "name": results.name, "model": results.model, "columns": cols,
        "display": {t: DISPLAY.get(t, t) for t in results.tasks},
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
        "commands": results.commands}
    mc = cols["medical_in"] + cols["medical_ood"] + cols["general"]
    data["deltas"] = paired_deltas(results.rows, mc)
    data["gen_deltas"] = paired_deltas(results.gen_rows, cols["medical_in"] + cols["medical_ood"])
    return data


def write_report(results: StudyResults, rdir: Path) -> Path:
    """Write report.json, report.md, report.html and the figures into ``rdir``; returns it."""
    from medtune.report import plots, render

    data = collect(results)
    rdir = outdir.claim(rdir, "report")
    images = {"frontier.png": plots.frontier(data, rdir / "frontier.png"),
              "curves.png": plots.curves(data, rdir / "curves.png")}
    images = {k: v for k, v in images.items() if v is not None}
    atomic.write_json(rdir / "report.json", data)
    atomic.write_text(rdir / "report.md", render.markdown(data, sorted(images)))
    atomic.write_text(rdir / "report.html", render.html(data, images))
    return rdir
