#!/usr/bin/env python
"""medtune's scorer against lm-evaluation-harness: same model, same items, same prompts, one run.

For each task it runs lm-eval 0.4.13 (HFLM, custom task YAMLs over local copies of the items,
HF_DATASETS_OFFLINE=1) and medtune (``medtune.evaluate``) in separate processes, so their peak
memory is measured apart, and prints items/s for both, the speed ratio, per-item agreement of the
predicted answer, both accuracies and both peak RSS. Prompts are checked to be identical.

    .venv/bin/python bench/eval_vs_lmeval.py            # the default subsets, ~15 min on 2 CPU cores
    .venv/bin/python bench/eval_vs_lmeval.py --scale 0.1  # a quick smoke run
    .venv/bin/python bench/eval_vs_lmeval.py --tasks suite  # issue 14: two whole MMLU medical subjects + medqa5

MMLU subjects run lm-eval's own ``mmlu_<subject>.yaml`` (included) over local copies of the items;
``medqa5`` runs ``bench/lmeval_tasks/medqa_5options`` (lm-eval has no 5-option MedQA task; that yaml
mirrors its medqa_4options) on the official file itself.

Needs `pip install -e .[bench]` (lm-eval) and the data at ../shared/data. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# name -> (kind: how lm-eval reads the item, medtune task, items, fewshot)
TASKS = {
    "pubmedqa": ("pubmedqa", "pubmedqa", 150, 0),
    "medqa4": ("medqa", "medqa4", 300, 0),
    "medmcqa": ("medmcqa", "medmcqa", 300, 0),
    "arc_challenge": ("arc", "arc_challenge", 300, 0),
    "medqa4_5shot": ("medqa", "medqa4", 100, 5),
    # issue 14: the Open Medical-LLM Leaderboard suite (whole MMLU subjects; medqa5 via bench/lmeval_tasks)
    **{f"mmlu_{s}": ("mmlu", f"mmlu_{s}", n, 0) for s, n in (  # whole test splits
        ("anatomy", 135), ("clinical_knowledge", 265), ("college_biology", 144), ("college_medicine", 173),
        ("medical_genetics", 100), ("professional_medicine", 272))},
    "medqa5": ("medqa5", "medqa5", 300, 0),
}
DEFAULT = "pubmedqa,medqa4,medmcqa,arc_challenge,medqa4_5shot"
SUITE = "mmlu_anatomy,mmlu_clinical_knowledge,medqa5"
KIND = {"pubmedqa": "single-token", "medqa4": "single-token", "medmcqa": "single-token",
        "arc_challenge": "multi-token", "medqa4_5shot": "5-shot", "medqa5": "single-token",
        **{n: "single-token" for n in TASKS if n.startswith("mmlu_")}}
TARGET = {"single-token": 1.3, "multi-token": 2.0, "5-shot": 4.0}
MEDQA5_TASK_DIR = REPO / "bench" / "lmeval_tasks" / "medqa_5options"
"""medqa5 on the lm-eval side: a task yaml mirroring lm-eval's medqa_4options (lm-eval has no 5-option task)."""


def records(task: str, n: int | None, fewshot: bool = False):
    """The items of a medtune task (its test source, or its few-shot source), the first ``n``."""
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig
    from medtune.evaluate.tasks import TASKS as MEDTUNE_TASKS

    t = MEDTUNE_TASKS[task]
    recs = load_source(SourceConfig.model_validate(t.fewshot_source if fewshot else t.source), DATA, Rejects())
    return recs[:n] if n else recs


def lmeval_doc(kind: str, r) -> dict:
    """The item in the schema lm-eval's own task code reads (bigbio / HF layouts)."""
    if kind == "pubmedqa":
        return {"QUESTION": r.question, "CONTEXTS": list(r.context_parts), "final_decision": r.answer_text}
    if kind == "medmcqa":
        return {"question": r.question, **dict(zip(("opa", "opb", "opc", "opd"), r.options)), "cop": r.answer}
    if kind == "medqa":
        return {"sent1": r.question, **{f"ending{i}": o for i, o in enumerate(r.options)}, "label": r.answer}
    if kind == "arc":
        return {"question": r.question, "choices": {"text": list(r.options), "label": list(r.option_labels)},
                "answerKey": r.option_labels[r.answer]}
    if kind == "mmlu":  # cais/mmlu
        return {"question": r.question, "choices": list(r.options), "answer": r.answer}
    raise ValueError(kind)


