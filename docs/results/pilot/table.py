"""Print the condensed recipe-pilot table of docs/results.md from the pilot's report.json.

    python docs/results/pilot/table.py docs/results/pilot/report.json

Every number is read from report.json (the study's own report); nothing is computed here but the
formatting and the share of the most frequent PubMedQA answer."""

from __future__ import annotations

import json
import re
import sys


def pts(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['value']:+.1f} [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]"


def rel(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['rel']:+.1f} % [{100 * m['rel_ci95'][0]:+.1f}, {100 * m['rel_ci95'][1]:+.1f}]"


def main(path: str) -> None:
    data = json.load(open(path))
    rows = [r for r in data["rows"] if r["kind"] in ("base", "tuned")]
    steps = {s["step"]: s["seconds"] for s in data["steps"]}
    print("| variant | method | lr | loss | epochs | train s (tokens/s) | PubMedQA acc | Δ PubMedQA | "
          "most frequent PubMedQA answer | Δ medical ppl | Δ general ppl | Δ ARC-Easy | Δ MedQA cloze | eval s |")
    print("|" + "---|" * 14)
    for r in rows:
        label, t = r["label"], r["tasks"]
        d = data["deltas"].get(label, {})
        sp = data["spread"]["rows"][label]["pubmedqa"]
        answer = {1: "yes", 2: "no", 3: "maybe"}[sp["choice"]]
        acc = f"{100 * t['pubmedqa']['value']:.1f} [{100 * t['pubmedqa']['ci95'][0]:.1f}, {100 * t['pubmedqa']['ci95'][1]:.1f}]"
        if r["kind"] == "base":
            meta = ["base model", "–", "–", "–", "–", "–"]
        else:
            m = re.fullmatch(r"(lora|full)-lr([\d.e-]+)-ep([\d.]+)-(ans|all)", label)
            tr = data["train"][label]
            meta = [label, m[1], m[2], {"ans": "answer_only", "all": "all_tokens"}[m[4]], m[3],
                    f"{tr['seconds']:.0f} ({tr['tokens'] / tr['seconds']:.0f})"]
        print("| " + " | ".join(meta + [acc, pts(d.get("pubmedqa")), f"{answer} on {100 * sp['share']:.0f} %",
                                        rel(d.get("ppl_medical")), rel(d.get("ppl_general")), pts(d.get("arc_easy")),
                                        pts(d.get("medqa4_cloze")), f"{steps.get(r['step'], 0):.0f}"]) + " |")
    print(f"\nalways answering the most frequent gold answer: PubMedQA {100 * data['spread']['majority']['pubmedqa']:.1f} %, "
          f"ARC-Easy {100 * data['spread']['majority']['arc_easy']:.1f} %, MedQA cloze {100 * data['spread']['majority']['medqa4_cloze']:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
