"""Print the condensed tables of docs/results.md (the study's questions) from the study's report.json.

    python bench/study/questions.py docs/results/report.json           # the attribution study (issue 32)
    python bench/study/questions.py docs/results/issue15/report.json   # any study's report.json

Every number is read from report.json (the study's own report: paired changes vs the base model
with their 95 % intervals, per-task scores, the sweeps' validation points). Computed here, and
only here: the share of the tuned model's in-domain gain an averaged model keeps and the share of
the base model's general score it keeps (question 5), from the report's point estimates.

The general score of question 5 is the mean of ARC-Easy and MMLU non-medical *cloze* accuracy
(``GENERAL``), not the report's "General avg" (ARC-Easy and MMLU in lm-eval's letter formulation):
SmolLM2-135M answers "A" on 99 of the 100 MMLU items in the letter formulation, so that score is
the share of gold "A"s and moves only when the letter prior moves.
"""

from __future__ import annotations

import json
import sys
from typing import Any

CHANGE_COLUMNS = [  # (report task, header, kind)
    ("pubmedqa", "PubMedQA", "acc"), ("medmcqa", "MedMCQA letter", "acc"), ("medmcqa_cloze", "MedMCQA cloze", "acc"),
    ("ppl_medical", "medical ppl", "ppl"), ("medqa4", "MedQA letter (OOD)", "acc"),
    ("medqa4_cloze", "MedQA cloze (OOD)", "acc"), ("mmlu_medical", "MMLU medical (OOD)", "acc"),
    ("arc_easy", "ARC-Easy", "acc"), ("mmlu_general", "MMLU non-medical letter", "acc"),
    ("mmlu_general_cloze", "MMLU non-medical cloze", "acc"), ("ppl_general", "WikiText-2 ppl", "ppl"),
]
GENERAL = ("arc_easy", "mmlu_general_cloze")
"""The general score of question 5: tasks whose accuracy can move on a 135M model (see the docstring)."""


def general(row: dict[str, Any]) -> float:
    return sum(row["tasks"][t]["value"] for t in GENERAL) / len(GENERAL)


def pts(m: dict[str, Any] | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['value']:+.1f} [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]"


def rel(m: dict[str, Any] | None) -> str:
    if not m or m.get("rel_ci95") is None:
        return "–"
    return f"{100 * m['rel']:+.1f} % [{100 * m['rel_ci95'][0]:+.1f}, {100 * m['rel_ci95'][1]:+.1f}]"


def mark(m: dict[str, Any] | None, kind: str) -> str:
    """Bold when the interval excludes 0 (a measured change)."""
    text = pts(m) if kind == "acc" else rel(m)
    if not m:
        return text
    lo, hi = (m["ci95"] if kind == "acc" else m["rel_ci95"]) or (0, 0)
    return f"**{text}**" if lo > 0 or hi < 0 else text


def changes(data: dict[str, Any], key: str = "deltas") -> None:
    """Paired changes vs the base (``key`` "control_deltas": vs the general-text control) per model row."""
    deltas = data.get(key) or {}
    present = [c for c in CHANGE_COLUMNS if any(c[0] in d for d in deltas.values())]
    print("| model | " + " | ".join(h for _, h, _ in present) + " |")
    print("|---|" + "---|" * len(present))
    for r in data["rows"]:
        d = deltas.get(r["label"])
        if d is None or r.get("note", "").startswith("="):
            continue
        print(f"| {r['label']} | " + " | ".join(mark(d.get(t), k) for t, _, k in present) + " |")


def averaging(data: dict[str, Any]) -> None:
    """Question 5 on the test splits: per averaged row, the in-domain gain kept and the general average kept."""
    rows = {r["label"]: r for r in data["rows"]}
    base = next(r for r in data["rows"] if r["kind"] == "base")
    print("| averaged model | of variant | Δ PubMedQA vs base | its tuned parent's Δ | gain kept | "
          "general (ARC-Easy, MMLU cloze), % of base | beats both parents on PubMedQA |")
    print("|---|---|---|---|---|---|---|")
    for r in data["rows"]:
        if r["kind"] not in ("averaged", "compared") or r.get("note", "").startswith("="):
            continue
        tuned = rows[r["variant"]]
        d, dt = data["deltas"][r["label"]]["pubmedqa"], data["deltas"][tuned["label"]]["pubmedqa"]
        kept = d["value"] / dt["value"] if dt["value"] else float("nan")
        gen = general(r) / general(base)
        acc = r["tasks"]["pubmedqa"]["value"]
        both = acc > max(tuned["tasks"]["pubmedqa"]["value"], base["tasks"]["pubmedqa"]["value"])
        print(f"| {r['label']} | {r['variant']} | {pts(d)} | {pts(dt)} | {100 * kept:.0f} % | {100 * gen:.1f} % | "
              f"{'yes' if both else 'no'} |")


