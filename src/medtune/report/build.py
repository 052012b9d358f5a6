"""The study report's numbers, from the study's results object (no model is loaded here).

:func:`collect` turns a :class:`~medtune.study_records.StudyResults` (gathered by the study from its
step directories) into one typed :class:`~medtune.report.records.Report`, whose dump is
``report.json``; :mod:`medtune.report.render` writes it as Markdown and HTML and
:mod:`medtune.report.plots` draws its figures. Every number in the report comes from a results
record of the study; none is computed from scratch except the averages, their intervals and the
paired differences. The report sits below the study: it imports nothing from ``medtune.study``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medtune import atomic, outdir
from medtune.data.adapters.mmlu import MULTIMEDQA_MMLU_SUBJECTS
from medtune.evaluate.records import Metric, Prediction
from medtune.evaluate.tasks import GROUPS, TASKS
from medtune.merge.records import SweepPoint
from medtune.report.records import (AnswerShare, BestOf, CandidateView, Changes, ClassView, Columns, PairedChange,
                                    PairedTest, Report, Row, SearchVsGrid, ShipView, Spread, SweepView, TrainRow)
from medtune.study_records import ModelEval, StudyResults

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


def mean_with_ci(parts: Sequence[Metric]) -> Metric | None:
    """Mean of task accuracies with a normal 95 % interval, the tasks' items taken as independent.

    stderr(mean of k tasks) = sqrt(sum of stderr_i^2) / k; the interval is clipped to [0, 1]."""
    if not parts:
        return None
    k = len(parts)
    value = sum(p.value for p in parts) / k
    se = math.sqrt(sum((p.stderr or 0.0) ** 2 for p in parts)) / k
    return Metric(value=value, stderr=se, ci95=(max(0.0, value - 1.96 * se), min(1.0, value + 1.96 * se)),
                  n=sum(p.n for p in parts))


def columns(tasks: list[str], groups: list[str] | None = None, listed: list[str] | None = None) -> Columns:
    """The study's tasks by role, in the main table's column order: medical multiple-choice in lm-eval's
    letter formulation (in-domain, out-of-domain), the cloze formulation (of any domain: MMLU
    non-medical's too), task groups (leaderboard averages), general accuracy in lm-eval's
    formulation, perplexity. Each task has one column; the averages are over the lm-eval ones. A task
    that is in the study only through a group (not in ``listed``) gets no column of its own: it is in the group's table (``suite``)."""
    groups = groups or []
    through_group = {t for g in groups for t in GROUPS[g].tasks} - set(tasks if listed is None else listed)
    shown = [t for t in tasks if t not in through_group]
    mc = lambda t, dom: TASKS[t].kind == "mc" and TASKS[t].domain == dom
    return Columns(medical_in=[t for t in shown if mc(t, "medical_in") and not is_cloze(t)],
                   medical_ood=[t for t in shown if mc(t, "medical_ood") and not is_cloze(t)],
                   cloze=[t for t in shown if TASKS[t].kind == "mc" and is_cloze(t)],
                   groups=list(groups),
                   general=[t for t in shown if mc(t, "general") and not is_cloze(t)],
                   ppl=[t for t in shown if TASKS[t].kind == "ppl"],
                   suite={g: list(GROUPS[g].tasks) for g in groups})


def model_row(m: ModelEval, cols: Columns) -> Row:
    """One table row: each task's headline metric, each group's aggregate, the medical and general
    averages, the averaging point. The medical average is over the letter-formulation tasks shown."""
    res = m.result
    accs = lambda tasks: [a for t in tasks if (a := res.acc(t))]  # noqa: E731
    point = {"method": m.point.method, "params": m.point.params, "endpoint": m.point.is_endpoint()} if m.point else {}
    return Row(label=m.label, kind=m.kind, step=m.step, tasks={t: res.headline(t) for t in res.tasks},
               groups={g: res.group_acc(g) for g in cols.groups}, medical_avg=mean_with_ci(accs(cols.medical)),
               general_avg=mean_with_ci(accs(cols.general)), unparsed=res.unparsed(),
               **({"variant": m.variant} if m.variant else {}), **({"note": m.note} if m.note else {}), **point)


Reader = Callable[[Path], list[Prediction]]
"""Reads an eval step's predictions.jsonl; :func:`collect` passes one that caches, so each file is read once."""

_predictions: Reader = Prediction.read

def _correct(rows: list[Prediction]) -> dict[tuple[str, str], float]:
    """(task, item id) -> 1.0 if the prediction was right (multiple-choice rows of predictions.jsonl)."""
    return {(r.task, r.id): r.correct for r in rows if r.is_choice}


def _doc_nll(rows: list[Prediction]) -> dict[tuple[str, str], tuple[float, int]]:
    """(task, document id) -> (summed negative log-likelihood, tokens) (perplexity rows of predictions.jsonl)."""
    return {(r.task, r.id): (r.nll, r.tokens or 0) for r in rows if r.nll is not None}


def _acc_changes(ref: dict[tuple[str, str], float], mine: dict[tuple[str, str], float], tasks: list[str],
                 groups: list[str]) -> Changes:
    from medtune.evaluate import metrics

    diffs: dict[str, list[float]] = {}
    for key, right in mine.items():
        if key in ref:
            diffs.setdefault(key[0], []).append(right - ref[key])
    out: Changes = {t: PairedChange(**metrics.summarize(d), changed=sum(x != 0 for x in d))
                    for t in tasks if (d := diffs.get(t))}
    for g in groups:  # a group's change: its aggregation applied to the per-item differences of its tasks
        parts = [diffs.get(t, []) for t in GROUPS[g].tasks]
        if all(parts):
            out[g] = PairedChange(**metrics.group_summary(parts, weight_by_size=GROUPS[g].weight_by_size),
                                  changed=sum(x != 0 for p in parts for x in p))
    return out


def _ppl_changes(ref: dict[tuple[str, str], tuple[float, int]], mine: dict[tuple[str, str], tuple[float, int]],
                 tasks: list[str]) -> Changes:
    from medtune.evaluate import metrics

    out: Changes = {}
    for t in tasks:
        keys = [k for k in mine if k[0] == t and k in ref]
        if keys:
            out[t] = PairedChange(**metrics.paired_perplexity_change([ref[k][0] for k in keys], [mine[k][0] for k in keys],
                                                                     [ref[k][1] for k in keys]))
    return out


def _spread_of(preds: list[Prediction], tasks: list[str], majority: dict[str, float]) -> dict[str, AnswerShare]:
    """Per task, the model's most frequent answer and its share; fills ``majority`` for tasks it lacks."""
    per: dict[str, list[tuple[int, int]]] = {}
    said: dict[tuple[str, int], set[str]] = {}  # (task, choice) -> the answers the model said by it
    for p in preds:
        if p.is_choice and p.task in tasks:
            per.setdefault(p.task, []).append((int(p.pred), int(p.gold)))  # type: ignore[arg-type]
            said.setdefault((p.task, int(p.pred)), set()).add(p.answer if p.answer is not None else "")  # type: ignore[arg-type]
    spread: dict[str, AnswerShare] = {}
    for t, pairs in per.items():
        choices = [c for c, _ in pairs]
        top = max(set(choices), key=choices.count)
        # the choice's words when every item's choice there is the same answer ("yes"); a task whose
        # options differ per item (ARC) shares only the position
        words = said.get((t, top), set())
        spread[t] = AnswerShare(choice=top + 1, answer=next(iter(words)) if len(words) == 1 and "" not in words else None,
                                share=choices.count(top) / len(choices), n=len(choices))
        golds = [g for _, g in pairs]
        majority.setdefault(t, max(golds.count(g) for g in set(golds)) / len(golds))
    return spread


def answer_spread(rows: list[ModelEval], tasks: list[str], read: Reader = _predictions) -> Spread:
    """Per task: the accuracy of always giving the most frequent gold answer, and per row (by label) the
    share of items that got the row's own most frequent answer (which choice, 1-based, and the answer as the
    model said it, when the predictions record it). A model that
    gives one answer to every item scores its prior, whatever it learned: this says when a score is that."""
    majority: dict[str, float] = {}
    seen: dict[str, dict[str, AnswerShare]] = {}
    for r in rows:
        if r.step not in seen:
            seen[r.step] = _spread_of(read(r.predictions), tasks, majority)
    return Spread(majority=majority, rows={r.label: seen[r.step] for r in rows})


def paired_deltas(rows: list[ModelEval], tasks: list[str], groups: list[str] | None = None,
                  ppl_tasks: list[str] | None = None, read: Reader = _predictions,
                  reference: str = "base") -> dict[str, Changes]:
    """Per row (by label) and task: accuracy minus the reference model's (the row of kind ``reference``: the
    base, or the general-text control) on the same items, with a percentile-bootstrap 95 % interval over
    items and the number of items whose correctness changed (for each group: the group's aggregate of the
    same differences, stratified by task). For each perplexity task: perplexity minus the reference's on the
    same documents, bootstrapped over documents. Paired, so much tighter than comparing the two rows' own
    intervals."""
    base = next((r for r in rows if r.kind == reference), None)
    if base is None:
        return {}
    base_rows = read(base.predictions)
    ref, ref_nll = _correct(base_rows), _doc_nll(base_rows)
    by_step: dict[str, Changes] = {}  # a row that repeats another model reads its file once
    deltas: dict[str, Changes] = {}
    for r in rows:
        if r.step == base.step:
            continue
        if r.step not in by_step:
            mine = read(r.predictions)
            by_step[r.step] = {**_acc_changes(ref, _correct(mine), tasks, groups or []),
                               **_ppl_changes(ref_nll, _doc_nll(mine), ppl_tasks or [])}
        deltas[r.label] = by_step[r.step]
    return deltas


def _classes_of(rows: list[Prediction], task: str) -> dict[str, tuple[int, int]]:
    """Item id -> (gold, predicted) class of a task's multiple-choice rows."""
    return {r.id: (int(r.gold), int(r.pred)) for r in rows  # type: ignore[arg-type]
            if r.task == task and r.is_choice and r.pred is not None}


def _f1_change(ref: dict[str, tuple[int, int]], mine: dict[str, tuple[int, int]], k: int) -> PairedChange | None:
    from medtune.evaluate import metrics

    ids = [i for i in mine if i in ref]
    if not ids:
        return None
    out = metrics.paired_macro_f1_change([mine[i][0] for i in ids], [ref[i][1] for i in ids],
                                         [mine[i][1] for i in ids], k)
    return PairedChange(**out)


def class_views(rows: list[ModelEval], tasks: list[str], read: Reader = _predictions) -> dict[str, dict[str, ClassView]]:
    """Per row (by label), per class-labelled task (PubMedQA: yes / no / maybe): its macro-F1 and per-class
    recall (from results.json), and its macro-F1 minus the base's and the control's on the same items, with
    a paired bootstrap interval. A model that says "yes" to most items can gain accuracy on a "yes"-heavy
    test set without knowing more; macro-F1 counts every class the same, so it cannot."""
    base = next((r for r in rows if r.kind == "base"), None)
    control = next((r for r in rows if r.kind == "control"), None)
    out: dict[str, dict[str, ClassView]] = {}
    for t in (t for t in tasks if TASKS[t].classes):
        k = len(TASKS[t].classes)

        def vs(ref: ModelEval | None, r: ModelEval) -> PairedChange | None:
            if ref is None or ref.step == r.step:
                return None
            return _f1_change(_classes_of(read(ref.predictions), t), _classes_of(read(r.predictions), t), k)

        for r in rows:
            score = r.result.tasks.get(t)
            if score is None or score.macro_f1 is None:
                continue
            out.setdefault(r.label, {})[t] = ClassView(macro_f1=score.macro_f1, recall=score.recall_by_class or {},
                                                       vs_base=vs(base, r), vs_control=vs(control, r))
    return out


def _row_at(rows: list[ModelEval], variant: str, point: SweepPoint) -> ModelEval | None:
    """The test row of ``variant``'s sweep point (the base's or the tuned model's row at alpha 0 or 1)."""
    hit = next((r for r in rows if r.variant == variant and r.point is not None and r.point.identity == point.identity),
               None)
    end = point.is_endpoint()
    if hit is None and end is not None:
        hit = next((r for r in rows if (r.kind == "base" if end == 0 else
                                        (r.kind in ("tuned", "control") and r.variant == variant))), None)
    return hit


def _best_of(p: SweepPoint | None, scored: int) -> BestOf:
    return BestOf(label=p.label if p else None, medical=p.medical if p else None, general=p.general if p else None,
                  scored=scored)


def search_vs_grid(results: StudyResults, tasks: list[str], groups: list[str],
                   read: Reader = _predictions) -> dict[str, SearchVsGrid]:
    """Per variant whose sweep searched: the grid's and the search's best by the rule on validation with the
    items each scored, and, where both were scored on test, the search's model's accuracy minus the grid's,
    paired on the same test items."""
    out: dict[str, SearchVsGrid] = {}
    for v, sw in results.sweeps.items():
        if sw.search is None:
            continue
        grid, found = sw.best("grid"), sw.best("search")
        g_row = _row_at(results.rows, v, grid) if grid else None
        s_row = _row_at(results.rows, v, found) if found else None
        test = None
        if g_row is not None and s_row is not None:
            test = PairedTest(label=f"{s_row.label} − {g_row.label}",
                              change=_acc_changes(_correct(read(g_row.predictions)), _correct(read(s_row.predictions)),
                                                  tasks, groups))
        out[v] = SearchVsGrid(grid=_best_of(grid, sw.search.grid_scored), search=_best_of(found, sw.search.scored),
                              summary=sw.search, **({"test": test} if test else {}))
    return out


def _ship(results: StudyResults) -> ShipView | None:
    ship = results.ship
    if ship is None:
        return None
    point = lambda c: {"method": c.point.method, "params": c.point.params} if c.point else {}  # noqa: E731
    return ShipView(candidates=[CandidateView(label=c.label, variant=c.variant, medical=c.medical, general=c.general,
                                              **point(c)) for c in ship.candidates],
                    selected=ship.selected, rule=ship.rule.describe(), rule_name=ship.rule.rule,
                    retain=ship.rule.retain, base_general=ship.base_general, row=ship.row)


def collect(results: StudyResults) -> Report:
    """Everything the report shows, as one typed record (its dump is report.json)."""
    cols = columns(results.tasks, results.groups, results.listed)
    suite = [t for tasks in cols.suite.values() for t in tasks]
    mc = list(dict.fromkeys(cols.medical + cols.cloze + suite + cols.general))
    read = functools.cache(_predictions)  # deltas and spread read the same files: once each, per report
    return Report(
        name=results.name, model=results.model, columns=cols,
        display={t: DISPLAY.get(t, t) for t in [*results.tasks, *results.groups]},
        rows=[model_row(r, cols) for r in results.rows], gen_rows=[model_row(r, cols) for r in results.gen_rows],
        ship=_ship(results),
        sweeps={v: SweepView(points=s.points, selected=s.selected) for v, s in results.sweeps.items()},
        curves={v: [(h.step, h.loss) for h in t.history] for v, t in results.train.items()},
        train={v: TrainRow.model_validate({**t.run.model_dump(mode="json"), "seconds": t.seconds,
                                           "tokens": t.history[-1].tokens if t.history else 0, "method": t.method,
                                           "selected": t.selected.step if t.selected else None})
               for v, t in results.train.items()},
        mix=results.mix, validation=results.validation, steps=results.steps,
        commands=results.commands, stale=results.stale,
        deltas=paired_deltas(results.rows, mc, cols.groups, cols.ppl, read),
        search_vs_grid=search_vs_grid(results, mc, cols.groups, read),
        gen_deltas=paired_deltas(results.gen_rows, cols.medical, read=read),
        spread=answer_spread(results.rows, cols.medical + cols.cloze + cols.general, read),
        control=next((r.label for r in results.rows if r.kind == "control"), None),
        control_deltas=paired_deltas(results.rows, mc, cols.groups, cols.ppl, read, reference="control"),
        classes=class_views(results.rows, cols.medical, read),
        validation_curves={v: t.validation for v, t in results.train.items() if t.validation},
        reported_split=results.reported_split)


def write_report(results: StudyResults, rdir: Path) -> Path:
    """Write report.json, report.md, report.html and the figures into ``rdir``; returns it."""
    from medtune.report import plots, render

    report = collect(results)
    rdir = outdir.claim(rdir, "report")
    images = {"frontier.png": plots.frontier(report, rdir / "frontier.png"),
              "curves.png": plots.curves(report, rdir / "curves.png"),
              "validation.png": plots.validation_curves(report, rdir / "validation.png"),
              "changes.png": plots.changes(report, rdir / "changes.png"),
              "changes_vs_control.png": plots.changes(report, rdir / "changes_vs_control.png", control=True)}
    images = {k: v for k, v in images.items() if v is not None}
    atomic.write_json(rdir / "report.json", report.model_dump(mode="json"))
    atomic.write_text(rdir / "report.md", render.markdown(report, sorted(images)))
    atomic.write_text(rdir / "report.html", render.html(report, images))
    return rdir