TASK_YAML = {
    "pubmedqa": 'doc_to_text: !function preprocess_pubmedqa.doc_to_text\ndoc_to_target: final_decision\ndoc_to_choice: ["yes", "no", "maybe"]\n',
    "medmcqa": "doc_to_text: !function utils_medmcqa.doc_to_text\ndoc_to_target: cop\ndoc_to_choice: ['A','B','C','D']\n",
    "medqa": "doc_to_text: !function preprocess_medqa.doc_to_text\ndoc_to_target: !function preprocess_medqa.doc_to_target\ndoc_to_choice: ['A','B','C','D']\n",
    "arc": 'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{choices.label.index(answerKey)}}"\ndoc_to_choice: "{{choices.text}}"\n',
}
LMEVAL_CODE = {"pubmedqa": "pubmedqa/preprocess_pubmedqa.py", "medmcqa": "medmcqa/utils_medmcqa.py", "medqa": "medqa/preprocess_medqa.py"}


def _mmlu_yaml(task: str, files: dict[str, str]) -> str:
    """lm-eval's own mmlu_<subject>.yaml (description, _default_template_yaml prompt) over the local items."""
    import lm_eval

    subject_yaml = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / f"{task}.yaml"
    return (f"include: {subject_yaml}\ntask: bench_{task}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files: {json.dumps(files)}\n")


def write_lmeval_task(name: str, workdir: Path, scale: float) -> Path:
    import lm_eval

    kind, task, n, shots = TASKS[name]
    if kind == "medqa5":  # reads the official files itself; simple_evaluate's limit takes the first n
        return MEDQA5_TASK_DIR
    tdir = workdir / name
    tdir.mkdir(parents=True, exist_ok=True)
    test = [lmeval_doc(kind, r) for r in records(task, max(1, int(n * scale)))]
    (tdir / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in test))
    files = {"test": str(tdir / "test.jsonl")}
    extra = ""
    if shots or kind == "mmlu":  # the mmlu template names its dev split as the few-shot split
        dev = [lmeval_doc(kind, r) for r in records(task, shots or 5, fewshot=True)]
        (tdir / "dev.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dev))
        files["dev"] = str(tdir / "dev.jsonl")
        extra = "fewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
    if kind == "mmlu":
        (tdir / f"{name}.yaml").write_text(_mmlu_yaml(task, files))
        return tdir
    if kind in LMEVAL_CODE:  # lm-eval's own prompt code, copied from the installed package
        shutil.copy(Path(lm_eval.__file__).parent / "tasks" / LMEVAL_CODE[kind], tdir)
    (tdir / f"{name}.yaml").write_text(
        f"task: bench_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files: {json.dumps(files)}\n"
        f"output_type: multiple_choice\ntest_split: test\n{extra}{TASK_YAML[kind]}"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return tdir


def lmeval_task_name(name: str) -> str:
    return "medqa_5options" if TASKS[name][0] == "medqa5" else f"bench_{name}"


def run_lmeval(name: str, tdir: Path, model_dir: str, batch_size: int, scale: float) -> dict:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, dtype="float32", batch_size=batch_size, device="cpu")
    kind, _, n, shots = TASKS[name]
    lm_name = lmeval_task_name(name)
    os.chdir(REPO)  # the medqa_5options yaml names its files relative to the repo root
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[lm_name], task_manager=TaskManager(include_path=str(tdir)),
                                  num_fewshot=shots or None, log_samples=True, fewshot_random_seed=0,
                                  limit=max(1, int(n * scale)) if kind == "medqa5" else None)
    seconds = time.perf_counter() - started
    samples = sorted(out["samples"][lm_name], key=lambda s: s["doc_id"])
    preds = [max(range(len(s["filtered_resps"])), key=lambda j: (s["filtered_resps"][j][0], -j)) for s in samples]
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    contexts = [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple)) else s["arguments"]["gen_args_0"]["arg_0"] for s in samples]
    # Gold answers come from the medtune side: the items are the same (the prompts are compared).
    return {"seconds": seconds, "preds": preds, "contexts": contexts, "lls": lls}


