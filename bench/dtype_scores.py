#!/usr/bin/env python
"""How far bf16 scoring is from fp32 scoring: the same model, items and scorer, in two dtypes, on the CPU.

The placement rule (``medtune.placement``) scores in bf16 on a GPU by default and in fp32 on the CPU;
lm-eval-exactness holds in fp32. This prints, per task, how many items get the same predicted answer in
both dtypes, and the largest |Δ log-likelihood| of any choice, with the seconds each dtype took (bf16
matmul is slow on most CPUs: measure a handful of items first).

    flock /tmp/medtune-torch.lock env PYTHONPATH=src .venv/bin/python bench/dtype_scores.py --model tiny --limit 100
    flock /tmp/medtune-torch.lock env PYTHONPATH=src .venv/bin/python bench/dtype_scores.py --model smollm2-135m --limit 5

``--model tiny``: the tests' random 2-layer Llama (built in a temporary directory); otherwise any model
spec. The real data is read from ../shared/data. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def scores(spec: str, dtype: str, tasks: str, limit: int) -> tuple[list[dict], float]:
    """(the prediction rows, seconds) of ``spec`` scored in ``dtype`` on the CPU."""
    from medtune import models
    from medtune.evaluate.run import EvalConfig, score_model

    resolved = models.resolve(spec)
    model = models.load_model(resolved, dtype=models.named_dtype(dtype), device="cpu")
    tok = models.load_tokenizer(resolved)
    started = time.perf_counter()
    _, rows = score_model(model, tok, EvalConfig(tasks=tasks, data_root=str(DATA), limit=limit, progress=False))
    return rows, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tasks", default="pubmedqa,medmcqa,medqa4")
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args()
    spec = args.model
    if spec == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_tiny_llama

        spec = str(make_tiny_llama(Path(tempfile.mkdtemp()) / "tiny"))
    fp32, t32 = scores(spec, "float32", args.tasks, args.limit)
    bf16, t16 = scores(spec, "bfloat16", args.tasks, args.limit)
    print(f"model {args.model}, {args.limit} items per task; fp32 {t32:.1f} s, bf16 {t16:.1f} s (CPU)")
    print(f"{'task':<10} {'items':>5} {'same answer':>12} {'max |Δ ll| (nats)':>18}")
    for task in args.tasks.split(","):
        pairs = [(a, b) for a, b in zip(fp32, bf16) if a["task"] == task]
        assert all(a["id"] == b["id"] for a, b in pairs)
        same = sum(a["pred"] == b["pred"] for a, b in pairs)
        delta = max((abs(x - y) for a, b in pairs for x, y in zip(a["loglikelihoods"], b["loglikelihoods"])), default=0.0)
        print(f"{task:<10} {len(pairs):>5} {same:>7} / {len(pairs):<4} {delta:>18.4f}")


if __name__ == "__main__":
    main()
