"""``medtune compare``: one model's paired changes against another's, from their two evaluations.

A study's report gives every model's change against the base and the general-text control; the questions
a reader asks next are between other pairs (LoRA vs full fine-tuning, replay vs none, an averaged model vs
its tuned parent). Their own intervals overlap long before their difference is uncertain: the paired
change, on the items (or documents) both were scored on, is the measure. This reads two eval directories
(``medtune eval``'s, or a study's ``eval/<model>``) and computes, per task both scored, the change in
accuracy with a percentile-bootstrap 95 % interval over items and the items whose correctness changed; for
a perplexity task the change over documents; for a class-labelled task (PubMedQA) the change in macro-F1
too. The arithmetic is the report's (:func:`medtune.report.build.paired_deltas`), so the numbers are those
a report would print for the same pair.

Items are paired by (task, id). Two evaluations of different items are refused; items only one of them
scored are left out and counted; the same item with another gold answer is refused (the two scored
different data under one name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medtune.config import Names, StrictModel
from medtune.errors import ConfigError
from medtune.evaluate.records import Prediction
from medtune.evaluate.tasks import TASKS
from medtune.records import Record
from medtune.report.records import PairedChange


class CompareConfig(StrictModel):
    """Two evaluations of the same items: the reference and the candidate compared with it."""

    reference: str = ""
    """The reference model's evaluation: an eval directory (with predictions.jsonl) or its results.json."""
    candidate: str = ""
    """The evaluation compared with the reference; its change is candidate minus reference."""
    tasks: Names = Field(default_factory=list)
    """The tasks compared (default: every task both evaluations scored)."""
    format: Literal["table", "json"] = "table"
    """table: a table for a person; json: the comparison as JSON on stdout (for a script)."""


class Compared(Record):
    """One task's change, model minus reference, on the items both scored."""

    task: str
    metric: str
    """``acc`` (points), ``perplexity`` (the change also as a share of the reference's) or ``macro_f1``."""
    reference: float | None
    """The reference's score on the paired items (perplexity: over the paired documents)."""
    model: float | None
    change: PairedChange
    unpaired: int = 0
    """Items (documents) only one of the two evaluations scored, left out."""


class Comparison(Record):
    reference: str
    model: str
    rows: list[Compared]


def _eval_dir(path: str, field: str) -> Path:
    if not path:
        raise ConfigError(f"{field}: give an eval directory (or its results.json)")
    p = Path(path)
    d = p.parent if p.name == "results.json" else p
    if not (d / "predictions.jsonl").is_file():
        why = "does not exist" if not d.exists() else "has no predictions.jsonl (was it written by medtune eval?)"
        raise ConfigError(f"{field}: {d} {why}")
    return d


def _check_golds(task: str, ref: dict[str, Prediction], mine: dict[str, Prediction], where: tuple[Path, Path]) -> None:
    for i, r in ref.items():
        m = mine.get(i)
        if m is not None and r.gold != m.gold:
            raise ConfigError(f"{task} item {i}: gold answer {r.gold} in {where[0]} but {m.gold} in {where[1]}; "
                              "the two evaluations scored different data under the same item ids")


def compare(reference: Path, model: Path, tasks: list[str] | None = None) -> Comparison:
    """Paired changes of ``model`` against ``reference`` (eval directories), per task (see the module docstring)."""
    ref_rows, mine_rows = Prediction.read(reference / "predictions.jsonl"), Prediction.read(model / "predictions.jsonl")
    scored = lambda rows: list(dict.fromkeys(r.task for r in rows))  # noqa: E731
    both = [t for t in scored(ref_rows) if t in set(scored(mine_rows))]
    if tasks:
        missing = [t for t in tasks if t not in both]
        if missing:
            raise ConfigError(f"tasks: {', '.join(missing)} not scored in both {reference} and {model} "
                              f"(both scored: {', '.join(both) or 'none'})")
        both = list(tasks)
    if not both:
        raise ConfigError(f"{reference} and {model} scored no task in common "
                          f"({', '.join(scored(ref_rows)) or 'none'} vs {', '.join(scored(mine_rows)) or 'none'})")
    rows: list[Compared] = []
    for t in both:
        ref_t = {r.id: r for r in ref_rows if r.task == t}
        mine_t = {r.id: r for r in mine_rows if r.task == t}
        shared = [i for i in ref_t if i in mine_t]
        if not shared:
            raise ConfigError(f"{t}: {reference} and {model} scored no item in common (other data, split or limit)")
        rows += _task_rows(t, [ref_t[i] for i in shared], [mine_t[i] for i in shared],
                           len(ref_t.keys() ^ mine_t.keys()), (reference, model))
    return Comparison(reference=str(reference), model=str(model), rows=rows + _group_rows(rows, ref_rows, mine_rows))