def run_medtune(name: str, model_dir: str, scale: float, budget: int) -> dict:
    from medtune import models
    from medtune.data.prompts import eval_prompt
    from medtune.evaluate.metrics import predict
    from medtune.evaluate.requests import build_request
    from medtune.evaluate.scorer import Scorer

    kind, task, n, shots = TASKS[name]
    model = models.load_model(model_dir)
    tok = models.load_tokenizer(model_dir)
    recs = records(task, max(1, int(n * scale)))
    exemplars = records(task, shots, fewshot=True) if shots else []
    started = time.perf_counter()
    prompts = [eval_prompt(r, fewshot=exemplars) for r in recs]
    lls = Scorer(model, token_budget=budget).loglikelihoods([build_request(tok, p) for p in prompts], progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "preds": [predict(x) for x in lls], "gold": [r.answer for r in recs],
            "contexts": [p.context for p in prompts], "lls": [list(map(float, x)) for x in lls]}


def child(args: argparse.Namespace) -> None:
    torch_threads = os.environ.get("BENCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    if args.side == "lmeval":
        res = run_lmeval(args.task, Path(args.taskdir), args.model_dir, args.lmeval_batch, args.scale)
    else:
        res = run_medtune(args.task, args.model_dir, args.scale, args.budget)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=DEFAULT, help=f"comma-separated, of: {', '.join(TASKS)}; 'suite' = {SUITE}")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each task's default item count")
    ap.add_argument("--lmeval-batch", type=int, default=8, help="lm-eval batch size (its default is 1)")
    ap.add_argument("--budget", type=int, default=4096, help="medtune token budget per batch")
    ap.add_argument("--side", choices=["lmeval", "medtune"], help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--taskdir", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)

    from medtune import models

    model_dir = models.resolve("smollm2-135m").path
    work = Path(tempfile.mkdtemp(prefix="medtune-bench-"))
    rows = []
    lldiff = []
    for name in args.tasks.replace("suite", SUITE).split(","):
        tdir = write_lmeval_task(name, work, args.scale)
        res = {}
        for side in ("lmeval", "medtune"):
            out = work / f"{name}-{side}.json"
            cmd = [sys.executable, __file__, "--side", side, "--task", name, "--taskdir", str(tdir), "--model-dir", model_dir,
                   "--result", str(out), "--scale", str(args.scale), "--lmeval-batch", str(args.lmeval_batch), "--budget", str(args.budget)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if side == "medtune" else None)
            res[side] = json.loads(out.read_text())
        a, b = res["lmeval"], res["medtune"]
        n = len(a["preds"])
        same_prompts = a["contexts"] == b["contexts"]
        agree = sum(x == y for x, y in zip(a["preds"], b["preds"])) / n
        acc_a = sum(p == g for p, g in zip(a["preds"], b["gold"])) / n
        acc_b = sum(p == g for p, g in zip(b["preds"], b["gold"])) / n
        rows.append((name, KIND[name], n, n / a["seconds"], n / b["seconds"], a["seconds"] / b["seconds"], agree, acc_a, acc_b,
                     a["peak_rss_mb"], b["peak_rss_mb"], same_prompts))
        diffs = [abs(x - y) for ra, rb in zip(a["lls"], b["lls"]) for x, y in zip(ra, rb)]
        margins = [sorted(r, reverse=True)[0] - sorted(r, reverse=True)[1] for r in b["lls"] if len(r) > 1]
        lldiff.append((name, max(diffs), sum(diffs) / len(diffs), min(margins)))
        print(f"{name}: done ({a['seconds']:.0f} s lm-eval, {b['seconds']:.0f} s medtune)", file=sys.stderr, flush=True)
    print("| task | choices | n | lm-eval items/s | medtune items/s | speed ratio (target) | agreement | lm-eval acc | medtune acc | peak RSS lm-eval / medtune (MB) | prompts identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, kind, n, ia, ib, ratio, agree, acc_a, acc_b, ma, mb, same) in rows:
        print(f"| {name} | {kind} | {n} | {ia:.2f} | {ib:.2f} | {ratio:.2f} (≥ {TARGET[kind]}) | {100 * agree:.1f} % | "
              f"{100 * acc_a:.1f} | {100 * acc_b:.1f} | {ma:.0f} / {mb:.0f} | {'yes' if same else 'NO'} |")
    print("\nPer-choice log-likelihoods, medtune vs lm-eval (the predictions alone can agree by chance when a model\npicks the same letter for every item):")
    for name, mx, mean, margin in lldiff:
        print(f"  {name}: max |Δ| {mx:.2e}, mean |Δ| {mean:.2e} nats; smallest top-2 margin (medtune) {margin:.2e}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
