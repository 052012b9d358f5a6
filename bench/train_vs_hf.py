#!/usr/bin/env python
"""medtune's training engine against plain transformers Trainer + peft (what LMFlow does) and against
the hand-written loop it replaced, in one run.

Same model (the embedded SmolLM2-135M, fp32), same data (the PubMedQA PQA-L items outside the
official test split, as `qa_text` documents), same block size (512), the same batch geometry on
every side (4 blocks per optimizer step) and the same number of tokens. Sides:
- `hf-*`: Trainer + peft, texts grouped into blocks as LMFlow does (LoRA r=8, alpha=16, dropout 0.05,
  all linear layers, lr 2e-4; full fine-tuning lr 2e-5);
- `medtune-*`: `medtune train` on the engine (transformers' Trainer + medtune's CPU plug-ins);
- `old-*`: `medtune train` from the commit before the engine (`--old-rev`, default b1f7634, the
  hand-written loop), its `src/` extracted from git into a temporary folder;
- `medtune-*-m1`: the engine at micro-batch 1 x 4 accumulation passes, 2 steps: a geometry the memory
  estimate was not calibrated on (the estimate's per-layer count was fitted at micro-batch 4).
Each side runs in its own process (under `--lock`, so other jobs of the machine run between sides,
never during one); tokens/s counts only the training loop; peak memory is the process's maximum RSS;
for medtune sides the memory estimate printed before step 1 is recorded beside it.

`--equal` adds the plug-in check on SmolLM2: dropout 0, the same seed and the same batch order,
`medtune train` (plug-ins on) and plain Trainer + peft on medtune's blocks (bench/plain_trainer.py)
for 20 steps at block 128, LoRA and full; per-step losses compared (target <= 1e-3 relative).

    .venv/bin/python bench/train_vs_hf.py --steps 6 --equal --lock /tmp/medtune-torch.lock
    .venv/bin/python bench/train_vs_hf.py --steps 4 --repeat 3 --only hf-lora,medtune-lora,old-lora --lock /tmp/medtune-torch.lock
    .venv/bin/python bench/train_vs_hf.py --steps 3 --only hf-lora,medtune-lora    # a quick smoke run

Needs the data at ../shared/data. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
BLOCK = 512
GLOBAL_BATCH = 4
LR = {"lora": 2e-4, "full": 2e-5}


def documents() -> list[str]:
    from medtune.data.prompts import TRAIN_TEMPLATES, training_text
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig

    recs = load_source(SourceConfig(adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="trainval"), DATA, Rejects())
    return [training_text(r, TRAIN_TEMPLATES["qa_text"]).text for r in recs]


def run_hf(steps: int, out: Path, method: str) -> dict:
    """LMFlow's recipe: tokenize, append EOS, concatenate, group into blocks (dropping the remainder), Trainer."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from medtune import models

    path = models.resolve("smollm2-135m").path
    tok = AutoTokenizer.from_pretrained(path)
    ids = [t + [tok.eos_token_id] for t in tok(documents(), add_special_tokens=False)["input_ids"]]
    flat = [x for t in ids for x in t]
    n = len(flat) // BLOCK
    blocks = [flat[i * BLOCK:(i + 1) * BLOCK] for i in range(n)]
    ds = Dataset.from_dict({"input_ids": blocks, "labels": blocks, "attention_mask": [[1] * BLOCK] * n})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=GLOBAL_BATCH, max_steps=steps,
                             learning_rate=LR[method], lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "tokens": steps * GLOBAL_BATCH * BLOCK, "first_loss": losses[0], "last_loss": losses[-1]}


def medtune_config(steps: int, out: Path, micro: int, method: str, loss: str, block: int = BLOCK,
                   dropout: float = LORA["dropout"]):
    from medtune.train.config import TrainConfig

    return TrainConfig.model_validate({
        "model": {"spec": "smollm2-135m"},
        "data": {"data_root": str(DATA), "block_size": block, "drop_tail": True,
                 "train": [{"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"}]},
        "method": method, "lora": {**LORA, "dropout": dropout, "target_modules": "all-linear"},
        "learning_rate": LR[method], "loss": loss, "micro_batch_size": micro, "grad_accum": GLOBAL_BATCH // micro,
        "max_steps": steps, "save_every": 0, "progress": False, "out": str(out),
    })


