"""The report's figures: the medical-vs-general frontier and the training curves (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.report.records import Report

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frontier(data: Report, path: Path) -> Path | None:
    """Left: every sweep point on validation (what selection saw); right: test scores with 95 % intervals."""
    # rows that only repeat another model (an averaged model at alpha 0 or 1) are drawn once
    rows = [r for r in data.rows if r.medical_avg and r.general_avg and not r.repeats]
    if not rows and not data.sweeps:
        return None
    plt = _pyplot()
    fig, (val, test) = plt.subplots(1, 2, figsize=(12, 5))
    color = {v: COLORS[i % len(COLORS)] for i, v in enumerate(data.sweeps | data.train)}
    from medtune.merge.sweep import draw_points

    for v, sw in data.sweeps.items():
        result = sw.result()
        draw_points(val, result, color=color[v], prefix=f"{v}: ")
        s = result.selected_point
        if s is not None:
            val.scatter([100 * s.general], [100 * s.medical], marker="*", s=220, color=color[v],
                        edgecolors="black", zorder=4, label=f"{v}: selected {s.label}")
    ship = data.ship
    if ship is not None and ship.base_general is not None and ship.rule_name == "retain":
        val.axvline(100 * ship.base_general * ship.retain, color="grey", ls="--", lw=1,
                    label=f"keeps {ship.retain:.0%} of base general")
    val.set_title("validation: the averaging sweep (selects)")
    markers = {"base": ("o", 90), "tuned": ("s", 70), "control": ("P", 110), "averaged": ("*", 220),
               "compared": ("D", 60)}
    shipped = data.shipped_row()
    ship_step = shipped.step if shipped else None  # a repeat is drawn as its model
    for r in rows:
        m, size = markers[r.kind]
        c = "black" if r.kind == "base" else color.get(r.variant or "", "grey")
        x, y = r.general_avg, r.medical_avg
        assert x is not None and y is not None and x.ci95 is not None and y.ci95 is not None
        test.errorbar(100 * x.value, 100 * y.value, xerr=[[100 * (x.value - x.ci95[0])], [100 * (x.ci95[1] - x.value)]],
                      yerr=[[100 * (y.value - y.ci95[0])], [100 * (y.ci95[1] - y.value)]], fmt="none",
                      ecolor=c, alpha=0.35, lw=1)
        test.scatter([100 * x.value], [100 * y.value], marker=m, s=size, color=c, zorder=3,
                     edgecolors="gold" if r.step == ship_step else "none", linewidths=2.5, label=r.label)
    test.set_title(f"{data.reported_split}: reported scores with 95 % intervals (gold edge: shipped)")
    from medtune.evaluate.scores import describe

    val.set_xlabel(f"general score: {describe(data.validation.general)} (%)")
    val.set_ylabel(f"medical score: {describe(data.validation.medical)} (%)")
    test.set_xlabel(f"general average: mean accuracy on {', '.join(data.columns.general)} (%)")
    test.set_ylabel(f"medical average: mean accuracy on {', '.join(data.columns.medical)} (%)")
    for ax in (val, test):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{data.name}: medical vs general ability", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def curves(data: Report, path: Path) -> Path | None:
    """Training loss per optimizer step, one line per variant."""
    if not data.curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (v, pts) in enumerate(data.curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[i % len(COLORS)], lw=1.5, label=v)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def validation_curves(data: Report, path: Path) -> Path | None:
    """The validation curves during training (eval_every), one panel per task, one line per variant: where a
    medical score first drops and then recovers (the stability gap of continued pretraining), it shows."""
    curves = data.validation_curves
    tasks = list(dict.fromkeys((p.task, p.metric) for pts in curves.values() for p in pts))
    if not tasks:
        return None
    plt = _pyplot()
    ncols = min(len(tasks), 3)
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    color = {v: COLORS[i % len(COLORS)] for i, v in enumerate(data.train)}
    for ax, (task, metric) in zip(axes.flat, tasks):
        for v, pts in curves.items():
            mine = sorted((p.step, p.value) for p in pts if p.task == task and p.metric == metric)
            if mine:
                scale = 1.0 if metric == "perplexity" else 100.0
                ax.plot([s for s, _ in mine], [scale * y for _, y in mine], marker="o", ms=3, lw=1.5,
                        color=color.get(v, "grey"), label=v)
        n = next((p.n for pts in curves.values() for p in pts if p.task == task), 0)
        unit = "perplexity ↓" if metric == "perplexity" else f"{metric} (%)"
        ax.set_title(f"{data.show(task)}: {unit}, {n} {'tokens' if metric == 'perplexity' else 'items'}", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    fig.suptitle("validation during training (validation subsets, never test)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def changes(data: Report, path: Path, control: bool = False) -> Path | None:
    """Paired change vs the base model (``control``: vs the general-text control), one panel per task: each
    model's change with its 95 % interval (accuracy in points; perplexity in % of the reference's, negative
    is better), a line at 0. A bar that crosses the line is no evidence of a change."""
    deltas = data.control_deltas if control else data.deltas
    cols = data.columns  # the main table's tasks and groups (a group's own tasks are in its table only)
    shown = [*cols.medical, *cols.cloze, *cols.groups, *cols.general, *cols.ppl]
    tasks = [t for t in shown if any(t in per for per in deltas.values())]
    tasks = [t for t in tasks if any((m := per.get(t)) and m.ci95 for per in deltas.values())]
    if not tasks:
        return None
    plt = _pyplot()
    labels = list(deltas)
    ncols = min(len(tasks), 3)
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 0.9 + (0.32 * len(labels) + 0.6) * nrows),
                             squeeze=False, sharey=True)
    for ax, t in zip(axes.flat, tasks):
        for i, label in enumerate(labels):
            m = deltas[label].get(t)
            if not m or not m.ci95:
                continue
            v, (lo, hi) = (m.rel, m.rel_ci95) if m.is_ppl else (m.value, m.ci95)
            beyond = lo > 0 or hi < 0
            c = COLORS[0] if beyond else "grey"
            ax.errorbar([100 * v], [i], xerr=[[100 * (v - lo)], [100 * (hi - v)]], fmt="o", color=c, ms=4, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ppl_task = any((m := deltas[lb].get(t)) and m.is_ppl for lb in labels)
        ax.set_title(data.show(t) + (" (perplexity, % change)" if ppl_task else " (points)"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0, 0].invert_yaxis()  # the axes share y: invert once, so the first model is on top in every panel
    ref = f"the general-text control ({data.control})" if control else "the base model"
    fig.suptitle(f"change vs {ref} on the same items / documents (95 % paired intervals; blue: excludes 0)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
