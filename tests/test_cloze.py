"""Scores a small model can move: cloze formulation of the medical MC tasks (OLMES) and medical perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medtune import models
from medtune.evaluate.tasks import TASKS, Task

FIXTURES = Path(__file__).parent / "fixtures"


def _hand_loglik(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), computed the plain way: one forward over context + continuation,
    the continuation being the tokens past the context's own encoding (lm-eval's rule)."""
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    cont = whole[len(ctx):]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def medical_root(tmp_path: Path) -> Path:
    """A data root in ../shared/data's layout: the PubMedQA fixture, and a MedMCQA dev file with two items (with
    explanations) per subject, so that ppl_medical's held-out half of it is not empty."""
    import shutil

    root = tmp_path / "data"
    (root / "medmcqa").mkdir(parents=True)
    shutil.copytree(FIXTURES / "pubmedqa", root / "pubmedqa")
    rows = [json.loads(l) for l in (FIXTURES / "medmcqa" / "dev.json").read_text().splitlines()]
    twins = [{**r, "id": r["id"][:-1] + str(int(r["id"][-1]) + 4), "exp": f"Second note on {r['subject_name']}."} for r in rows]
    (root / "medmcqa" / "dev.json").write_text("".join(json.dumps(r) + "\n" for r in rows + twins))
    return root


def _eval(tiny_llama, tmp_path, tasks: str, data_root: Path = FIXTURES, **extra):
    from medtune.evaluate.run import EvalConfig, evaluate

    cfg = EvalConfig.model_validate({"model": {"spec": str(tiny_llama)}, "tasks": tasks, "data_root": str(data_root),
                                     "out": str(tmp_path / "ev"), "progress": False, **extra})
    report = evaluate(cfg)
    preds = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    return report, preds


def test_cloze_prompts_and_scores_equal_hand_computed_logliks(tiny_llama, tmp_path):
    rows = [json.loads(l) for l in (FIXTURES / "medmcqa" / "dev.json").read_text().splitlines()]
    medqa = [json.loads(l) for l in (FIXTURES / "medqa" / "4_options" / "phrases_no_exclude_test.jsonl").read_text().splitlines()]
    report, preds = _eval(tiny_llama, tmp_path, "medmcqa_cloze,medqa4_cloze",
                          task_sources={"medqa4_cloze": {"adapter": "medqa",
                                                         "path": "medqa/4_options/phrases_no_exclude_test.jsonl"}})
    model, tok = models.load_model(str(tiny_llama)), models.load_tokenizer(str(tiny_llama))
    # OLMES cloze: "Question: <q>\nAnswer:" and each option's own text after one space; no letters, no option list
    items = {("medmcqa_cloze", r["id"]): (r["question"], [r[k] for k in ("opa", "opb", "opc", "opd")], r["cop"] - 1)
             for r in rows}
    items |= {("medqa4_cloze", f"phrases_no_exclude_test:{i}"): (r["question"], list(r["options"].values()),
                                                                 "ABCD".index(r["answer_idx"]))
              for i, r in enumerate(medqa, start=1)}
    by_task: dict[str, list[tuple[float, float]]] = {}
    for p in preds:
        question, options, gold = items[(p["task"], p["id"])]
        hand = [_hand_loglik(model, tok, f"Question: {question}\nAnswer:", f" {o}") for o in options]
        assert p["loglikelihoods"] == pytest.approx(hand, abs=1e-4)
        assert p["gold"] == gold
        acc = float(max(range(4), key=lambda j: (hand[j], -j)) == gold)
        norm = float(max(range(4), key=lambda j: (hand[j] / len(options[j]), -j)) == gold)  # per character
        by_task.setdefault(p["task"], []).append((acc, norm))
    for task, scores in by_task.items():
        res = report["tasks"][task]
        assert res["acc"]["value"] == pytest.approx(sum(a for a, _ in scores) / len(scores))
        assert res["acc_norm"]["value"] == pytest.approx(sum(n for _, n in scores) / len(scores))
    assert len(by_task["medmcqa_cloze"]) == 4 and len(by_task["medqa4_cloze"]) == len(medqa)


def test_letter_and_cloze_tasks_score_different_continuations(tiny_llama, tmp_path):
    _, preds = _eval(tiny_llama, tmp_path, "medmcqa,medmcqa_cloze")
    letters = {p["id"]: p["loglikelihoods"] for p in preds if p["task"] == "medmcqa"}
    cloze = {p["id"]: p["loglikelihoods"] for p in preds if p["task"] == "medmcqa_cloze"}
    assert letters.keys() == cloze.keys() and all(letters[k] != cloze[k] for k in letters)


