"""The report as a list of blocks (headings, paragraphs, tables, images, code), written out twice:
as Markdown and as one self-contained HTML file with the images embedded."""

from __future__ import annotations

import base64
import html as H
from pathlib import Path
from typing import Any

from medtune.evaluate.records import Metric
from medtune.evaluate.scores import describe
from medtune.evaluate.tasks import GROUPS, TASKS
from medtune.report.records import Changes, PairedChange, Report, Row, SweepView
from medtune.study_records import StepTime

Block = tuple[Any, ...]
"""("h1"|"h2"|"p"|"note", text) · ("table", headers, rows) · ("img", file name, alt) · ("code", text)."""


def pct(m: Metric | None, ci: bool = True) -> str:
    if not m:
        return "–"
    text = f"{100 * m.value:.1f}"
    return f"{text} [{100 * m.ci95[0]:.1f}, {100 * m.ci95[1]:.1f}]" if ci and m.ci95 else text


def ppl(m: Metric | None) -> str:
    return f"{m.value:.2f} [{m.ci95[0]:.2f}, {m.ci95[1]:.2f}]" if m and m.ci95 else "–"


def delta(m: Metric | None, ref: Metric | None) -> str:
    if not m or not ref:
        return ""
    return f"{100 * (m.value - ref.value):+.1f} points vs base"


def _ood(t: str) -> str:
    return " (OOD)" if TASKS[t].domain == "medical_ood" else ""


def results_table(data: Report, rows: list[Row], generated: bool = False) -> Block:
    """Columns: medical letter tasks and their average, cloze tasks, group (leaderboard) averages,
    general tasks and their average, perplexities (``generated``: the medical ones only)."""
    cols, show = data.columns, data.display
    med = cols.medical
    cloze, groups, general, ppls = ([], [], [], []) if generated else (cols.cloze, cols.groups, cols.general, cols.ppl)
    headers = ["model", *(show[t] + _ood(t) for t in med), "Medical avg"]
    headers += [show[t] + _ood(t) for t in cloze] + [data.show(g) + " (leaderboard)" for g in groups]
    headers += [show[t] for t in general] + (["General avg"] if general else [])
    headers += [f"{show[t]} ↓" for t in ppls]
    ship_row = data.ship.row if data.ship else None
    body = []
    for r in rows:
        name = r.label + (" ★ shipped" if r.label == ship_row else "")
        name += f" ({r.note})" if r.note else ""
        cells = [name] + [pct(r.tasks.get(t)) for t in med] + [pct(r.medical_avg)]
        cells += [pct(r.tasks.get(t)) for t in cloze] + [pct(r.groups.get(g)) for g in groups]
        cells += [pct(r.tasks.get(t)) for t in general] + ([pct(r.general_avg)] if general else [])
        cells += [ppl(r.tasks.get(t)) for t in ppls]
        body.append(cells)
    return ("table", headers, body)


FORMULATIONS = ("Two formulations of the multiple-choice tasks (the medical ones, and MMLU non-medical where its "
                "cloze column is shown). Plain task names are lm-eval's letter "
                "formulation (the options listed, the answer letter scored): the leaderboard-comparable number, but "
                "a small model often answers one letter on every item, so it can hide what the model knows. "
                "\"cloze\" columns are the OLMES cloze formulation of the same items (each option's text scored "
                "after the question): the score a small model's learning shows in. PubMedQA scores its answer "
                "words (yes / no / maybe) in both.")


