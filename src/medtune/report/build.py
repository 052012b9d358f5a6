"""The study report's numbers, gathered from the step directories (no model is loaded here).

:func:`collect` reads every step's results into one JSON-ready dict (written as ``report.json``),
:mod:`medtune.report.render` turns that dict into Markdown and HTML, and
:mod:`medtune.report.plots` draws the figures. Every number in the report is read from a results
file of the study; none is computed from scratch except the averages and their intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medtune import atomic
from medtune.data.adapters.rows import iter_lines
from medtune.evaluate.tasks import TASKS
from medtune.merge.records import SweepPoint, SweepResult
from medtune.merge.selection import Point, SelectionRule
from medtune.study.config import StudyConfig
from medtune.study.steps import best_of_kind, sweep_result

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


def columns(cfg: StudyConfig) -> dict[str, list[str]]:
    """The study's tasks by role: medical in-domain, medical out-of-domain, general accuracy, perplexity."""
    tasks = cfg.evaluation.tasks
    return {"medical_in": [t for t in tasks if TASKS[t].domain == "medical_in"],
            "medical_ood": [t for t in tasks if TASKS[t].domain == "medical_ood"],
            "general": [t for t in tasks if TASKS[t].domain == "general" and TASKS[t].kind == "mc"],
            "ppl": [t for t in tasks if TASKS[t].kind == "ppl"]}


def model_row(label: str, kind: str, step: str, results: dict[str, Any], cols: dict[str, list[str]]) -> dict[str, Any]:
    """One table row: each task's headline metric, the medical and general averages."""
    tasks = results["tasks"]
    row: dict[str, Any] = {"label": label, "kind": kind, "step": step,
                           "tasks": {t: (r.get("acc") or r.get("perplexity")) for t, r in tasks.items()}}
    medical = [tasks[t]["acc"] for t in cols["medical_in"] + cols["medical_ood"] if t in tasks]
    row["medical_avg"] = mean_with_ci(medical)
    row["general_avg"] = mean_with_ci([tasks[t]["acc"] for t in cols["general"] if t in tasks])
    row["unparsed"] = {t: r["unparsed"] for t, r in tasks.items() if "unparsed" in r}
    return row


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _model_rows(cfg: StudyConfig, out: Path, prefix: str, cols: dict[str, list[str]]) -> list[dict[str, Any]]:
    rows = []
    base = _read(out / prefix / "base" / "results.json")
    if base:
        rows.append(model_row("base", "base", f"{prefix}/base", base, cols))
    for v in cfg.variants:
        tuned = _read(out / prefix / v.name / "results.json")
        if tuned:
            rows.append({**model_row(v.name, "tuned", f"{prefix}/{v.name}", tuned, cols), "variant": v.name})
        res = sweep_result(out, v.name)
        sel = res.selected_point if res else None
        if sel is None:
            continue
        avg = _read(out / prefix / f"{v.name}-averaged" / "results.json")
        same = {0.0: rows[0] if rows and rows[0]["kind"] == "base" else None, 1.0: rows[-1] if tuned else None}
        end = sel.is_endpoint()
        if avg is None and end is not None and same[end] is not None:
            src = same[end]
            avg_row = {**src, "note": f"= {'base' if end == 0 else v.name}: the sweep selected α={end:g}"}
        elif avg is not None:
            avg_row = model_row("", "averaged", f"{prefix}/{v.name}-averaged", avg, cols)
        else:
            continue
        rows.append({**avg_row, "label": f"{v.name} · {sel.label}", "kind": "averaged", "variant": v.name,
                     **_point_fields(sel)})
        for kind in cfg.averaging.test_best_of:  # reported for comparison, never shipped
            pt = best_of_kind(out, v.name, kind)
            res_k = _read(out / prefix / f"{v.name}-{kind}" / "results.json")
            if pt is not None and res_k is not None and pt.identity != sel.identity:
                rows.append({**model_row(f"{v.name} · {pt.label}", "compared", f"{prefix}/{v.name}-{kind}", res_k, cols),
                             "variant": v.name, **_point_fields(pt),
                             "note": f"best {'uniform α' if kind == 'uniform' else kind} point on validation, for comparison"})
    return rows


