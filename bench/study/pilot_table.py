"""Print the condensed recipe-pilot table of docs/results.md from the pilot's report.json files, and
draw its budget curves.

    python bench/study/pilot_table.py docs/results/pilot/report.json [MORE.json ...] [--plot budget.png]

The pilot's 24 points take about 7 CPU hours, more than one session: it runs in parts
(``medtune study configs/study/recipe_pilot.yaml --only A,B,...``), each part with its own
evaluation of the base model and its own report.json. Parts are merged here only if their base
rows are the same (every task's item count and accuracy; perplexity to 1e-4 relative): the paired changes of each part are against
its own base, so they are comparable only when the base scores the same. A point that more than one
part ran is shown once, from the first file, and listed under "reproduced" with each part's numbers.

Every number is read from the report.json files (the study's own reports); nothing is computed here
but the formatting and the share of the most frequent PubMedQA answer."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

POINT = re.compile(r"(lora|full)-lr([\d.e-]+)-ep([\d.]+)-(ans|all)")
LOSS = {"ans": "answer_only", "all": "all_tokens"}


def pts(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['value']:+.1f} [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]"


def rel(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['rel']:+.1f} % [{100 * m['rel_ci95'][0]:+.1f}, {100 * m['rel_ci95'][1]:+.1f}]"


PPL_RTOL = 1e-4
"""Perplexity of the same model on the same text differs in the 6th digit between machines (fp32
sums in another order: 13.783410 vs 13.783293 on WikiText-2, parts 1 and 2); accuracies must be equal."""


def base_scores(data: dict) -> dict[str, tuple[float, int]]:
    """(value, n) of every task of the report's base row."""
    base = next(r for r in data["rows"] if r["kind"] == "base")
    return {t: (m["value"], m["n"]) for t, m in sorted(base["tasks"].items()) if m}


def same(task: str, a: tuple[float, int] | None, b: tuple[float, int] | None) -> bool:
    if a is None or b is None or a[1] != b[1]:
        return False
    if task.startswith("ppl_"):
        return abs(a[0] - b[0]) <= PPL_RTOL * abs(b[0])
    return round(a[0] * a[1]) == round(b[0] * b[1])  # the same number of items right


def load(paths: list[str]) -> list[tuple[str, dict]]:
    parts = [(p, json.loads(Path(p).read_text())) for p in paths]
    first_path, first = parts[0]
    want = base_scores(first)
    for path, data in parts[1:]:
        got = base_scores(data)
        diff = sorted(t for t in set(want) | set(got) if not same(t, got.get(t), want.get(t)))
        if diff:
            sys.exit(f"{path}: its base model scores differently from {first_path}'s on {', '.join(diff)} "
                     f"({[got.get(t) for t in diff]} vs {[want.get(t) for t in diff]}): not the same validation "
                     "data or settings, so its paired changes are not comparable")
        worst = max((abs(got[t][0] - want[t][0]) / want[t][0] for t in want if t.startswith("ppl_")), default=0.0)
        print(f"<!-- {path}: base model as in {first_path} (accuracies equal; perplexity within "
              f"{worst:.1e} relative) -->")
    return parts


def row(data: dict, r: dict) -> list[str]:
    label, t = r["label"], r["tasks"]
    d = data["deltas"].get(label, {})
    sp = data["spread"]["rows"][label]["pubmedqa"]
    answer = {1: "yes", 2: "no", 3: "maybe"}[sp["choice"]]
    steps = {s["step"]: s["seconds"] for s in data["steps"]}
    acc = f"{100 * t['pubmedqa']['value']:.1f} [{100 * t['pubmedqa']['ci95'][0]:.1f}, {100 * t['pubmedqa']['ci95'][1]:.1f}]"
    if r["kind"] == "base":
        meta = ["base model", "–", "–", "–", "–", "–"]
    else:
        m = POINT.fullmatch(label)
        tr = data["train"][label]
        meta = [label, m[1], m[2], LOSS[m[4]], m[3], f"{tr['seconds']:.0f} ({tr['tokens'] / tr['seconds']:.0f})"]
    return meta + [acc, pts(d.get("pubmedqa")), f"{answer} on {100 * sp['share']:.0f} %", rel(d.get("ppl_medical")),
                   rel(d.get("ppl_general")), pts(d.get("arc_easy")), pts(d.get("medqa4_cloze")),
                   f"{steps.get(r['step'], 0):.0f}"]


