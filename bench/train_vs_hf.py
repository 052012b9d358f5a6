#!/usr/bin/env python
"""medtune's training loop against what LMFlow does (transformers Trainer + peft, texts grouped into blocks).

Same model (the embedded SmolLM2-135M, fp32), same data (the PubMedQA PQA-L items outside the
official test split, as `qa_text` documents), same block size (512), the same batch geometry on
both sides (4 blocks per forward pass, one pass per optimizer step) and the same number of tokens.
Two methods: LoRA (r=8, alpha=16, dropout 0.05, all linear layers, lr 2e-4) and full fine-tuning
(lr 2e-5). Both sides train every token (LMFlow's loss); one extra medtune row shows `loss:
answer_only`, which has no Trainer counterpart here (the LM head then runs at the answer tokens
only), and is not part of the ratios.

Each side runs in its own process; tokens/s counts only the training loop, peak memory is the
process's maximum RSS. The FLOP floor is measured in the same run: the fp32 matmul rate of these
cores at the model's MLP shape, then 4 x params x tokens for LoRA (forward plus the activation
backward; frozen weights get no gradient) and 6 x params x tokens for full fine-tuning (plus the
weight gradients); "floor" is that time over the measured time.

    .venv/bin/python bench/train_vs_hf.py              # 8 steps x 4 blocks x 512 tokens per side
    .venv/bin/python bench/train_vs_hf.py --steps 3    # a quick smoke run

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


def run_medtune(steps: int, out: Path, micro: int, method: str, loss: str) -> dict:
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    cfg = TrainConfig.model_validate({
        "model": {"spec": "smollm2-135m"},
        "data": {"data_root": str(DATA), "block_size": BLOCK, "drop_tail": True,
                 "train": [{"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"}]},
        "method": method, "lora": {**LORA, "target_modules": "all-linear"}, "learning_rate": LR[method], "loss": loss,
        "micro_batch_size": micro, "grad_accum": GLOBAL_BATCH // micro, "max_steps": steps,
        "save_every": 0, "progress": False, "out": str(out),
    })
    train(cfg)
    curves = json.loads((out / "curves.json").read_text())
    h = curves["history"]
    return {"seconds": curves["seconds"], "tokens": h[-1]["tokens"], "first_loss": h[0]["loss"], "last_loss": h[-1]["loss"]}


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


SIDES = [  # (name, runner, method, loss, in the ratios)
    ("hf-lora", "hf", "lora", "all_tokens"),
    ("medtune-lora", "medtune", "lora", "all_tokens"),
    ("medtune-lora-answer_only", "medtune", "lora", "answer_only"),
    ("hf-full", "hf", "full", "all_tokens"),
    ("medtune-full", "medtune", "full", "all_tokens"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--micro", type=int, default=GLOBAL_BATCH,
                    help="medtune micro-batch (blocks); accumulation fills the global batch of 4 (default: 4, the Trainer's)")
    ap.add_argument("--only", help="comma-separated side names (default: all)")
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        name, runner, method, loss = next(s for s in SIDES if s[0] == args.side)
        out = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        try:
            res = (run_hf(args.steps, out, method) if runner == "hf"
                   else run_medtune(args.steps, out / "run", args.micro, method, loss))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.result).write_text(json.dumps(res))
        return
    wanted = args.only.split(",") if args.only else [s[0] for s in SIDES]
    rate, params = matmul_rate(), n_params()
    print(f"fp32 matmul rate: {rate:.0f} GFLOP/s; parameters: {params / 1e6:.1f} M")
    work = Path(tempfile.mkdtemp(prefix="medtune-train-bench-"))
    res = {}
    for name, runner, method, loss in SIDES:
        if name not in wanted:
            continue
        out = work / f"{name}.json"
        print(f"running {name} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--side", name, "--steps", str(args.steps), "--micro", str(args.micro),
                        "--result", str(out)], check=True, stdout=subprocess.DEVNULL)
        res[name] = json.loads(out.read_text())
    shutil.rmtree(work, ignore_errors=True)
    tps = lambda r: r["tokens"] / r["seconds"]
    print("| side | method | loss | batch geometry | tokens | tokens/s | FLOP floor reached | peak RSS (MB) | loss first → last |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runner, method, loss in SIDES:
        if name not in res:
            continue
        r = res[name]
        geometry = "4 blocks x 1 pass" if runner == "hf" else f"{args.micro} block(s) x {GLOBAL_BATCH // args.micro} pass(es)"
        floor = (4 if method == "lora" else 6) * params * r["tokens"] / (rate * 1e9) / r["seconds"]
        label = "Trainer + peft (LMFlow-style)" if runner == "hf" else "medtune"
        print(f"| {label} | {method} | {loss} | {geometry} | {r['tokens']:,} | {tps(r):.1f} | {floor:.0%} | "
              f"{r['peak_rss_mb']:.0f} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |")
    for method, target in (("lora", 1.3), ("full", 1.0)):
        hf, mt = res.get(f"hf-{method}"), res.get(f"medtune-{method}")
        if hf and mt:
            print(f"\n{method}: tokens/s ratio (medtune / Trainer) {tps(mt) / tps(hf):.2f} (target ≥ {target}); "
                  f"peak memory ratio {mt['peak_rss_mb'] / hf['peak_rss_mb']:.2f} (target < 1 at equal micro-batch)")


if __name__ == "__main__":
    main()
