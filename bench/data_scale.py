#!/usr/bin/env python
"""The data stage at 1M, 10M and 100M replay tokens: wall time, tokens/s, peak RSS; then training on the builds.

Corpus: WikiText-2 (test + validation, ../shared/data/general/replay/wikitext-2_*.tokens.txt), one
paragraph or heading per non-empty line, repeated with every repetition in a fresh seeded order
(numpy seed = repetition number) until it holds more tokens than the build reads; one file per
size, WORKDIR/corpus-N.txt. Each build is the PubMedQA PQA-L train/val items (500, ~196k tokens) as
the domain set plus the first N corpus tokens as replay (``max_tokens: N``, ``fixed_share`` with the
general share set so the replay budget is N), packed into 512-token blocks in shards.

Every build, and the reference, runs in its own process, so its peak RSS is its own (``ru_maxrss``).
The reference is single-process ``tokenizer(texts, add_special_tokens=False)`` over the first ~2M
tokens of the same corpus, once with ``TOKENIZERS_PARALLELISM=false`` (one thread, the old data
stage in tests) and once with the library default (the tokenizer's Rust threads, one per core); each
is timed three times and the fastest counts (the reference's most favourable reading).

Training: ``medtune train`` (LoRA on the embedded SmolLM2-135M, 3 steps of 1 block) on the smallest
and on the largest build: seconds from ``train()`` to its data opened and to the first step's batch
read, and the process's peak RSS.

    .venv/bin/python bench/data_scale.py                       # 1M, 10M, 100M (about 1.2 GB of disk under /tmp)
    .venv/bin/python bench/data_scale.py --sizes 1e6,1e7       # quicker
    python bench/data_scale.py --data-root DIR --tokenizer MODEL_DIR --no-train   # e.g. on a machine without the model
    .venv/bin/python bench/data_scale.py --sizes 1e8 --no-train --decontam   # the n-gram check's cost at 100M tokens

Needs the data at ../shared/data (or --data-root). WORKDIR is deleted at the end unless --keep. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# --data-root and --tokenizer reach the child processes through these two variables
DATA = Path(os.environ.get("MEDTUNE_BENCH_DATA", REPO.parent / "shared" / "data"))
TOKENIZER = os.environ.get("MEDTUNE_BENCH_TOKENIZER", "smollm2-135m")
WIKITEXT = ["general/replay/wikitext-2_test.tokens.txt", "general/replay/wikitext-2_valid.tokens.txt"]
REF_REPEATS = 3
DOMAIN = {"adapter": "pubmedqa", "name": "pubmedqa_trainval", "path": "pubmedqa/ori_pqal.json", "split": "trainval"}
REF_TOKENS = 2_000_000
EVAL_SETS = [{"adapter": "pubmedqa", "name": "pubmedqa_test", "path": "pubmedqa/test_set.json"},
             {"adapter": "medmcqa", "name": "medmcqa_dev", "path": "medmcqa/dev.json"}]
"""--decontam: the evaluation splits every build is checked against (PubMedQA test, MedMCQA dev)."""
DECONTAM = os.environ.get("MEDTUNE_BENCH_DECONTAM")  # "on" / "off" in a --decontam build's child, else unset


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("tokenizers", "transformers", "numpy")}


def tokenizer():
    from medtune import models

    return models.load_tokenizer(TOKENIZER)


def make_corpus(path: Path, tokens: int, per_pass: int) -> dict:
    """WikiText-2 lines, repeated in fresh seeded orders until the corpus has more than ``tokens`` tokens
    (one corpus file per build size, so a small build does not hash a large file)."""
    import numpy as np

    lines = wikitext_lines()
    passes = tokens // per_pass + 1
    with path.open("w", encoding="utf-8") as fh:
        for r in range(passes):
            order = np.random.default_rng(r).permutation(len(lines))
            fh.write("\n".join(lines[i] for i in order) + "\n")
    return {"passes": int(passes), "bytes": path.stat().st_size}


def wikitext_lines() -> list[str]:
    return [l.strip() for p in WIKITEXT for l in (DATA / p).read_text(encoding="utf-8").split("\n") if l.strip()]


def child_reference(corpus: str) -> dict:
    texts, chars = [], 0
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            texts.append(line.rstrip("\n"))
            chars += len(line)
            if chars > REF_TOKENS * 4.3:  # about REF_TOKENS tokens of WikiText at ~4.3 characters a token
                break
    tok = tokenizer()
    times = []
    for _ in range(REF_REPEATS):
        started = time.perf_counter()
        n = sum(map(len, tok(texts, add_special_tokens=False)["input_ids"]))
        times.append(time.perf_counter() - started)
    seconds = min(times)
    return {"tokens": n, "seconds": seconds, "all_seconds": times, "tokens_per_s": n / seconds, "peak_rss_mb": peak_rss_mb()}


def child_build(corpus: str, out: str, n: int) -> dict:
    from medtune.data.build import DataConfig, build_command, prepare

    base = {"data_root": str(DATA), "tokenizer": TOKENIZER, "block_size": 512, "out": out, "train": [DOMAIN]}
    if DECONTAM:  # the same evaluation splits (and leakage guard) in both; only the n-gram check differs
        base |= {"eval": EVAL_SETS, "drop_leaked": True, "decontamination": {"enabled": DECONTAM == "on"}}
    domain_tokens = prepare(DataConfig.model_validate(base), mix_and_pack=False).sources[0].tokens
    cfg = DataConfig.model_validate({
        **base, "replay": [{"adapter": "text", "name": "wikitext_rep", "path": corpus, "max_tokens": n}],
        # the share whose replay budget round(share / (1 - share) * domain) is n
        "general_share": (n - 0.25) / (n - 0.25 + domain_tokens), "mix_strategy": "fixed_share",
    })
    started = time.perf_counter()
    build_command(cfg)
    seconds = time.perf_counter() - started
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    p = manifest["packing"]
    written = sum(p["source_tokens"].values()) + p["eos_tokens"]
    replay = next(s for s in manifest["sources"] if s["role"] == "replay")
    disk = sum(f.stat().st_size for f in (Path(out) / "shards").iterdir())
    return {"tokens_written": written, "replay_tokens": replay["tokens"], "blocks": p["blocks"], "shards": p["shards"],
            "general_share": p["general_share"], "seconds": seconds, "tokens_per_s": written / seconds,
            "peak_rss_mb": peak_rss_mb(), "shard_bytes": disk}


def child_train(build: str, out: str) -> dict:
    from medtune.train import engine, run
    from medtune.train.config import TrainConfig

    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "data").symlink_to(build)
    marks: dict[str, float] = {}
    real_data, real_items = run._data, engine.BlockDataset.__getitems__

    def data(*a, **k):
        blocks = real_data(*a, **k)
        marks.setdefault("data", time.perf_counter())
        return blocks

    def items(self, idx):  # the engine's dataloader reads a micro-batch's blocks
        rows = real_items(self, idx)
        marks.setdefault("first_batch", time.perf_counter())
        return rows

    run._data, engine.BlockDataset.__getitems__ = data, items
    cfg = TrainConfig.model_validate({"model": {"spec": "smollm2-135m"}, "data": {"tokenizer": "smollm2-135m"},
                                      "micro_batch_size": 1, "max_steps": 3, "save_every": 0, "out": out,
                                      "progress": False})
    started = time.perf_counter()
    run.train(cfg)
    blocks = json.loads((Path(out) / "curves.json").read_text())["run"]["blocks"]
    return {"blocks": blocks, "data_open_s": marks["data"] - started, "first_step_s": marks["first_batch"] - started,
            "total_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def in_child(kind: str, *args: str, decontam: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    if decontam:
        env["MEDTUNE_BENCH_DECONTAM"] = decontam
    if kind == "reference-1thread":
        env["TOKENIZERS_PARALLELISM"] = "false"
    elif kind != "build":
        env.pop("TOKENIZERS_PARALLELISM", None)
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7,1e8", help="replay tokens per build, comma-separated")
    ap.add_argument("--workdir", default="/tmp/medtune-data-scale")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR (corpus and builds)")
    ap.add_argument("--data-root", type=Path, default=DATA, help="the benchmark data (default ../shared/data)")
    ap.add_argument("--tokenizer", default=TOKENIZER, help="model spec whose tokenizer builds (default smollm2-135m)")
    ap.add_argument("--no-train", action="store_true", help="skip the training part (it loads the model)")
    ap.add_argument("--decontam", action="store_true",
                    help="also build each size checked against PubMedQA test and MedMCQA dev by the n-gram decontamination, "
                         "and without the check, and report the time and peak RSS ratios (target <= 1.5)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        fn = {"build": child_build, "train": child_train}.get(kind, child_reference)
        print(json.dumps(fn(*rest[:1], *rest[1:2], *(int(x) for x in rest[2:]))))
        return
    if args.data_root.resolve() != DATA.resolve() or args.tokenizer != TOKENIZER:  # run again with them set
        env = {**os.environ, "MEDTUNE_BENCH_DATA": str(args.data_root.resolve()), "MEDTUNE_BENCH_TOKENIZER": args.tokenizer}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"free disk under {work}: {shutil.disk_usage(work).free / 2**30:.0f} GiB", file=sys.stderr)
    per_pass = sum(len(t) for t in tokenizer()(wikitext_lines(), add_special_tokens=False)["input_ids"])
    corpora = {n: work / f"corpus-{n}.txt" for n in sizes}
    result = {"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": sys.version.split()[0], **package_versions(),
                          "tokenizer": args.tokenizer},
              "corpus": {"tokens_per_pass": per_pass}, "reference": {}, "builds": {}, "train": {}}
    for n, path in corpora.items():
        result["corpus"][n] = make_corpus(path, n, per_pass)
    print(f"corpus: {result['corpus']}", file=sys.stderr)
    for kind in ("reference-1thread", "reference-threads"):
        result["reference"][kind] = in_child(kind, str(corpora[max(sizes)]))
        print(kind, result["reference"][kind], file=sys.stderr)
    for n in sizes:
        result["builds"][n] = in_child("build", str(corpora[n]), str(work / f"build-{n}"), str(n))
        print(n, result["builds"][n], file=sys.stderr)
    for n in sizes if args.decontam else ():
        result.setdefault("decontam", {})[n] = {
            mode: in_child("build", str(corpora[n]), str(work / f"build-{n}-{mode}"), str(n), decontam=mode)
            for mode in ("off", "on")}
        print("decontamination", n, result["decontam"][n], file=sys.stderr)
    for n in () if args.no_train else (sizes[0], sizes[-1]):
        result["train"][n] = in_child("train", str(work / f"build-{n}"), str(work / f"train-{n}"))
        print("train", n, result["train"][n], file=sys.stderr)
    print(json.dumps(result, indent=1))
    report(result, sizes)
    if not args.keep:
        shutil.rmtree(work)


def report(r: dict, sizes: list[int]) -> None:
    ref1, refT = r["reference"]["reference-1thread"]["tokens_per_s"], r["reference"]["reference-threads"]["tokens_per_s"]
    print(f"\nmachine: {r['machine']}")
    print(f"\nreference tokenizer(texts): {ref1:,.0f} tokens/s one thread, {refT:,.0f} tokens/s with its Rust threads\n")
    print("| replay tokens | tokens written | blocks | shards | wall s | tokens/s | x ref 1 thread | x ref threads | peak RSS MB | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        b = r["builds"][n]
        print(f"| {n:,} | {b['tokens_written']:,} | {b['blocks']:,} | {b['shards']} | {b['seconds']:.1f} | {b['tokens_per_s']:,.0f} "
              f"| {b['tokens_per_s'] / ref1:.2f} | {b['tokens_per_s'] / refT:.2f} | {b['peak_rss_mb']:.0f} "
              f"| {b['load_before']:.2f} / {b['load_after']:.2f} |")
    lo, hi = r["builds"][sizes[0]], r["builds"][sizes[-1]]
    print(f"\npeak RSS {sizes[-1]:,} / {sizes[0]:,}: {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f} (target <= 1.5)")
    print(f"tokens/s of the {sizes[-1]:,} build / threaded reference: {hi['tokens_per_s'] / refT:.2f} (target >= 1.5; "
          f"/ one-thread reference: {hi['tokens_per_s'] / ref1:.2f}; {r['machine']['affinity']} cores)")
    for n, d in r.get("decontam", {}).items():
        on, off = d["on"], d["off"]
        print(f"decontamination at {int(n):,} replay tokens (PubMedQA test + MedMCQA dev): wall {on['seconds']:.1f} s / "
              f"{off['seconds']:.1f} s without = {on['seconds'] / off['seconds']:.2f}, peak RSS {on['peak_rss_mb']:.0f} / "
              f"{off['peak_rss_mb']:.0f} MB = {on['peak_rss_mb'] / off['peak_rss_mb']:.2f} (targets <= 1.5)")
    if not r["train"]:
        return
    print("\n| training on | blocks | data opened s | first step's batch s | peak RSS MB | load avg before/after |")
    print("|---|---|---|---|---|---|")
    for n, t in r["train"].items():
        print(f"| {int(n):,}-token build | {t['blocks']:,} | {t['data_open_s']:.2f} | {t['first_step_s']:.2f} "
              f"| {t['peak_rss_mb']:.0f} | {t['load_before']:.2f} / {t['load_after']:.2f} |")


if __name__ == "__main__":
    main()