def run_medtune(steps: int, out: Path, micro: int, method: str, loss: str) -> dict:
    """One `medtune train` run (today's engine, or the old loop when PYTHONPATH points at its src/)."""
    from medtune.train import run

    estimate: dict[str, float] = {}
    if hasattr(run, "_memory_estimate"):  # the engine prints its estimate before step 1; record it too
        real = run._memory_estimate

        def recording(*args, **kwargs):
            line, n = real(*args, **kwargs)
            estimate["gib"] = float(line.split("estimated peak memory ")[1].split(" GiB")[0])
            return line, n

        run._memory_estimate = recording
    run.train(medtune_config(steps, out, micro, method, loss))
    curves = json.loads((out / "curves.json").read_text())
    h = curves["history"]
    return {"seconds": curves["seconds"], "tokens": h[-1]["tokens"], "first_loss": h[0]["loss"], "last_loss": h[-1]["loss"],
            "estimate_mb": estimate["gib"] * 1024 if estimate else None}


def run_equal(method: str, out: Path, steps: int = 20, block: int = 128) -> dict:
    """The plug-in check: medtune (plug-ins on, dropout 0) and plain Trainer + peft on the same blocks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_trainer import plain_trainer_losses

    from medtune import models
    from medtune.train.run import train

    cfg = medtune_config(steps, out, GLOBAL_BATCH, method, "all_tokens", block=block, dropout=0.0)
    train(cfg)
    ours = [h["loss"] for h in json.loads((out / "curves.json").read_text())["history"]]
    plain = plain_trainer_losses(cfg, models.resolve("smollm2-135m").path, out, steps)
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, plain))
    return {"steps": len(ours), "plain_steps": len(plain), "worst_rel": worst, "ours": ours, "plain": plain}


def matmul_rate() -> float:
    """fp32 GFLOP/s of these cores at the model's MLP shape (2048 x 576 @ 576 x 1536), best of 3."""
    import torch

    x, w = torch.randn(2048, 576), torch.randn(1536, 576)
    x @ w.T
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(10):
            x @ w.T
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * 2048 * 576 * 1536 / best / 1e9