def _point_fields(p: SweepPoint) -> dict[str, Any]:
    """What a report row says about the averaging point it is."""
    return {"method": p.method, "params": p.params, "endpoint": p.is_endpoint()}


def _correct(path: Path) -> dict[tuple[str, str], float]:
    """(task, item id) -> 1.0 if the prediction was right, from an eval step's predictions.jsonl."""
    if not path.is_file():
        return {}
    rows = (json.loads(line) for _, line in iter_lines(path) if line.strip())
    return {(r["task"], str(r["id"])): float(r["pred"] == r["gold"]) for r in rows if "gold" in r}


def paired_deltas(out: Path, rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Per row (by label) and task: accuracy minus the base model's on the same items, with a
    percentile-bootstrap 95 % interval over items and the number of items whose correctness changed.
    Paired, so much tighter than comparing the two rows' own intervals."""
    from medtune.evaluate import metrics

    base = next((r for r in rows if r["kind"] == "base"), None)
    if base is None:
        return {}
    ref = _correct(out / base["step"] / "predictions.jsonl")
    by_step: dict[str, dict[str, Any]] = {}  # a row that repeats another model reads its file once
    deltas: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["step"] == base["step"]:
            continue
        if r["step"] not in by_step:
            diffs: dict[str, list[float]] = {}
            for key, right in _correct(out / r["step"] / "predictions.jsonl").items():
                if key[0] in tasks and key in ref:
                    diffs.setdefault(key[0], []).append(right - ref[key])
            by_step[r["step"]] = {t: {**metrics.summarize(d), "changed": sum(x != 0 for x in d)}
                                  for t in tasks if (d := diffs.get(t))}
        deltas[r["label"]] = by_step[r["step"]]
    return deltas


def shipped(cfg: StudyConfig, out: Path) -> dict[str, Any] | None:
    """The model to ship: the selection rule applied, on validation scores, to the base and every
    variant's selected averaged model (alpha = 1 being the tuned model itself)."""
    cands: list[dict[str, Any]] = []
    base_general = None
    for v in cfg.variants:
        res = sweep_result(out, v.name)
        sel = res.selected_point if res else None
        if res is None or sel is None:
            return None
        if base_general is None:
            base_general = res.base_general
            base_pt = res.find("linear", {"alpha": 0.0})
            cands.append({"label": "base", "variant": None, "medical": base_pt.medical, "general": base_pt.general})  # type: ignore[union-attr]
        cands.append({"label": f"{v.name} · {sel.label}", "variant": v.name, "medical": sel.medical,
                      "general": sel.general, **_point_fields(sel)})
    if base_general is None:
        return None
    av = cfg.averaging
    rule = SelectionRule(av.rule, av.retain, av.weight)
    idx = rule.pick([Point(c["label"], c["medical"], c["general"]) for c in cands], base_general)
    return {"candidates": cands, "selected": idx, "rule": rule.describe(), "rule_name": av.rule, "retain": av.retain,
            "base_general": base_general}


def step_times(out: Path) -> list[dict[str, Any]]:
    """Wall time of every finished step (from its ``.medtune-step.json``), in the order they finished."""
    times = []
    for path in out.glob("*/*/.medtune-step.json"):
        state = _read(path)
        if state and state.get("state") == "done" and "seconds" in state and state.get("step") != "report":
            times.append({"step": state["step"], "seconds": state["seconds"], "finished": state.get("finished", "")})
    return sorted(times, key=lambda t: (t["finished"], t["step"]))


def collect(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict."""
    cols = columns(cfg)
    data: dict[str, Any] = {"name": cfg.name, "model": cfg.model.spec, "columns": cols,
                            "display": {t: DISPLAY.get(t, t) for t in cfg.evaluation.tasks},
                            "rows": _model_rows(cfg, out, "eval", cols), "gen_rows": _model_rows(cfg, out, "eval-gen", cols),
                            "ship": shipped(cfg, out), "sweeps": {}, "curves": {}, "mix": {}, "train": {},
                            "validation": {"medical": cfg.averaging.medical_tasks, "general": cfg.averaging.general_tasks,
                                           "sources": {t: s.model_dump(mode="json", exclude_none=True)
                                                       for t, s in cfg.evaluation.validation_sources.items()},
                                           "limit": cfg.averaging.limit}}
    for v in cfg.variants:
        sweep = sweep_result(out, v.name)
        if sweep:
            data["sweeps"][v.name] = {"points": [p.model_dump(mode="json") for p in sweep.points],
                                      "selected": sweep.selected}
        curves = _read(out / "train" / v.name / "curves.json")
        if curves:
            data["curves"][v.name] = [[h["step"], h["loss"]] for h in curves["history"]]
            data["train"][v.name] = {**curves["run"], "seconds": round(curves["seconds"], 1),
                                     "tokens": curves["history"][-1]["tokens"] if curves["history"] else 0,
                                     "method": cfg.train_config(v, out).method}
        manifest = _read(out / "train" / v.name / "data" / "manifest.json")
        if manifest:
            data["mix"][v.name] = {"general_share_target": (manifest["mix"] or {}).get("general_share_target", 0.0),
                                   "general_share_realised": manifest["packing"]["general_share"],
                                   "source_tokens": manifest["packing"]["source_tokens"],
                                   "blocks": manifest["packing"]["blocks"], "block_size": manifest["packing"]["block_size"],
                                   "leakage_dropped": manifest["leakage"]["dropped_items"]}
    data["steps"] = step_times(out)
    mc = cols["medical_in"] + cols["medical_ood"] + cols["general"]
    data["deltas"] = paired_deltas(out, data["rows"], mc)
    data["gen_deltas"] = paired_deltas(out, data["gen_rows"], cols["medical_in"] + cols["medical_ood"])
    if data["ship"] is not None:
        pick = data["ship"]["candidates"][data["ship"]["selected"]]
        data["ship"]["row"] = next((r["label"] for r in data["rows"]
                                    if (pick["variant"] is None and r["kind"] == "base")
                                    or (r.get("variant") == pick["variant"] and r["kind"] == "averaged")), None)
    return data


def write_report(cfg: StudyConfig, out: Path) -> Path:
    """Write report/report.json, report.md, report.html and the figures; returns the report directory."""
    from medtune.report import plots, render

    data = collect(cfg, out)
    data["commands"] = render.commands(cfg, out)
    rdir = out / "report"
    images = {"frontier.png": plots.frontier(data, rdir / "frontier.png"),
              "curves.png": plots.curves(data, rdir / "curves.png")}
    images = {k: v for k, v in images.items() if v is not None}
    atomic.write_json(rdir / "report.json", data)
    atomic.write_text(rdir / "report.md", render.markdown(data, sorted(images)))
    atomic.write_text(rdir / "report.html", render.html(data, images))
    return rdir


def adapter_of(row: dict[str, Any], out: Path) -> Path | None:
    """The directory that makes a report row's model on top of the base: none for the base, the merge
    directory for an averaged model (an adapter, or a full model for TIES / DARE / SLERP on LoRA), the
    trained one for a tuned model or an averaged one at alpha 1."""
    variant = row.get("variant")
    if not variant or (row["kind"] == "averaged" and row.get("endpoint") == 0.0):
        return None
    if row["kind"] == "averaged" and row.get("endpoint") is None:
        return out / "merge" / variant
    return out / "train" / variant / "model"