def sweeps(data: dict[str, Any]) -> None:
    """Every sweep point on validation (the frontier's points), per swept variant."""
    for name, sw in data["sweeps"].items():
        pts_ = sw["points"]
        if len(pts_) <= 2:
            continue
        base = next(p for p in pts_ if p["method"] == "linear" and p["params"].get("alpha") == 0.0)
        tuned = next((p for p in pts_ if p["method"] == "linear" and p["params"].get("alpha") == 1.0), None)
        gain = (tuned["medical"] - base["medical"]) if tuned else 0.0
        print(f"\n{name} (validation; medical = PubMedQA, general = ARC-Easy):\n")
        print("| point | medical | general | general, % of base | medical gain kept | on the front | selected |")
        print("|---|---|---|---|---|---|---|")
        for i, p in enumerate(pts_):
            kept = f"{100 * (p['medical'] - base['medical']) / gain:.0f} %" if gain else "–"
            print(f"| {p['label']} | {100 * p['medical']:.1f} | {100 * p['general']:.1f} | "
                  f"{100 * p['general'] / base['general']:.1f} % | {kept} | {'yes' if p.get('pareto') else ''} | "
                  f"{'★' if i == sw.get('selected') else ''} |")


def classes(data: dict[str, Any]) -> None:
    """PubMedQA macro-F1 and recall per class, with the paired macro-F1 changes vs base and control."""
    print("| model | accuracy | macro-F1 | recall yes / no / maybe | Δ macro-F1 vs base | Δ macro-F1 vs control |")
    print("|---|---|---|---|---|---|")
    rows = {r["label"]: r for r in data["rows"]}
    for label, per in (data.get("classes") or {}).items():
        v = per.get("pubmedqa")
        if v is None or rows[label].get("note", "").startswith("="):
            continue
        recall = " / ".join(f"{100 * v['recall'][c]['value']:.0f}" if c in v["recall"] else "–" for c in ("yes", "no", "maybe"))
        acc = rows[label]["tasks"]["pubmedqa"]
        print(f"| {label} | {100 * acc['value']:.1f} | {100 * v['macro_f1']['value']:.1f} | {recall} | "
              f"{mark(v.get('vs_base'), 'acc')} | {mark(v.get('vs_control'), 'acc')} |")


def curves(data: dict[str, Any]) -> None:
    """The validation curves during training: per variant and task, the value at each scored step."""
    for variant, points in (data.get("validation_curves") or {}).items():
        keys = list(dict.fromkeys((p["task"], p["metric"]) for p in points if p["metric"] in ("acc", "perplexity")))
        steps = sorted({p["step"] for p in points})
        print(f"\n{variant}:\n")
        print("| task | " + " | ".join(f"step {s}" for s in steps) + " |")
        print("|---|" + "---|" * len(steps))
        for task, metric in keys:
            at = {p["step"]: p["value"] for p in points if (p["task"], p["metric"]) == (task, metric)}
            cell = (lambda x: f"{x:.2f}") if metric == "perplexity" else (lambda x: f"{100 * x:.1f}")
            print(f"| {task} {metric} | " + " | ".join(cell(at[s]) if s in at else "–" for s in steps) + " |")


def main(path: str) -> None:
    data = json.load(open(path))
    print("## paired changes vs base (test; bold: interval excludes 0)\n")
    changes(data)
    if data.get("control"):
        print(f"\n## paired changes vs the control, {data['control']} (test; bold: interval excludes 0)\n")
        changes(data, "control_deltas")
    if data.get("classes"):
        print("\n## PubMedQA macro-F1 (test)\n")
        classes(data)
    if data.get("validation_curves"):
        print("\n## validation curves (validation subsets during training)")
        curves(data)
    print("\n## averaged models (test)\n")
    averaging(data)
    print("\n## sweeps (validation)")
    sweeps(data)


if __name__ == "__main__":
    main(sys.argv[1])