def table(parts: list[tuple[str, dict]]) -> list[tuple[dict, dict]]:
    """Print the merged table; return (report, row) of every point shown, base first."""
    print("| variant | method | lr | loss | epochs | train s (tokens/s) | PubMedQA acc | Δ PubMedQA | "
          "most frequent PubMedQA answer | Δ medical ppl | Δ general ppl | Δ ARC-Easy | Δ MedQA cloze | eval s |")
    print("|" + "---|" * 14)
    shown: dict[str, tuple[str, dict, dict]] = {}
    again: dict[str, list[tuple[str, dict, dict]]] = {}
    for path, data in parts:
        for r in data["rows"]:
            if r["kind"] not in ("base", "tuned"):
                continue
            if r["label"] in shown:
                if r["kind"] == "tuned":
                    again.setdefault(r["label"], []).append((path, data, r))
                continue
            shown[r["label"]] = (path, data, r)
    for _, data, r in shown.values():
        print("| " + " | ".join(row(data, r)) + " |")
    data = parts[0][1]
    print(f"\nalways answering the most frequent gold answer: PubMedQA {100 * data['spread']['majority']['pubmedqa']:.1f} %, "
          f"ARC-Easy {100 * data['spread']['majority']['arc_easy']:.1f} %, MedQA cloze {100 * data['spread']['majority']['medqa4_cloze']:.1f} %")
    if again:
        print("\nreproduced (the same point in more than one part; first line: the one shown above):\n")
        print("| variant | part | PubMedQA acc | Δ PubMedQA | Δ medical ppl | Δ general ppl | Δ ARC-Easy | Δ MedQA cloze |")
        print("|" + "---|" * 8)
        for label, others in again.items():
            for path, d, r in [shown[label], *others]:
                cells = row(d, r)
                print(f"| {label} | {path} | " + " | ".join(cells[6:8] + cells[9:13]) + " |")
    return [(data, r) for _, data, r in shown.values()]


def plot(points: list[tuple[dict, dict]], path: str) -> None:
    """Paired change vs the base model against the training budget: PubMedQA accuracy and medical
    perplexity, one line per method x learning rate x loss, with the 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple[str, str, str], list[tuple[float, dict, dict]]] = {}
    for data, r in points:
        m = POINT.fullmatch(r["label"])
        if m is None:
            continue
        d = data["deltas"].get(r["label"], {})
        lines.setdefault((m[1], m[2], m[4]), []).append((float(m[3]), d.get("pubmedqa"), d.get("ppl_medical")))
    colors = {("lora", "1e-3"): "#1f77b4", ("lora", "3e-4"): "#9ecae1", ("full", "1e-4"): "#d62728",
              ("full", "3e-5"): "#fc9272"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, ((method, lr, loss), got) in enumerate(sorted(lines.items())):
        got.sort(key=lambda g: g[0])
        shift = 2 ** (0.05 * (k - (len(lines) - 1) / 2))  # side by side at each budget, so no interval hides another
        style = dict(color=colors.get((method, lr), "gray"), ls="-" if loss == "all" else "--", marker="o", ms=4,
                     capsize=3, lw=1.4, label=f"{method} lr {lr} {LOSS[loss]}")
        for ax, i, key, ci in ((axes[0], 1, "value", "ci95"), (axes[1], 2, "rel", "rel_ci95")):
            have = [(g[0], g[i]) for g in got if g[i] is not None]
            if not have:
                continue
            xs = [e * shift for e, _ in have]
            ys = [100 * m[key] for _, m in have]
            err = [[y - 100 * m[ci][0] for y, (_, m) in zip(ys, have)],
                   [100 * m[ci][1] - y for y, (_, m) in zip(ys, have)]]
            ax.errorbar(xs, ys, yerr=err, **style)
    for ax, title, ylabel in ((axes[0], "PubMedQA validation accuracy (400 items)", "paired change vs base (points)"),
                              (axes[1], "medical perplexity (held-out abstracts)", "change vs base (%)")):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.5, 1, 2], ["0.5", "1", "2"])
        ax.set_xlabel("training budget (epochs of the 65,888-token training set)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("recipe pilot: SmolLM2-135M, validation splits, 95 % paired intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nplot: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="report.json files of the pilot's parts (the first one's base is shown)")
    ap.add_argument("--plot", help="also draw the budget curves to this PNG")
    args = ap.parse_args(argv)
    points = table(load(args.reports))
    if args.plot:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