def suite_tables(data: Report, rows: list[Row]) -> list[Block]:
    """Per group (e.g. the Open Medical-LLM Leaderboard's multimedqa): each model's score on every task of the
    group, then the group's aggregate."""
    out: list[Block] = []
    show = data.show
    for g, tasks in data.columns.suite.items():
        out += [("h2", f"Leaderboard suite: {show(g)}"),
                ("table", ["model", *map(show, tasks), show(g)],
                 [[r.label] + [pct(r.tasks.get(t)) for t in tasks] + [pct(r.groups.get(g))] for r in rows]),
                ("note", f"Accuracy in %, with 95 % bootstrap intervals; {show(g)}: "
                         + ("mean over all items of its tasks (size-weighted, as lm-eval aggregates this group)"
                            if GROUPS[g].weight_by_size else "unweighted mean of its tasks")
                         + ", interval from a bootstrap stratified by task.")]
    return out


def shown_answer(choice: int, answer: str | None) -> str:
    """An answer as a person reads it: the model's words (``"yes"``, ``"B"``; cut at 24 characters), or the
    choice number (``#2``) when the predictions do not record them (results of an older medtune)."""
    if answer is None:
        return f"#{choice}"
    return f'"{answer if len(answer) <= 24 else answer[:23] + "…"}"'


def spread_table(data: Report) -> list[Block]:
    """How often each model gives its most frequent answer, next to the majority-class accuracy."""
    spread = data.spread
    tasks = list(spread.majority)
    if not tasks:
        return []
    cell = lambda m: f"{shown_answer(m.choice, m.answer)} on {100 * m.share:.0f} %" if m else "–"  # noqa: E731
    return [("h2", "Answer spread"),
            ("table", ["model", *map(data.show, tasks)],
             [["always the most frequent gold answer (accuracy)"] + [f"{100 * spread.majority[t]:.1f} %" for t in tasks]]
             + [[label] + [cell(per.get(t)) for t in tasks] for label, per in spread.rows.items()]),
            ("note", "Per model: its most frequent answer (#N: choice N in the task's option order) and the "
                     "share of items it gave that answer. A model that gives one answer to nearly every item scores "
                     "about its prior: compare its accuracy with the first row, the accuracy of always answering the "
                     "most frequent gold answer.")]


def ppl_delta_table(data: Report, deltas: dict[str, Changes], ref: str = "the base model") -> list[Block]:
    """Perplexity change vs the base model (or ``ref``) on the same documents, with paired intervals."""
    tasks = data.columns.ppl
    if not deltas or not tasks or not any(t in per for per in deltas.values() for t in tasks):
        return []

    def cell(m: PairedChange | None) -> str:
        if not m:
            return "–"
        ci = f" [{m.ci95[0]:+.2f}, {m.ci95[1]:+.2f}]" if m.ci95 else " [no interval: 1 document]"
        return f"{m.value:+.2f}{ci} ({100 * (m.rel or 0.0):+.1f} %)"

    return [("table", ["model", *map(data.show, tasks)],
             [[label] + [cell(per.get(t)) for t in tasks] for label, per in deltas.items()]),
            ("note", f"Change in perplexity vs {ref} on the same documents (negative: the model predicts the "
                     "text better), with a 95 % percentile-bootstrap interval over documents (each replicate resamples "
                     "documents and recomputes both perplexities); in brackets after it, the change relative to "
                     f"{ref}'s perplexity. An interval that contains 0 is no evidence of a change.")]


def delta_table(data: Report, deltas: dict[str, Changes], tasks: list[str], ref: str = "the base model") -> list[Block]:
    """Accuracy change vs the base model (or ``ref``) on the same items, in points, with paired intervals."""
    if not deltas:
        return []

    def cell(m: PairedChange | None) -> str:
        if not m:
            return "–"
        ci = f" [{100 * m.ci95[0]:+.1f}, {100 * m.ci95[1]:+.1f}]" if m.ci95 else ""
        return f"{100 * m.value:+.1f}{ci} · {m.changed}"

    return [("table", ["model", *map(data.show, tasks)],
             [[label] + [cell(per.get(t)) for t in tasks] for label, per in deltas.items()]),
            ("note", f"Change in accuracy vs {ref} on the same items, in points, with a 95 % percentile-bootstrap "
                     "interval of the per-item difference; after the dot, the number of items whose correctness "
                     "changed. An interval that contains 0 is no evidence of a change.")]