def n_params() -> int:
    from safetensors import safe_open

    from medtune import models

    n = 0
    for f in Path(models.resolve("smollm2-135m").path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return n  # the LM head is tied to the embedding: counted once


SIDES = [  # (name, runner, method, loss, micro, steps: None = --steps)
    ("hf-lora", "hf", "lora", "all_tokens", GLOBAL_BATCH, None),
    ("medtune-lora", "medtune", "lora", "all_tokens", GLOBAL_BATCH, None),
    ("old-lora", "old", "lora", "all_tokens", GLOBAL_BATCH, None),
    ("medtune-lora-answer_only", "medtune", "lora", "answer_only", GLOBAL_BATCH, None),
    ("hf-full", "hf", "full", "all_tokens", GLOBAL_BATCH, None),
    ("medtune-full", "medtune", "full", "all_tokens", GLOBAL_BATCH, None),
    ("old-full", "old", "full", "all_tokens", GLOBAL_BATCH, None),
    ("medtune-lora-m1", "medtune", "lora", "all_tokens", 1, 2),
    ("medtune-full-m1", "medtune", "full", "all_tokens", 1, 2),
]


def old_src(rev: str, into: Path) -> Path:
    """The src/ tree of commit ``rev`` of this repository, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def side_process(argv: list[str], lock: str | None, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, __file__, *argv]
    if lock:
        cmd = ["flock", lock, *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--equal-side", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated side names (default: all)")
    ap.add_argument("--old-rev", default="b1f7634", help="the commit whose hand-written loop the old-* sides run")
    ap.add_argument("--equal", action="store_true", help="also run the plug-in check (20 steps at block 128, LoRA and full)")
    ap.add_argument("--lock", help="hold this lock file (flock) while each side runs (and the matmul rate is measured)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every side, interleaved; the table shows each side's median round")
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side or args.equal_side:
        out = Path(tempfile.mkdtemp(prefix="bench-side-"))
        try:
            if args.equal_side:
                res = run_equal(args.equal_side, out / "run")
            else:
                name, runner, method, loss, micro, steps = next(s for s in SIDES if s[0] == args.side)
                steps = steps or args.steps
                res = (run_hf(steps, out, method) if runner == "hf"
                       else run_medtune(steps, out / "run", micro, method, loss))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.result).write_text(json.dumps(res))
        return
    wanted = args.only.split(",") if args.only else [s[0] for s in SIDES]
    if args.lock:  # the FLOP floor's rate is measured alone too
        import fcntl

        with open(args.lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            rate = matmul_rate()
    else:
        rate = matmul_rate()
    params = n_params()
    print(f"fp32 matmul rate: {rate:.0f} GFLOP/s; parameters: {params / 1e6:.1f} M; load average {loadavg()}")
    work = Path(tempfile.mkdtemp(prefix="medtune-train-bench-"))
    old_env = None
    if any(s[1] == "old" and s[0] in wanted for s in SIDES):
        old_env = {**os.environ, "PYTHONPATH": str(old_src(args.old_rev, work))}
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):  # the sides interleaved, so a slow spell of the machine hits each alike
        for name, runner, *_ in SIDES:
            if name not in wanted:
                continue
            out = work / f"{name}.json"
            before = loadavg()
            print(f"running {name}, round {rep + 1}/{args.repeat} (load average {before}) ...", file=sys.stderr, flush=True)
            side_process(["--side", name, "--steps", str(args.steps), "--result", str(out)], args.lock,
                         old_env if runner == "old" else None)
            runs.setdefault(name, []).append({**json.loads(out.read_text()), "load": before})
    tps = lambda r: r["tokens"] / r["seconds"]
    res = {name: sorted(rs, key=tps)[len(rs) // 2] for name, rs in runs.items()}  # the median round's run
    load = {name: r["load"] for name, r in res.items()}
    if args.repeat > 1:
        print("tokens/s of each round: " + "; ".join(f"{n} " + ", ".join(f"{tps(r):.1f}" for r in rs)
                                                  for n, rs in runs.items()))
    print("| side | method | loss | batch geometry | tokens | tokens/s | FLOP floor reached | peak RSS (MB) | "
          "estimate (MB) | loss first → last | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runner, method, loss, micro, _ in SIDES:
        if name not in res:
            continue
        r = res[name]
        geometry = "4 blocks x 1 pass" if runner == "hf" else f"{micro} block(s) x {GLOBAL_BATCH // micro} pass(es)"
        floor = (4 if method == "lora" else 6) * params * r["tokens"] / (rate * 1e9) / r["seconds"]
        label = {"hf": "Trainer + peft (LMFlow-style)", "medtune": "medtune (engine)",
                 "old": f"medtune loop at {args.old_rev}"}[runner]
        est = f"{r['estimate_mb']:.0f} ({r['estimate_mb'] / r['peak_rss_mb']:.2f}×)" if r.get("estimate_mb") else "–"
        print(f"| {label} | {method} | {loss} | {geometry} | {r['tokens']:,} | {tps(r):.1f} | {floor:.0%} | "
              f"{r['peak_rss_mb']:.0f} | {est} | {r['first_loss']:.3f} → {r['last_loss']:.3f} | {load[name]} |")
    for method, target in (("lora", 1.3), ("full", 1.0)):
        hf, mt, old = res.get(f"hf-{method}"), res.get(f"medtune-{method}"), res.get(f"old-{method}")
        if hf and mt:
            print(f"\n{method}: tokens/s engine / Trainer {tps(mt) / tps(hf):.2f} (target ≥ {target}); "
                  f"peak RSS engine / Trainer {mt['peak_rss_mb'] / hf['peak_rss_mb']:.2f} (target ≤ 1)")
        if old and mt:
            print(f"{method}: tokens/s engine / old loop {tps(mt) / tps(old):.2f} (target ≥ 0.95); "
                  f"peak RSS engine / old loop {mt['peak_rss_mb'] / old['peak_rss_mb']:.2f}")
    if args.equal:
        print("\n| plug-in check (SmolLM2, block 128, 20 steps, dropout 0) | steps | worst relative loss difference | "
              "first loss medtune / plain | last loss medtune / plain | load avg |")
        print("|---|---|---|---|---|---|")
        for method in ("lora", "full"):
            out = work / f"equal-{method}.json"
            before = loadavg()
            print(f"running the plug-in check, {method} (load average {before}) ...", file=sys.stderr, flush=True)
            side_process(["--equal-side", method, "--result", str(out)], args.lock)
            e = json.loads(out.read_text())
            print(f"| {method} | {e['steps']} / {e['plain_steps']} | {e['worst_rel']:.2e} (target ≤ 1e-3) | "
                  f"{e['ours'][0]:.4f} / {e['plain'][0]:.4f} | {e['ours'][-1]:.4f} / {e['plain'][-1]:.4f} | {before} |")
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