def _group_rows(rows: list[Compared], ref: list[Prediction], mine: list[Prediction]) -> list[Compared]:
    """Each task group (``mmlu_medical``, ``multimedqa``) whose tasks were all compared: its aggregate of the
    per-item differences, stratified by task, as the report and lm-eval aggregate a group."""
    from medtune.evaluate import metrics
    from medtune.evaluate.tasks import GROUPS

    done = {r.task for r in rows if r.metric == "acc"}
    correct = lambda preds: {(r.task, r.id): r.correct for r in preds if r.is_choice}  # noqa: E731
    a, b = correct(ref), correct(mine)
    out = []
    for name, group in GROUPS.items():
        if not set(group.tasks) <= done:
            continue
        keys = [[k for k in a if k[0] == t and k in b] for t in group.tasks]
        mean = lambda side, ks: sum(side[k] for k in ks) / len(ks)  # noqa: E731
        flat = [k for ks in keys for k in ks]
        agg = (lambda side: mean(side, flat)) if group.weight_by_size else \
            (lambda side: sum(mean(side, ks) for ks in keys) / len(keys))
        ch = PairedChange(**metrics.group_summary([[b[k] - a[k] for k in ks] for ks in keys],
                                                  weight_by_size=group.weight_by_size),
                          changed=sum(a[k] != b[k] for k in flat))
        out.append(Compared(task=name, metric="acc", reference=agg(a), model=agg(b), change=ch))
    return out


def _task_rows(task: str, ref: list[Prediction], mine: list[Prediction], unpaired: int,
               where: tuple[Path, Path]) -> list[Compared]:
    """One task's rows (accuracy and, for a class-labelled task, macro-F1; or perplexity), on paired predictions."""
    from medtune.evaluate import metrics

    if ref[0].nll is not None:  # perplexity documents
        try:
            ch = PairedChange(**metrics.paired_perplexity_change([r.nll for r in ref], [m.nll for m in mine],  # type: ignore[misc]
                                                                 [r.tokens or 0 for r in ref]))
        except ValueError as err:  # a non-finite log-likelihood, or no tokens
            raise ConfigError(f"{task}: {err} (in {where[0]} or {where[1]})") from None
        return [Compared(task=task, metric="perplexity", reference=ch.base, model=ch.model, change=ch, unpaired=unpaired)]
    for r, m in zip(ref, mine):
        if r.gold != m.gold:
            raise ConfigError(f"{task} item {r.id}: gold answer {r.gold} in {where[0]} but {m.gold} in {where[1]}; "
                              "the two evaluations scored different data under the same item ids")
    a, b = [r.correct for r in ref], [m.correct for m in mine]
    diffs = [y - x for x, y in zip(a, b)]
    ch = PairedChange(**metrics.summarize(diffs), changed=sum(d != 0 for d in diffs))
    out = [Compared(task=task, metric="acc", reference=sum(a) / len(a), model=sum(b) / len(b), change=ch,
                    unpaired=unpaired)]
    classes = TASKS[task].classes if task in TASKS else None
    if classes and all(r.pred is not None for r in (*ref, *mine)):
        gold, pa, pb = [int(r.gold) for r in ref], [int(r.pred) for r in ref], [int(m.pred) for m in mine]  # type: ignore[arg-type]
        f1 = PairedChange(**metrics.paired_macro_f1_change(gold, pa, pb, len(classes)))
        out.append(Compared(task=task, metric="macro_f1", reference=metrics.macro_f1(gold, pa, len(classes)),
                            model=metrics.macro_f1(gold, pb, len(classes)), change=f1, unpaired=unpaired))
    return out


def _fmt(r: Compared) -> tuple[str, str, str, str]:
    ch = r.change
    lo, hi = ch.ci95 or (float("nan"), float("nan"))
    if r.metric == "perplexity":
        rel_lo, rel_hi = ch.rel_ci95 or (float("nan"), float("nan"))
        return (f"{r.reference:.3f}", f"{r.model:.3f}",
                f"{100 * (ch.rel or 0):+.1f} % [{100 * rel_lo:+.1f}, {100 * rel_hi:+.1f}]", f"{ch.n} docs")
    val = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    items = f"{ch.n} ({ch.changed} changed)" if ch.changed is not None else f"{ch.n}"
    return val(r.reference), val(r.model), f"{100 * ch.value:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]", items


def compare_command(cfg: CompareConfig) -> Comparison:
    """The CLI stage: compare, then print a table (or JSON) on stdout."""
    import json

    from rich.console import Console
    from rich.table import Table

    res = compare(_eval_dir(cfg.reference, "reference"), _eval_dir(cfg.candidate, "candidate"), cfg.tasks or None)
    if cfg.format == "json":
        print(json.dumps(res.model_dump(mode="json"), indent=1))
        return res
    table = Table(title=f"{res.model} minus {res.reference}, paired (95 % bootstrap intervals)")
    for col in ("task", "metric", "reference", "model", "change [95 % CI]", "paired"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right",
                         no_wrap=col in ("task", "change [95 % CI]"))
    for r in res.rows:
        ref, mine, change, n = _fmt(r)
        bold = r.change.ci95 is not None and not (r.change.ci95[0] <= 0 <= r.change.ci95[1])
        table.add_row(r.task, r.metric, ref, mine, f"[bold]{change}[/]" if bold else change,
                      n + (f", {r.unpaired} unpaired" if r.unpaired else ""))
    console = Console()
    console.print(table)
    console.print("accuracy and macro-F1 in points, perplexity in % of the reference's; bold: the interval excludes 0")
    return res