def _headline(data: Report) -> list[Block]:
    base = next((r for r in data.rows if r.kind == "base"), None)
    ship = data.ship
    row = data.shipped_row()
    where = f"the {data.reported_split} splits"
    if ship is None or row is None:
        return [("p", "The study is not complete: no model is selected yet.")]
    if row.kind == "base":
        return [("p", f"**Ship: the base model.** No tuned or averaged model beat it on the validation splits under "
                      f"the rule: {ship.rule}. The tables below show what tuning did on {where}.")]
    text = (f"**Ship: {row.label}.** On {where} its medical average is {pct(row.medical_avg, False)} % "
            f"({delta(row.medical_avg, base.medical_avg) if base else ''})")
    general = _general_changes(data, row.label)
    if general:
        text += "; its general ability, paired with the base on the same items: " + "; ".join(general)
    text += f". It was chosen on validation splits by the rule: {ship.rule}; "
    text += ("the test splits were only scored to report." if data.reported_split == "test" else
             "the reported splits are validation splits too (a pilot reads no test split), so its scores there are "
             "not a held-out estimate.")
    return [("p", text)]


def _general_changes(data: Report, label: str) -> list[str]:
    """The paired change vs the base on each general task of the reported splits, with its interval and item
    count, and whether it clears the interval: a few items' change is shown as what it is, not as a cost."""
    out = []
    deltas = data.deltas.get(label, {})
    ppl_general = [t for t in data.columns.ppl if TASKS[t].domain == "general"]
    for t in data.columns.general + ppl_general:
        d = deltas.get(t)
        if not d:
            continue
        if t in ppl_general:
            value, ci, unit = 100 * (d.rel or 0.0), d.rel_ci95, " %"
        else:
            value, ci, unit = 100 * d.value, d.ci95, " points"
        where = (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" + ("" if ci[0] > 0 or ci[1] < 0 else ", within its interval")) \
            if ci else ", no interval"
        out.append(f"{data.show(t)} {value:+.1f}{unit}{where} ({d.n} {'documents' if t in ppl_general else 'items'})")
    return out


def _items(data: Report, rows: list[Row], unit_ppl: bool) -> str:
    """The first row's item counts per task ("PubMedQA 50, General perplexity 6520 tokens")."""
    n = {t: m.n for r in rows[:1] for t, m in r.tasks.items() if m}
    return ", ".join(f"{data.show(t)} {k}" + (" tokens" if unit_ppl and t in data.columns.ppl else "") for t, k in n.items())


def blocks(data: Report, images: list[str]) -> list[Block]:
    out: list[Block] = [("h1", f"{data.name} — medical adaptation of {data.model}")]
    out += _headline(data)
    if data.stale:
        out.append(("p", f"**Left out: {len(data.stale)} stale step(s)**, whose settings or inputs changed since "
                         f"they ran, so their results are not what the study now asks for: {', '.join(data.stale)}. "
                         "Run the study again to bring them up to date."))
    pilot = "" if data.reported_split == "test" else " (a pilot: no test split was read)"
    out += [("h2", f"Results on the {data.reported_split} splits{pilot}"), results_table(data, data.rows),
            ("note", "Accuracy in %, with 95 % bootstrap intervals per task; averages are unweighted means of the task "
                     "accuracies with normal intervals (tasks independent). Perplexity: lower is better. Items per task: "
                     + _items(data, data.rows, True) + ".")]
    cols = data.columns
    if cols.cloze:
        out.append(("note", FORMULATIONS))
    out += suite_tables(data, data.rows)
    if data.deltas:
        out += [("h2", "Change vs the base model, paired on the same items")]
        out += delta_table(data, data.deltas, cols.medical + cols.cloze + cols.groups + cols.general)
        ppl_block = ppl_delta_table(data, data.deltas)
        if ppl_block:
            out += [("h2", "Perplexity change vs the base model, paired on the same documents"), *ppl_block]
        if "changes.png" in images:
            out.append(("img", "changes.png", "paired changes vs the base model with 95 % intervals"))
    out += control_section(data, images)
    out += class_table(data)
    out += spread_table(data)
    out += reading(data)
    if data.gen_rows:
        out += _generated(data)
    if "frontier.png" in images:
        out += [("h2", "Medical vs general ability"), ("img", "frontier.png", "frontier of medical vs general ability")]
    out += _selection(data)
    out += _training(data, images)
    if data.steps:
        out += _run_time(data.steps)
    out += [("h2", "Reproduce"), ("code", "\n".join(data.commands))]
    return out


def _run_time(steps: list[StepTime]) -> list[Block]:
    """Each step's wall time, summed over its sittings; the sittings column only when a step took more than one."""
    total = sum(t.seconds for t in steps)
    several = any(t.sittings > 1 for t in steps)
    head = list(("step", "seconds", "minutes", *(("sittings",) if several else ())))
    rows = [[t.step, f"{t.seconds:.0f}", f"{t.seconds / 60:.1f}", *([str(t.sittings)] if several else [])] for t in steps]
    return [("h2", "Run time"),
            ("table", head, rows + [["all steps", f"{total:.0f}", f"{total / 60:.1f}", *([""] if several else [])]]),
            ("note", "Wall time of each step as recorded in its .medtune-step.json, summed over its sittings: a "
                     "step interrupted and resumed counts every run, the interrupted ones to their last record "
                     "(written every minute while a step runs).")]


def control_section(data: Report, images: list[str]) -> list[Block]:
    """Every model's paired change vs the general-text control, and how to read it next to the change vs base."""
    if not data.control or not data.control_deltas:
        return []
    cols = data.columns
    ref = f"the control ({data.control})"
    out: list[Block] = [
        ("h2", f"Change vs the general-text control ({data.control}), paired on the same items"),
        ("p", f"{data.control} trained with the same recipe and token budget on general text only. A change vs the "
              "base that is also a change vs the control needs the medical data; a change vs the base that is not "
              "a change vs the control is what training on any text does to this model (its answer priors, its "
              "perplexity on any text). The base's row is the control's own change, negated."),
        *delta_table(data, data.control_deltas, cols.medical + cols.cloze + cols.groups + cols.general, ref)]
    out += ppl_delta_table(data, data.control_deltas, ref)
    if "changes_vs_control.png" in images:
        out.append(("img", "changes_vs_control.png", "paired changes vs the general-text control with 95 % intervals"))
    return out


def _change(m: PairedChange | None) -> str:
    if m is None:
        return "–"
    ci = f" [{100 * m.ci95[0]:+.1f}, {100 * m.ci95[1]:+.1f}]" if m.ci95 else ""
    return f"{100 * m.value:+.1f}{ci}"


def class_table(data: Report) -> list[Block]:
    """Macro-F1 and per-class recall of each class-labelled task (PubMedQA), with paired macro-F1 changes."""
    tasks = list(dict.fromkeys(t for per in data.classes.values() for t in per))
    out: list[Block] = []
    for t in tasks:
        classes = list(TASKS[t].classes)
        body = []
        for label, per in data.classes.items():
            v = per.get(t)
            if v is None:
                continue
            body.append([label, pct(v.macro_f1), *(pct(v.recall.get(c)) for c in classes), _change(v.vs_base)]
                        + ([_change(v.vs_control)] if data.control else []))
        out += [("h2", f"{data.show(t)}: macro-F1 and recall per class"),
                ("table", ["model", "macro-F1", *(f"recall {c}" for c in classes), "macro-F1 change vs base"]
                 + ([f"vs control ({data.control})"] if data.control else []), body),
                ("note", "Macro-F1 (the benchmark's second metric): the mean of the per-class F1 scores, so every class "
                         "counts the same however rare; always answering the majority class scores low. Recall per "
                         "class: the accuracy on the items of that gold class. 95 % percentile-bootstrap intervals over "
                         "items; changes are paired (each replicate resamples the items once for both models).")]
    return out


ONE_SIDED = 0.75
"""A model whose most frequent answer covers this share of a class-labelled task's items is read by its macro-F1:
its accuracy change may be a move of its answer prior."""


def reading(data: Report) -> list[Block]:
    """Where a model's answers on a class-labelled task are one-sided, its accuracy change is read against its
    macro-F1 change, which a move of the answer prior does not buy (:func:`one_sided_verdict`)."""
    lines = []
    for label, per in data.classes.items():
        acc = data.deltas.get(label, {})
        for t, v in per.items():
            share = data.spread.rows.get(label, {}).get(t)
            if share is None or share.share < ONE_SIDED or v.vs_base is None or t not in acc:
                continue
            lines.append(f"{label} answers {shown_answer(share.choice, share.answer)} on {100 * share.share:.0f} % of "
                         f"{data.show(t)} items: accuracy vs base {_change(acc[t])}, macro-F1 vs base {_change(v.vs_base)}"
                         + (f", vs the control {_change(v.vs_control)}" if v.vs_control else "") + " — "
                         + one_sided_verdict(v.vs_base, v.vs_control))
    if not lines:
        return []
    return [("h2", "Reading one-sided answers"), *(("p", x) for x in lines)]


def one_sided_verdict(vs_base: PairedChange, vs_control: PairedChange | None) -> str:
    """What a one-sided model's macro-F1 changes say. With a control, the gain that counts is over the control:
    training on general text alone moves the prior too, so a macro-F1 gain over the base that the control
    matches is no gain of the medical data's."""
    gain = lambda c: c is not None and c.ci95 is not None and c.ci95[0] > 0  # noqa: E731
    if vs_control is not None:
        if gain(vs_control):
            return "the macro-F1 gain over the control says the medical data bought more than a move of the prior."
        if gain(vs_base):
            return ("macro-F1 gains over the base but not over the control, which trained on general text: no gain "
                    "that needs the medical data is measured beyond the move of the prior.")
    elif gain(vs_base):
        return "the macro-F1 gain says it is more than a move of the prior."
    return "macro-F1 shows no measured gain: read the accuracy change as a move of the answer prior."


def _generated(data: Report) -> list[Block]:
    """The generation-based scores of the medical tasks, their unparsed outputs and their paired changes."""
    unparsed = [f"{r.label}: " + ", ".join(f"{data.show(t)} {k} of {r.tasks[t].n}"  # type: ignore[union-attr]
                                           for t, k in r.unparsed.items() if k)
                for r in data.gen_rows if any(r.unparsed.values())]
    return [("h2", "Generation-based medical scores (greedy decoding + answer extraction, LMFlow-comparable)"),
            results_table(data, data.gen_rows, generated=True),
            ("note", "Items per task: " + _items(data, data.gen_rows, False)
                     + ". Outputs that name no option count as wrong. Unparsed outputs: "
                     + ("; ".join(unparsed) if unparsed else "none") + "."),
            *delta_table(data, data.gen_deltas, data.columns.medical)]


def _training(data: Report, images: list[str]) -> list[Block]:
    """The loss curves, each variant's run, and the data each actually trained on."""
    out: list[Block] = []
    if "curves.png" in images or data.train:
        out.append(("h2", "Training"))
        if "curves.png" in images:
            out.append(("img", "curves.png", "training loss curves"))
        kept = any(t.selected is not None for t in data.train.values())
        out.append(("table", ["variant", "method", "steps", "processes", "global batch (blocks)", "tokens", "seconds",
                              "tokens/s", "final loss", *(["model kept (step, select_on)"] if kept else [])],
                    [[v, t.method, t.steps, t.processes, t.global_batch, f"{t.tokens:,}", t.seconds,
                      f"{t.tokens / t.seconds:.0f}" if t.seconds else "–",
                      f"{data.curves[v][-1][1]:.3f}" if data.curves.get(v) else "–",
                      *([t.selected if t.selected is not None else "last"] if kept else [])]
                     for v, t in data.train.items()]))
    if data.validation_curves:
        out += [("h2", "Validation during training"), *(
            [("img", "validation.png", "validation curves during training")] if "validation.png" in images else []),
            ("table", ["variant", "task", "metric", "at step 0", "worst (step)", "at the end (step)"],
             [[v, data.show(t), m, _val(first), f"{_val(worst)} ({worst.step})", f"{_val(last)} ({last.step})"]
              for v, pts in data.validation_curves.items() for (t, m), (first, worst, last) in _curve_summary(pts).items()]),
            ("note", "Validation subsets scored every eval_every optimizer steps while training (never a test split). "
                     "Worst: the lowest accuracy (highest perplexity) along the curve; where it lies below both ends, "
                     "the score first dropped and then recovered (the stability gap of continued pretraining).")]
    if data.mix:
        out += [("h2", "Training data actually used"),
                ("table", ["variant", "general share asked", "general share realised", "blocks x tokens",
                           "tokens per source", "leaked items dropped"],
                 [[v, f"{m.general_share_target:.1%}", f"{m.general_share_realised:.1%}",
                   f"{m.blocks} x {m.block_size}", ", ".join(f"{s} {k:,}" for s, k in m.source_tokens.items()),
                   m.leakage_dropped] for v, m in data.mix.items()])]
    return out


def _val(p: Any) -> str:
    return f"{p.value:.2f}" if p.metric == "perplexity" else f"{100 * p.value:.1f}"


def _curve_summary(points: list[Any]) -> dict[tuple[str, str], tuple[Any, Any, Any]]:
    """Per (task, metric): its first point, its worst (lowest accuracy, highest perplexity), its last."""
    out = {}
    for key in dict.fromkeys((p.task, p.metric) for p in points):
        pts = sorted((p for p in points if (p.task, p.metric) == key), key=lambda p: p.step)
        sign = 1.0 if key[1] == "perplexity" else -1.0
        out[key] = (pts[0], max(pts, key=lambda p: sign * p.value), pts[-1])
    return out


def _selection(data: Report) -> list[Block]:
    out: list[Block] = []
    ship, val = data.ship, data.validation
    if ship:
        fold = lambda s: f" (fold {s.fold.take} {s.fold.share:g})" if s.fold else ""  # noqa: E731
        out += [("h2", "How the model was chosen (validation splits)"),
                ("p", f"Medical score: {describe(val.medical)}; general score: {describe(val.general)} (in %); "
                      f"up to {val.limit or 'all'} items per task. Rule: {ship.rule}."),
                ("table", ["candidate", "validation medical", "validation general", "chosen"],
                 [[c.label, f"{100 * c.medical:.1f}", f"{100 * c.general:.1f}", "✓" if i == ship.selected else ""]
                  for i, c in enumerate(ship.candidates)]),
                ("note", "Validation sources: " + "; ".join(f"{t}: {s.path or s.hub}" + fold(s)
                                                           for t, s in val.sources.items()))]
    for v, sw in data.sweeps.items():
        out += [("h2", f"Averaging sweep: {v}"), _sweep_table(sw)]
        if any(p.search and not p.search.complete for p in sw.points):
            out.append(("note", "Search points stopped early were scored on the subsample in brackets only: their "
                                "scores are not comparable with the others' and they are never selected."))
        out += _search_vs_grid(data, v)
    return out


def _sweep_table(sw: SweepView) -> Block:
    return ("table", ["point", "method", "parameters", "found by", "validation medical", "validation general",
                      "Pareto", "selected"],
            [[p.label, p.method, ", ".join(f"{k}={v}" for k, v in p.params.items()), _found_by(p),
              f"{100 * p.medical:.1f}", f"{100 * p.general:.1f}", "●" if p.pareto else "",
              "★" if i == sw.selected else ""] for i, p in enumerate(sw.points)])


def _found_by(p: Any) -> str:
    s = p.search
    if not s:
        return "grid"
    return f"search #{s.order}" + ("" if s.complete else f" (stopped at {s.items} items)")


def _search_vs_grid(data: Report, variant: str) -> list[Block]:
    """The search's best next to the grid's at the items each scored, and their test difference, paired."""
    sg = data.search_vs_grid.get(variant)
    if not sg:
        return []
    s = sg.summary
    val = lambda m: f"{100 * m:.1f}" if m is not None else "–"  # noqa: E731
    out: list[Block] = [
        ("h2", f"Search vs grid: {variant}"),
        ("table", ["", "scored items", "best by the rule (validation)", "validation medical", "validation general"],
         [[k, str(b.scored), b.label or "none", val(b.medical), val(b.general)]
          for k, b in (("grid", sg.grid), ("search", sg.search))]),
        ("note", f"Search: {s.space} space, {s.sampler} seed {s.seed}, budget {s.budget} scored items "
                 f"((point, item) pairs, the base's included), {s.proposed} points proposed, {s.complete} scored on "
                 f"all {s.items} validation items.")]
    if sg.test:
        out += delta_table(data, {sg.test.label: sg.test.change}, list(sg.test.change))
        out.append(("note", "Here the reference is the grid's model, not the base: the search's model minus the grid's."))
    return out


# --- serialisation -----------------------------------------------------------------------------------

def markdown(data: Report, images: list[str]) -> str:
    parts = []
    for b in blocks(data, images):
        kind = b[0]
        if kind == "h1":
            parts.append(f"# {b[1]}")
        elif kind == "h2":
            parts.append(f"## {b[1]}")
        elif kind == "p":
            parts.append(b[1])
        elif kind == "note":
            parts.append(f"<sub>{b[1]}</sub>")
        elif kind == "img":
            parts.append(f"![{b[2]}]({b[1]})")
        elif kind == "code":
            parts.append(f"```bash\n{b[1]}\n```")
        elif kind == "table":
            head, rows = b[1], b[2]
            esc = lambda c: str(c).replace("|", "\\|")
            parts.append("\n".join([f"| {' | '.join(map(esc, head))} |", f"|{'---|' * len(head)}"]
                                   + [f"| {' | '.join(map(esc, r))} |" for r in rows]))
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.ship td{background:#fff6d5;font-weight:600}
.note{color:#666;font-size:13px}.ship{background:#fff6d5;border-left:4px solid #e0a800;padding:.6em 1em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto}img{max-width:100%;border:1px solid #eee}"""


def _inline(text: str) -> str:
    """Escape, then turn **bold** into <strong>."""
    parts = H.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def html(data: Report, images: dict[str, Path]) -> str:
    body = []
    first_p = True
    for b in blocks(data, sorted(images)):
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{H.escape(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p{' class=ship' if first_p else ''}>{_inline(b[1])}</p>")
            first_p = False
        elif kind == "note":
            body.append(f"<p class=note>{H.escape(b[1])}</p>")
        elif kind == "img":
            b64 = base64.b64encode(Path(images[b[1]]).read_bytes()).decode()
            body.append(f'<img alt="{H.escape(b[2])}" src="data:image/png;base64,{b64}">')
        elif kind == "code":
            body.append(f"<pre><code>{H.escape(b[1])}</code></pre>")
        elif kind == "table":
            head = "".join(f"<th>{H.escape(str(h))}</th>" for h in b[1])
            rows = "".join(f"<tr{' class=ship' if '★ shipped' in str(r[0]) else ''}>"
                           + "".join(f"<td>{H.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{H.escape(data.name)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
