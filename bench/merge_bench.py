#!/usr/bin/env python
"""Cost of an averaging sweep point, and peak memory of a streamed full-checkpoint merge.

1. Per-point cost of the alpha sweep, excluding evaluation, on the embedded SmolLM2-135M with a
   trained LoRA adapter (trained here for a few steps if --adapter is not given):
   medtune sets the adapters' scaling on the one loaded model; the reference does what one would
   do without it — load base + adapter from disk, scale, merge_and_unload — for every point.
   Also the full-checkpoint path: interpolating two in-memory state dicts into the loaded model.
2. Peak extra memory of `medtune merge` (its entry, `medtune.merge.run.merge`: the streamed merge
   through the method table) on two sharded copies of the model (written here), in a fresh process:
   the rise of peak RSS (VmHWM, reset just before the merge) above the RSS just before it, against
   the size of the largest input shard and of the largest tensor.

    .venv/bin/python bench/merge_bench.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def make_adapter(work: Path) -> Path:
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    cfg = TrainConfig.model_validate({
        "model": {"spec": "smollm2-135m"},
        "data": {"data_root": str(REPO / "src/medtune/demo_data"), "block_size": 256,
                 "train": [{"adapter": "medmcqa", "path": "medmcqa_demo.jsonl"}]},
        "max_steps": 3, "micro_batch_size": 2, "save_every": 0, "progress": False, "out": str(work / "train"),
    })
    return train(cfg) / "model"


def sweep_cost(adapter: Path) -> dict[str, float]:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from medtune import models
    from medtune.merge import methods
    from medtune.merge.sources import LoraScaler, lora_layers

    base = models.resolve("smollm2-135m")
    peft = PeftModel.from_pretrained(models.load_model(base), str(adapter))
    interp = LoraScaler(peft)
    t = time.perf_counter()
    for a in ALPHAS:
        interp.set_mix_weight(a)
    lora_point = (time.perf_counter() - t) / len(ALPHAS)

    # Full checkpoints in memory: tuned = base + merged adapter.
    tuned_state = {k: v.clone() for k, v in PeftModel.from_pretrained(models.load_model(base), str(adapter)).merge_and_unload().state_dict().items()}
    model = models.load_model(base)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    t = time.perf_counter()
    with torch.no_grad():
        for a in ALPHAS:
            for name, p in model.named_parameters():
                p.copy_(methods.interpolate(base_state[name], tuned_state[name], a))
    full_point = (time.perf_counter() - t) / len(ALPHAS)

    t = time.perf_counter()
    for a in ALPHAS:  # the reference: reload and merge for every point
        ref = PeftModel.from_pretrained(models.load_model(base), str(adapter))
        for _, m in lora_layers(ref):
            for k in m.scaling:
                m.scaling[k] *= a
        ref.merge_and_unload()
    reload_point = (time.perf_counter() - t) / len(ALPHAS)
    del load_file
    return {"lora_scaling_s": lora_point, "full_in_memory_s": full_point, "reload_and_merge_s": reload_point}


def make_shards(work: Path) -> tuple[Path, Path, int]:
    """Two sharded copies of the model (the second with every weight x 1.01), shards of <= 150 MB."""
    from safetensors.torch import load_file, save_file

    from medtune import models

    src = Path(models.resolve("smollm2-135m").path)
    weights = load_file(str(src / "model.safetensors"))
    largest = 0
    for name, scale in (("a", 1.0), ("b", 1.01)):
        d = work / name
        d.mkdir()
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                (d / f.name).write_bytes(f.read_bytes())
        shard, size, n, wmap = {}, 0, 0, {}

        def flush() -> None:
            nonlocal shard, size, n, largest
            n += 1
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(d / fname))
            largest = max(largest, (d / fname).stat().st_size)
            wmap.update({k: fname for k in shard})
            shard, size = {}, 0

        for k, v in weights.items():
            b = v.numel() * v.element_size()
            if shard and size + b > 150 << 20:
                flush()
            shard[k] = (v * scale).contiguous() if scale != 1.0 else v
            size += b
        flush()
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return work / "a", work / "b", largest


def child_merge(a: str, b: str, out: str, method: str) -> None:
    """``medtune merge``'s own entry (:func:`medtune.merge.run.merge`) on full checkpoints ``a`` (base) and
    ``b`` (tuned), in a fresh process: the streamed merge through the method table, as the command runs it.
    Everything it imports is imported before the baseline, so the rise is the merge's own memory."""
    from transformers import AutoConfig  # noqa: F401  (merge reads the base's config with it)

    import medtune.merge.mergekit  # noqa: F401
    import medtune.merge.stream  # noqa: F401
    from medtune.merge.run import MergeConfig, merge

    cfg = MergeConfig.model_validate({"base": {"spec": a}, "tuned": [b], "method": method, "out": out,
                                      **({"alpha": 0.5} if method == "linear" else {})})
    before = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    merge(cfg)
    peak = rss_kb("VmHWM")
    stream = json.loads((Path(out) / "merge_provenance.json").read_text())["stream"]
    print(json.dumps({"rss_before_kb": before, "peak_kb": peak, "largest_tensor_bytes": stream["largest_tensor_bytes"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", help="a trained LoRA adapter of smollm2-135m (default: train one for 3 steps)")
    ap.add_argument("--only", choices=["sweep", "memory"], help="run only one of the two measurements")
    ap.add_argument("--methods", default="linear,ties", help="streamed merges to measure (whole-tensor methods: ties, slerp, ...)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_merge(*args.child)
    work = Path(tempfile.mkdtemp(prefix="medtune-merge-bench-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # two sharded model copies and the merge: over 1 GB


def run(args: argparse.Namespace, work: Path) -> None:
    print("| measure | value | reference | ratio / target |")
    print("|---|---|---|---|")
    if args.only != "memory":
        adapter = Path(args.adapter) if args.adapter else make_adapter(work)
        print_cost(sweep_cost(adapter))
    if args.only == "sweep":
        return
    a, b, largest = make_shards(work)
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", str(a), str(b), str(work / f"merged-{method}"), method],
                             check=True, capture_output=True, text=True)
        mem = json.loads(out.stdout.strip().splitlines()[-1])
        extra = (mem["peak_kb"] - mem["rss_before_kb"]) * 1024
        tensor = mem["largest_tensor_bytes"]
        print(f"| streamed merge ({method}), peak extra RSS | {extra / 2**20:.0f} MiB | largest shard "
              f"{largest / 2**20:.0f} MiB, largest tensor {tensor / 2**20:.0f} MiB | {extra / largest:.2f} x shard, "
              f"{extra / tensor:.1f} x largest tensor |")


def print_cost(cost: dict[str, float]) -> None:
    print(f"| α-sweep point, LoRA scaling (no reload) | {1000 * cost['lora_scaling_s']:.2f} ms | reload + merge: "
          f"{cost['reload_and_merge_s']:.2f} s | {cost['reload_and_merge_s'] / cost['lora_scaling_s']:.0f}x faster (target < 2 s) |")
    print(f"| α-sweep point, full weights in memory | {cost['full_in_memory_s']:.2f} s | reload + merge: "
          f"{cost['reload_and_merge_s']:.2f} s | {cost['reload_and_merge_s'] / cost['full_in_memory_s']:.1f}x faster (target < 2 s) |")


if __name__ == "__main__":
    main()
