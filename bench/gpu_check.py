#!/usr/bin/env python
"""The prepared GPU check: medtune's stages on one H100/H200-class GPU, in under 8 minutes.

Parts (random-weight models built from configs, nothing downloaded; docs/gpu.md says what each measures):
  a        Llama-3.1-8B-shaped LoRA (r 16, all linear layers), 20 steps of 2,048 tokens through `medtune train`:
           steady tokens/s, MFU, peak CUDA memory vs medtune's own estimate, loss
  a_plain  the same run on plain transformers Trainer + peft at equal geometry (same blocks, order, precision,
           checkpointing, optimizer), for the tokens/s and peak-memory ratios
  b        the 8B shape under QLoRA (4-bit NF4 base, bitsandbytes): peak memory (10 steps)
  c        Llama-3.2-1B-shaped full fine-tuning, 20 steps: tokens/s, MFU, peak memory vs estimate
  d        SmolLM2-135M-shaped model through medtune's scorer in fp32 and bf16 (512 items): per-item
           agreement, max |d log-likelihood|, items/s
  e_sweep  one sweep point, e_merge one merge, with `device` set: the model's parameters are on the GPU
           ("skipped: <stage> has no device option" where the stage's config has no such field);
           e_parents a merge of mixed parents (adapter + full checkpoint), the multi-parent search's model
  f        `medtune data build` at 1e8 tokens vs `tokenizer(texts)` with its threads (needs --tokenizer, --text)

Each part runs in its own process with a time budget, inside a global deadline (default 450 s); a part that
overruns is stopped and reported, and any part that cannot run says "skipped: why" (no CUDA, no
bitsandbytes, no files, out of time, an exception's first line). One table on stdout, one JSON (--json).

Sizing (H200, ~990 TFLOP/s bf16 dense peak; at 30-40 % MFU ~350 TFLOP/s): an 8B LoRA step of 2,048 tokens is
~4 x 8e9 x 2,048 = 66 TFLOP of model FLOPs (~100 with checkpointing's recomputation), ~0.3 s; 20 steps ~6 s.
Each training part is dominated by its start (imports, making the weights, ~20-40 s). Expected total ~4-5 min.

On the lent GPU machine (device tool, carry [".gpu-wheels"]; fill it first with `bash bench/gpu_wheels.sh`;
for part f also carry ".gpu-data" from `bash bench/gpu_wheels.sh --data` and add the two options):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu-wheels/*.whl && PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 timeout -k 10 480 python3 bench/gpu_check.py --json $OUT/gpu_check.json --tokenizer .gpu-data/tokenizer --text .gpu-data/wikitext-2_test.tokens.txt,.gpu-data/wikitext-2_valid.tokens.txt,.gpu-data/wiki_demo.txt 2>&1 | tee $OUT/gpu_check.log

(timeout_s 560). medtune runs from src/ (its pyproject says Python < 3.12, the machine has 3.12).
Here, on a CPU, the same code paths with tiny shapes, in about a minute:

    PYTHONPATH=src .venv/bin/python bench/gpu_check.py --dry-run --json runs/gpu_check_dry.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import gpu_check_models as K  # noqa: E402
import gpu_check_parts as P  # noqa: E402

DEADLINE_S = 450
"""The whole check's wall-clock limit (parts after it are reported out of time), inside the 8 minutes asked."""
MIN_PART_S = 20
"""A part is not started with less time than this left."""
TRAIN_SHARE = 0.6
"""A training part stops stepping after this share of its time (and reports the steps made), leaving the rest
for its start and its output files."""


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    budget_s: int
    run: Callable[[K.Context], dict[str, Any]]


PARTS = [
    Part("a", "8B LoRA, medtune train", 120, lambda ctx: P.train_medtune(ctx, "lora", "8b")),
    Part("a_plain", "8B LoRA, plain Trainer + peft", 90, P.train_plain),
    Part("b", "8B QLoRA, medtune train", 100, lambda ctx: P.train_medtune(ctx, "qlora", "8b")),
    Part("c", "1B full fine-tuning", 75, lambda ctx: P.train_medtune(ctx, "full", "1b")),
    Part("d", "scoring fp32 vs bf16", 45, P.scoring),
    Part("e_sweep", "sweep point on the device", 40, P.sweep_placed),
    Part("e_merge", "merge on the device", 40, P.merge_placed),
    Part("e_parents", "multi-parent merge on the device", 40, P.parents_placed),
    Part("f", "data build vs tokenizer(texts)", 100, P.data_build),
]
BY_KEY = {p.key: p for p in PARTS}


@dataclass
class PartResult:
    """One part's outcome: ok (numbers), failed (ran; what it checks does not hold) or skipped (why)."""

    part: str
    title: str
    status: str
    reason: str | None = None
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)
    log_tail: list[str] | None = None


def one_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:300]


