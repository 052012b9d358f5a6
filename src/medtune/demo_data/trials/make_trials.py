"""Write the demo's fictional-trials sample: PubMedQA-style items whose answer the abstract states.

    python src/medtune/demo_data/trials/make_trials.py        # rewrites trials_pqal.json + test_ground_truth.json

Every item is a *fictional* randomised trial (methods and results, as a two-context PubMedQA item) built from the tables below by a seeded generator
(stdlib only, so the committed files are reproducible byte for byte; a test checks it). The
interventions and conditions are real medical terms, the trials, numbers and PMIDs (``8xxxxxxx``)
are invented: this is a sample the medtune authors wrote to make the demo measurable, not evidence
and not a benchmark.

Why generated rather than hand-written: the demo must show a measured effect on its own sample, and
a paired 95 % interval over 20 hand-written test items spans about +-25 points. 100 test items
bring it to about +-10, which a real change can clear; writing 300 abstracts by hand is not
sensible. The answer follows from the results sentence the way PubMedQA's does from its
abstract's: a significant benefit in the asked direction is "yes"; no significant difference, or a
significant effect the other way, is "no"; a benefit only in a subgroup or a secondary analysis is
"maybe". Each split has PQA-L's label mix (55 / 34 / 11 %, exactly up to rounding).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261202
N_TRAINVAL, N_TEST = 200, 100

# (intervention, comparator, outcome, population, MeSH terms); the outcome is something to lower.
TRIALS = [
    ("nurse-led telephone follow-up", "usual care", "30-day readmission", "adults discharged after heart failure",
     ["Heart Failure", "Patient Readmission", "Telephone"]),
    ("early mobilisation", "standard bed rest", "postoperative pneumonia", "patients after abdominal surgery",
     ["Early Ambulation", "Pneumonia", "Postoperative Complications"]),
    ("daily vitamin D supplementation", "placebo", "acute respiratory infection", "schoolchildren",
     ["Vitamin D", "Respiratory Tract Infections", "Child"]),
    ("preoperative carbohydrate loading", "overnight fasting", "postoperative hyperglycaemia",
     "patients undergoing colorectal surgery", ["Dietary Carbohydrates", "Insulin Resistance", "Colorectal Surgery"]),
    ("chlorhexidine bathing", "soap and water bathing", "central line infection", "intensive care patients",
     ["Chlorhexidine", "Catheter-Related Infections", "Intensive Care Units"]),
    ("a text-message reminder programme", "no reminders", "missed antiretroviral doses", "adults living with HIV",
     ["HIV Infections", "Medication Adherence", "Text Messaging"]),
    ("intermittent pneumatic compression", "compression stockings alone", "deep vein thrombosis",
     "patients after stroke", ["Intermittent Pneumatic Compression Devices", "Venous Thrombosis", "Stroke"]),
    ("topical tranexamic acid", "saline", "blood loss requiring transfusion", "patients having knee replacement",
     ["Tranexamic Acid", "Blood Loss, Surgical", "Arthroplasty, Replacement, Knee"]),
    ("a structured exercise programme", "advice leaflets", "falls", "community-dwelling adults over 70",
     ["Accidental Falls", "Exercise Therapy", "Aged"]),
    ("melatonin at bedtime", "placebo", "postoperative delirium", "older patients after hip fracture surgery",
     ["Melatonin", "Delirium", "Hip Fractures"]),
    ("low-dose aspirin", "placebo", "preeclampsia", "pregnant women at high risk",
     ["Aspirin", "Pre-Eclampsia", "Pregnancy, High-Risk"]),
    ("a pharmacist-led medication review", "usual care", "adverse drug events", "care-home residents",
     ["Pharmacists", "Drug-Related Side Effects and Adverse Reactions", "Nursing Homes"]),
    ("probiotic supplementation", "placebo", "antibiotic-associated diarrhoea", "hospitalised children",
     ["Probiotics", "Diarrhea", "Anti-Bacterial Agents"]),
    ("a low-sodium diet", "a usual diet", "uncontrolled blood pressure", "adults with stage 1 hypertension",
     ["Diet, Sodium-Restricted", "Hypertension", "Blood Pressure"]),
    ("prophylactic ondansetron", "placebo", "postoperative nausea", "women undergoing caesarean section",
     ["Ondansetron", "Postoperative Nausea and Vomiting", "Cesarean Section"]),
    ("a smoking-cessation counselling session", "a brochure", "relapse to smoking", "patients after myocardial infarction",
     ["Smoking Cessation", "Counseling", "Myocardial Infarction"]),
    ("continuous glucose monitoring", "fingerstick testing", "severe hypoglycaemia", "adults with type 1 diabetes",
     ["Blood Glucose Self-Monitoring", "Hypoglycemia", "Diabetes Mellitus, Type 1"]),
    ("silver-coated urinary catheters", "standard catheters", "catheter-associated urinary infection",
     "hospitalised adults", ["Urinary Catheters", "Urinary Tract Infections", "Silver"]),
    ("a hand-hygiene campaign", "no campaign", "hospital-acquired infection", "surgical wards",
     ["Hand Hygiene", "Cross Infection", "Hospitals"]),
    ("cognitive behavioural therapy", "waiting-list control", "persistent insomnia", "adults with chronic insomnia",
     ["Cognitive Behavioral Therapy", "Sleep Initiation and Maintenance Disorders"]),
]
QUESTIONS = ["Does {i} reduce {o} within {t} in {p} in {place}?", "Does {i} lower the rate of {o} among {p} in {place}?",
             "Is {i} associated with a lower rate of {o} in {p} in {place}?",
             "Can {i} prevent {o} within {t} in {p} in {place}?"]
METHODS = ["We randomly assigned {n} {p} at {k} centres in {place} to {i} or {c}. The primary outcome was {o} within {t}.",
           "In this {blind} randomised trial, {n} {p} received {i} or {c}. {O} within {t} was the primary outcome.",
           "{n} {p} were enrolled at {k} hospitals in {place} and allocated by computer to {i} or {c}; {o} was assessed "
           "within {t}."]
SUBGROUPS = ["patients over 65", "women", "patients with diabetes", "the highest-risk third", "smokers"]
TIMES = ["30 days", "three months", "six months", "one year", "the hospital stay"]
PLACES = ["Denmark", "rural India", "Brazil", "urban Nigeria", "Japan", "Canada", "Scotland", "Chile", "Vietnam",
          "Kenya", "Poland", "Australia", "Mexico", "Sweden", "Ghana", "Spain"]


def _p(rng: random.Random, significant: bool) -> str:
    if significant:
        return rng.choice(["p<0.001", "p=0.002", "p=0.004", "p=0.01", "p=0.02", "p=0.03"])
    return rng.choice(["p=0.21", "p=0.34", "p=0.47", "p=0.58", "p=0.66", "p=0.81"])


def _results(rng: random.Random, label: str, o: str, i: str) -> tuple[str, str]:
    """(results sentence, conclusion) for the label."""
    base = rng.randint(12, 40)
    if label == "yes":
        treated = max(2, round(base * rng.uniform(0.45, 0.75)))
        res = (f"{o.capitalize()} occurred in {treated}% of the intervention group and {base}% of the control "
               f"group, a significant reduction ({_p(rng, True)}).")
        return res, f"{i.capitalize()} significantly reduced {o}."
    if label == "no":
        if rng.random() < 0.25:  # significant harm: also "no"
            treated = round(base * rng.uniform(1.3, 1.7))
            res = (f"{o.capitalize()} was more frequent with the intervention ({treated}% versus {base}%, "
                   f"{_p(rng, True)}).")
            return res, f"{i.capitalize()} did not reduce {o}; it increased it."
        treated = base + rng.choice([-2, -1, 0, 1, 2])
        res = (f"{o.capitalize()} did not differ significantly between the groups ({treated}% versus {base}%, "
               f"{_p(rng, False)}).")
        return res, f"{i.capitalize()} did not reduce {o}."
    sub = rng.choice(SUBGROUPS)
    treated = base + rng.choice([-2, -1, 0, 1])
    res = (f"Overall, {o} did not differ significantly ({treated}% versus {base}%, {_p(rng, False)}), but in "
           f"{sub} it was lower with the intervention ({_p(rng, True)}).")
    return res, f"{i.capitalize()} may reduce {o} in {sub}, but not overall; a confirmatory trial is needed."


def labels(rng: random.Random, n: int) -> list[str]:
    """n labels in PQA-L's mix (55 / 34 / 11 %, rounded), shuffled: each split keeps the mix exactly."""
    yes, no = round(0.55 * n), round(0.34 * n)
    out = ["yes"] * yes + ["no"] * no + ["maybe"] * (n - yes - no)
    rng.shuffle(out)
    return out