def test_ppl_medical_documents_are_interleaved_prose_of_held_out_items():
    from medtune.evaluate.run import EvalConfig, _ppl_docs

    cfg = EvalConfig(data_root=str(FIXTURES))
    task = Task("t", "ppl", "medical_in", {"adapter": "pubmedqa", "path": "pubmedqa/test_set.json"},
                extra_sources=({"adapter": "medmcqa", "path": "medmcqa/dev.json"},))
    docs = _ppl_docs(task, cfg)
    pub = json.loads((FIXTURES / "pubmedqa" / "test_set.json").read_text())
    first = next(iter(pub.values()))
    assert docs[0][1] == "\n".join(first["CONTEXTS"]) + "\n" + first["LONG_ANSWER"].strip()
    # MedMCQA items without an explanation (null, empty) have no prose: two of the four fixture items
    assert [d[1] for d in docs[1::2]][:2] == ["Retinal is needed for rhodopsin.", "Mesial, distal and occlusal are surfaces."]
    assert len(docs) == len(pub) + 2
    # the shipped task holds out exactly the MedMCQA half that the studies' training fold leaves out
    held = TASKS["ppl_medical"].extra_sources[0]["fold"]
    study = (Path(__file__).parents[1] / "configs" / "study" / "smollm2_medical_replay.yaml").read_text()
    assert held == {"share": 0.5, "take": "held_out", "stratify": "subject"}
    assert "medmcqa/dev.json,\n       fold: {share: 0.5, take: rest, stratify: subject}" in study


def test_ppl_medical_per_document_nll_sums_to_the_hand_computed_total(tiny_llama, tmp_path):
    root = medical_root(tmp_path)
    report, preds = _eval(tiny_llama, tmp_path, "ppl_medical", root, ppl_window=256, ppl_stride=256, ppl_max_tokens=200)
    res = report["tasks"]["ppl_medical"]
    docs = [p for p in preds if p["task"] == "ppl_medical"]
    model, tok = models.load_model(str(tiny_llama)), models.load_tokenizer(str(tiny_llama))
    from medtune.evaluate.run import EvalConfig, _ppl_docs

    docs_all = _ppl_docs(TASKS["ppl_medical"], EvalConfig(data_root=str(root)))
    assert [d[0].split(":")[0] for d in docs_all[:4]] == ["pubmedqa", "medmcqa", "pubmedqa", "medmcqa"]
    texts = [t for _, t in docs_all]
    ids = tok.encode("\n\n".join(texts))[:200]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    hand = -float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    assert res["tokens"] == 199 and sum(d["tokens"] for d in docs) == 199
    assert sum(d["nll"] for d in docs) == pytest.approx(hand, rel=1e-5)
    assert res["perplexity"]["value"] == pytest.approx(math.exp(hand / 199), rel=1e-5)
    assert len(docs) >= 2 and all(d["tokens"] > 0 for d in docs)


def test_eval_cli_runs_cloze_and_ppl_tasks_together(tiny_llama, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    cfg = tmp_path / "eval.yaml"
    root = medical_root(tmp_path)
    cfg.write_text(f"task_sources:\n  medqa4_cloze: {{adapter: medqa, path: {FIXTURES}/medqa/4_options/phrases_no_exclude_test.jsonl}}\n")
    run = subprocess.run([sys.executable, "-m", "medtune", "eval", str(cfg), "--model.spec", str(tiny_llama),
                          "--tasks", "medmcqa_cloze,medqa4_cloze,ppl_medical,pubmedqa", "--data-root", str(root),
                          "--out", str(out), "--limit", "2", "--ppl-window", "64", "--ppl-stride", "32",
                          "--ppl-max-tokens", "300", "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    res = json.loads((out / "results.json").read_text())["tasks"]
    assert set(res) == {"medmcqa_cloze", "medqa4_cloze", "ppl_medical", "pubmedqa"}
    assert res["medqa4_cloze"]["n"] == 2 and "acc_norm" in res["medqa4_cloze"] and res["ppl_medical"]["perplexity"]["value"] > 1


def test_mmlu_general_cloze_scores_the_option_texts_after_the_bare_question(tiny_llama, tmp_path):
    """MMLU without its medical subjects, in the cloze formulation: the fixture's astronomy items, each
    option's text after "Question: <q>\\nAnswer:" (no subject header, no option list, no letters)."""
    import csv

    report, preds = _eval(tiny_llama, tmp_path, "mmlu_general_cloze",
                          task_sources={"mmlu_general_cloze": {"adapter": "mmlu", "path": "mmlu/test",
                                                               "exclude_subjects": "medical"}})
    rows = list(csv.reader((FIXTURES / "mmlu" / "test" / "astronomy_test.csv").open()))
    model, tok = models.load_model(str(tiny_llama)), models.load_tokenizer(str(tiny_llama))
    assert {p["task"] for p in preds} == {"mmlu_general_cloze"} and len(preds) == len(rows)  # anatomy is medical
    accs = []
    preds.sort(key=lambda p: int(p["id"].split(":")[1]))
    assert [p["id"] for p in preds] == [f"astronomy:{i}" for i in range(1, len(rows) + 1)]
    for p, (question, *options, answer) in zip(preds, rows):
        hand = [_hand_loglik(model, tok, f"Question: {question}\nAnswer:", f" {o}") for o in options]
        assert p["loglikelihoods"] == pytest.approx(hand, abs=1e-4)
        assert p["gold"] == "ABCD".index(answer)
        accs.append(float(max(range(4), key=lambda j: (hand[j], -j)) == p["gold"]))
    assert report["tasks"]["mmlu_general_cloze"]["acc"]["value"] == pytest.approx(sum(accs) / len(accs))