def run_part(part: Part, ctx: K.Context) -> PartResult:
    """The part in this process; whatever it raises becomes its reason, so the other parts still run."""
    started = time.perf_counter()
    status, reason, numbers = "ok", None, {}
    try:
        numbers = part.run(ctx)
    except K.Skip as err:
        status, reason = "skipped", str(err)
    except K.Failed as err:
        status, reason = "failed", str(err)
    except Exception as err:  # noqa: BLE001 - an exception's message is the part's report
        status, reason = "skipped", one_line(err)
    return PartResult(part.key, part.title, status, reason, round(time.perf_counter() - started, 1), numbers)


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "src")]))}
    env.pop("TOKENIZERS_PARALLELISM", None)  # the tokenizer's own threads, as a user's process has them
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_in_child(part: Part, ctx: K.Context, timeout: float) -> PartResult:
    """The part in its own Python process (its memory and CUDA context its own), killed with everything it
    started when ``timeout`` passes."""
    stem = ctx.work / f"part-{part.key}"
    Path(f"{stem}.context.json").write_text(json.dumps(asdict(ctx)))
    result = Path(f"{stem}.result.json")
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(f"{stem}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child", part.key, str(stem)], stdout=log,
                                stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = [l for l in Path(f"{stem}.log").read_text(errors="replace").splitlines() if l.strip()][-15:]
    seconds = round(time.perf_counter() - started, 1)
    if result.is_file():
        return PartResult(**{**json.loads(result.read_text()), "seconds": seconds})
    if proc.returncode == -signal.SIGKILL and seconds >= timeout:
        why = f"out of time: cut after {timeout:.0f} s (budget {part.budget_s} s)"
    else:
        why = f"its process exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}"[:300]
    return PartResult(part.key, part.title, "skipped", why, seconds, log_tail=tail)


def child(key: str, stem: str) -> None:
    ctx = K.Context(**json.loads(Path(f"{stem}.context.json").read_text()))
    res = run_part(BY_KEY[key], ctx)
    Path(f"{stem}.result.json").write_text(json.dumps(asdict(res), default=str))


def compare(results: list[PartResult]) -> dict[str, float]:
    """medtune over plain Trainer + peft (parts a and a_plain), where both ran."""
    got = {r.part: r.numbers for r in results if r.status == "ok"}
    if "a" not in got or "a_plain" not in got:
        return {}
    a, plain = got["a"], got["a_plain"]
    return {"tokens_per_s": round(a["tokens_per_s"] / plain["tokens_per_s"], 3),
            "peak_memory": round(a["peak_memory_gib"] / plain["peak_memory_gib"], 3)}


def table(results: list[PartResult], ratios: dict[str, float]) -> str:
    rows = ["| part | what | status | s | result |", "|---|---|---|---|---|"]
    for r in results:
        said = (r.numbers.get("summary", "") if r.status == "ok" else r.reason or "").replace("|", "/")
        rows.append(f"| {r.part} | {r.title} | {r.status} | {r.seconds:.0f} | {said} |")
    if ratios:
        rows.append(f"\nmedtune / plain Trainer + peft (8B LoRA): tokens/s x{ratios['tokens_per_s']:.2f}, "
                    f"peak memory x{ratios['peak_memory']:.2f}")
    return "\n".join(rows)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {n: v(n) for n in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "pydantic")}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (the same code paths)")
    ap.add_argument("--json", type=Path, default=REPO / "runs" / "gpu_check.json", help="where the JSON goes")
    ap.add_argument("--parts", default=",".join(BY_KEY), help=f"comma-separated, of {', '.join(BY_KEY)}")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's bf16 dense peak (default: looked up by its name)")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole check")
    ap.add_argument("--tokenizer", help="part f: a tokenizer directory")
    ap.add_argument("--text", help="part f: comma-separated text files (one document a line), repeated to --data-tokens")
    ap.add_argument("--data-tokens", type=float, default=1e8, help="part f: replay tokens to build")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a new one under the temp dir, removed after)")
    ap.add_argument("--inline", action="store_true",
                    help="run the parts in this process (no per-part process or cut; the tests' dry run)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(BY_KEY)
    if unknown:
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))} (valid: {', '.join(BY_KEY)})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    if args.child:
        child(*args.child)
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; an air-gapped node must not wait on the Hub
    started = time.time()
    deadline = started + args.deadline
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medtune-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = K.Context(dry_run=args.dry_run, workdir=str(work), peak_tflops=args.peak_tflops, tokenizer=args.tokenizer,
                    text=args.text.split(",") if args.text else [], data_tokens=int(args.data_tokens))
    results = []
    for part in (BY_KEY[k] for k in args.parts.split(",")):
        left = deadline - time.time()
        if left < MIN_PART_S:
            results.append(PartResult(part.key, part.title, "skipped", f"out of time: {max(left, 0):.0f} s left of "
                                      f"the {args.deadline:.0f} s deadline"))
            continue
        timeout = min(part.budget_s, left)
        ctx.stop_training_at = time.time() + TRAIN_SHARE * timeout
        res = run_part(part, ctx) if args.inline else run_in_child(part, ctx, timeout)
        results.append(res)
        print(f"gpu_check: {res.part} {res.status} in {res.seconds:.0f} s: "
              f"{res.numbers.get('summary') if res.status == 'ok' else res.reason}", file=sys.stderr, flush=True)
    ratios = compare(results)
    report = {"check": "medtune prepared GPU check", "dry_run": args.dry_run, "started": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "seconds": round(time.time() - started, 1),
        "deadline_s": args.deadline, "versions": versions(), "cores": K.cpu_count(),
        "parts": [asdict(r) for r in results], "medtune_over_plain": ratios}
    from medtune import atomic

    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.json, report)
    print(table(results, ratios))
    print(f"\n{args.json} ({report['seconds']:.0f} s)")
    if args.workdir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