def make_item(rng: random.Random, label: str) -> dict[str, object]:
    i, c, o, p, mesh = rng.choice(TRIALS)
    fill = {"i": i, "c": c, "o": o, "O": o[0].upper() + o[1:], "p": p, "n": rng.randint(8, 60) * 10,
            "k": rng.randint(2, 14), "t": rng.choice(TIMES), "place": rng.choice(PLACES), "blind": rng.choice(["double-blind", "open-label"])}
    results, conclusion = _results(rng, label, o, i)
    methods = rng.choice(METHODS).format(**fill)
    return {"QUESTION": rng.choice(QUESTIONS).format(**fill),
            "CONTEXTS": [methods[0].upper() + methods[1:], results], "LABELS": ["METHODS", "RESULTS"], "MESHES": mesh, "YEAR": str(rng.randint(2004, 2024)),
            "reasoning_required_pred": label, "reasoning_free_pred": label, "final_decision": label,
            "LONG_ANSWER": conclusion}


def build() -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """(every item by PMID, the test PMIDs' labels): deterministic for SEED; no two items ask the same question."""
    rng = random.Random(SEED)
    items: dict[str, dict[str, object]] = {}
    questions: set[str] = set()  # every question once: medtune's leakage guard treats equal questions as one item
    for label in labels(rng, N_TRAINVAL) + labels(rng, N_TEST):
        while True:
            pmid, item = str(rng.randint(80_000_000, 89_999_999)), make_item(rng, label)
            if pmid not in items and item["QUESTION"] not in questions:
                break
        items[pmid] = item
        questions.add(str(item["QUESTION"]))
    test = {k: str(v["final_decision"]) for k, v in list(items.items())[N_TRAINVAL:]}
    return items, test


def main() -> None:
    items, test = build()
    (HERE / "trials_pqal.json").write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n")
    (HERE / "test_ground_truth.json").write_text(json.dumps(test, indent=1) + "\n")
    labels = [str(v["final_decision"]) for v in items.values()]
    print(f"{len(items)} items ({len(test)} test): " + ", ".join(f"{a} {labels.count(a)}" for a in ("yes", "no", "maybe")))


if __name__ == "__main__":
    main()
