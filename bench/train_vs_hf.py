#!/usr/bin/env python
"""medtune's training loop against what LMFlow does (transformers Trainer + peft, texts grouped into blocks).

Same model (the embedded SmolLM2-135M), same data (the PubMedQA PQA-L items outside the official
test split, as `qa_text` documents), same LoRA settings (r=8, alpha=16, dropout 0.05, all linear
layers), same block size (512), same global batch (4 blocks) and the same number of tokens. Each
side runs in its own process; tokens/s counts only the training loop, peak memory is the process's
maximum RSS.

    .venv/bin/python bench/train_vs_hf.py              # 12 steps x 4 blocks x 512 tokens per side
    .venv/bin/python bench/train_vs_hf.py --steps 3    # a quick smoke run

Needs the data at ../shared/data. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def documents() -> list[str]:
    from medtune.data.prompts import TRAIN_TEMPLATES, training_text
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig

    recs = load_source(SourceConfig(adapter="pubmedqa", path="pubmedqa/ori_pqal.json", split="trainval"), DATA, Rejects())
    return [training_text(r, TRAIN_TEMPLATES["qa_text"]).text for r in recs]


def run_hf(steps: int, out: Path) -> dict:
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
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=GLOBAL_BATCH, max_steps=steps,
                             learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "tokens": steps * GLOBAL_BATCH * BLOCK, "first_loss": losses[0], "last_loss": losses[-1]}


def run_medtune(steps: int, out: Path, micro: int) -> dict:
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    cfg = TrainConfig.model_validate({
        "model": {"spec": "smollm2-135m"},
        "data": {"data_root": str(DATA), "block_size": BLOCK, "drop_tail": True,
                 "train": [{"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"}]},
        "method": "lora", "lora": {**LORA, "target_modules": "all-linear"}, "learning_rate": 2e-4,
        "micro_batch_size": micro, "grad_accum": GLOBAL_BATCH // micro, "max_steps": steps,
        "save_every": 0, "progress": False, "out": str(out),
    })
    train(cfg)
    curves = json.loads((out / "curves.json").read_text())
    h = curves["history"]
    return {"seconds": curves["seconds"], "tokens": h[-1]["tokens"], "first_loss": h[0]["loss"], "last_loss": h[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--micro", type=int, default=1, help="medtune micro-batch (blocks); accumulation fills the global batch of 4")
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        out = Path(tempfile.mkdtemp(prefix=f"bench-{args.side}-"))
        res = run_hf(args.steps, out) if args.side == "hf" else run_medtune(args.steps, out / "run", args.micro)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.result).write_text(json.dumps(res))
        return
    work = Path(tempfile.mkdtemp(prefix="medtune-train-bench-"))
    res = {}
    for side in ("hf", "medtune"):
        out = work / f"{side}.json"
        subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--micro", str(args.micro),
                        "--result", str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res[side] = json.loads(out.read_text())
    hf, mt = res["hf"], res["medtune"]
    tps = lambda r: r["tokens"] / r["seconds"]
    print(f"| side | batch geometry | tokens | tokens/s | peak RSS (MB) | loss first → last |")
    print("|---|---|---|---|---|---|")
    print(f"| Trainer + peft (LMFlow-style) | 4 blocks x 1 step | {hf['tokens']:,} | {tps(hf):.1f} | {hf['peak_rss_mb']:.0f} | "
          f"{hf['first_loss']:.3f} → {hf['last_loss']:.3f} |")
    print(f"| medtune | {args.micro} block(s) x {GLOBAL_BATCH // args.micro} accumulation | {mt['tokens']:,} | {tps(mt):.1f} | "
          f"{mt['peak_rss_mb']:.0f} | {mt['first_loss']:.3f} → {mt['last_loss']:.3f} |")
    print(f"\ntokens/s ratio (medtune / Trainer): {tps(mt) / tps(hf):.2f} (target ≥ 1.0)")
    print(f"peak memory ratio (medtune / Trainer): {mt['peak_rss_mb'] / hf['peak_rss_mb']:.2f} (target ≤ 0.7)")


if __name__ == "__main__":
    main()
