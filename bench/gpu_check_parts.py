"""The parts of the prepared GPU check (bench/gpu_check.py). Each takes the check's :class:`Context` and
returns its numbers (``summary``: one line for the table), or raises ``Skip`` (cannot run here) or ``Failed``
(ran, and what it checks does not hold)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpu_check_models import (DEMO, Context, Failed, Memory, Skip, built_on, cpu_count, data_config, finite, gib,
                              linear_params, model_dir, peak_flops, read_json, reset_dir, shape, step_clock, tokenizer_dir,
                              train_flops_per_token, training_data)

STEPS = {"lora": 20, "qlora": 10, "full": 20}
"""Optimizer steps per training part on the GPU (6 in the dry run)."""
BLOCK = 2048
"""Tokens per block (micro-batch 1, no accumulation: 2,048 tokens a step) on the GPU; 64 in the dry run."""
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def geometry(ctx: Context, method: str) -> tuple[int, int]:
    """(steps, block) of a training part."""
    return (6, 64) if ctx.dry_run else (STEPS[method], BLOCK)


def train_settings(ctx: Context, model: Path, out: Path, method: str) -> Any:
    """The training run's TrainConfig; the plain Trainer side reads its geometry from the same object."""
    from medtune.train.config import TrainConfig

    steps, block = geometry(ctx, method)
    return TrainConfig.model_validate({
        "model": {"spec": str(model)}, "data": data_config(ctx, block), "method": method, "lora": LORA,
        "learning_rate": LR[method], "micro_batch_size": 1, "grad_accum": 1, "max_steps": steps, "epochs": 1000,
        "save_every": 0, "progress": False, "out": str(out)})


def train_medtune(ctx: Context, method: str, size: str) -> dict[str, Any]:
    """``medtune train`` (TrainConfig + train()) on a random model of ``size``: steady tokens/s, MFU, peak
    memory against medtune's own estimate printed before step 1, and the loss."""
    ctx.need_device()
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed")
    from medtune.train import memory as M
    from medtune.train import run as R

    model = model_dir(ctx, size)
    steps, block = geometry(ctx, method)
    data = training_data(ctx, block)
    out = reset_dir(ctx.work / f"train-{method}-{size}")
    out.mkdir(parents=True)
    (out / "data").symlink_to(data)  # built once for every training part
    cfg = train_settings(ctx, model, out, method)
    clock, estimates, memory = step_clock(ctx.stop_training_at), [], Memory(ctx.device == "cuda")
    real_estimate, real_trainer = M.estimate, R._trainer

    def estimate(*a: Any, **k: Any) -> Any:
        estimates.append(real_estimate(*a, **k))
        return estimates[-1]

    def trainer(*a: Any, **k: Any) -> Any:
        built = real_trainer(*a, **k)
        built.add_callback(clock)
        return built

    M.estimate, R._trainer = estimate, trainer
    try:
        with built_on(ctx.device, memory):
            R.train(cfg)
    finally:
        M.estimate, R._trainer = real_estimate, real_trainer
    curves = read_json(out / "curves.json")
    losses = [h["loss"] for h in curves["history"]]
    return training_numbers(ctx, model, clock, memory, losses, block, method == "full",
                            estimate=estimates[0].total if estimates else None, run=curves["run"])


def train_plain(ctx: Context) -> dict[str, Any]:
    """Part a's run on plain transformers ``Trainer`` + peft at equal geometry: the same random model, blocks
    in the same order, LoRA settings, precision, checkpointing, optimizer and schedule; the model's own loss
    and peft's own layers (as tests/test_train_engine.py::_plain_trainer_losses, on the device)."""
    ctx.need_device()
    import dataclasses

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from medtune import models
    from medtune.data.build import open_blocks
    from medtune.train import run as R
    from medtune.train.engine import BlockDataset, collate, sample_order

    path = model_dir(ctx, "8b")
    steps, block = geometry(ctx, "lora")
    blocks = open_blocks(training_data(ctx, block))
    out = reset_dir(ctx.work / "train-plain")
    cfg = train_settings(ctx, path, out, "lora")
    order = sample_order(len(blocks), cfg.seed, steps * cfg.micro_batch_size * cfg.grad_accum)
    examples = BlockDataset(blocks, cfg.loss).__getitems__(order.tolist())
    cuda = ctx.device == "cuda"
    memory, clock = Memory(cuda), step_clock(ctx.stop_training_at)
    torch.manual_seed(cfg.seed)
    with torch.device(ctx.device):  # medtune's LoRA base dtype: the GPU's 16-bit one, fp32 on CPU
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=models.half_dtype() if cuda else torch.float32)
    memory.loaded()
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    checkpointing = R.gradient_checkpointing(cfg, linear_params(path)[1])
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=steps, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=int(cfg.warmup_ratio * steps), max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=not cuda, optim="adamw_torch_fused", disable_tqdm=True,
        train_sampling_strategy="sequential", dataloader_pin_memory=cuda, **R.mixed_precision({}, cuda),
        **{key: checkpointing, f"{key}_kwargs": {"use_reentrant": False} if checkpointing else None})
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[clock])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return training_numbers(ctx, path, clock, memory, losses, block, False, estimate=None,
                            run={"gradient_checkpointing": checkpointing,
                                 "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no"})


def training_numbers(ctx: Context, model: Path, clock: Any, memory: Memory, losses: list[float], block: int, full: bool,
                     estimate: int | None, run: dict[str, Any]) -> dict[str, Any]:
    matmul, total, layers, hidden = linear_params(model)
    timed, tokens_per_s = clock.steady(block)  # micro-batch 1, no accumulation: one block a step
    flops, peak_is = peak_flops(ctx)
    mfu = None if flops is None else finite(tokens_per_s * train_flops_per_token(matmul, layers, hidden, block, full) / flops)
    kind, peak = memory.peak()
    numbers: dict[str, Any] = {
        "params": total, "block": block, "steps": len(clock.ends), "steps_timed": timed,
        "cut_short": clock.cut, "tokens_per_s": round(finite(tokens_per_s), 1), "mfu": mfu and round(mfu, 4), "peak_is": peak_is,
        "peak_memory_gib": gib(peak), "peak_memory_is": kind,
        "load_peak_gib": None if memory.load_peak is None else gib(memory.load_peak),
        "loss_first": round(finite(losses[0]), 4), "loss_last": round(finite(losses[-1]), 4),
        "gradient_checkpointing": run.get("gradient_checkpointing"), "mixed_precision": run.get("mixed_precision"),
        "device": device_name(ctx), "four_bit_layers": memory.four_bit_layers}
    said_mfu = f"MFU {mfu:.1%}" if mfu is not None else f"MFU unknown ({peak_is})"
    line = f"{tokens_per_s:,.0f} tokens/s over {timed} steps, {said_mfu}, peak {gib(peak):.2f} GiB ({kind})"
    if estimate is not None:
        numbers |= {"estimate_gib": gib(estimate), "peak_over_estimate": round(peak / estimate, 3)}
        line += f" vs medtune's estimate {gib(estimate):.2f} GiB (x{peak / estimate:.2f})"
    numbers["summary"] = line + f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" + (" (cut short)" if clock.cut else "")
    return numbers


def device_name(ctx: Context) -> str:
    return torch.cuda.get_device_name() if ctx.device == "cuda" else "cpu"


# ---------------------------------------------------------------- scoring


def synthetic_requests(n: int, vocab: int, seed: int = 0) -> list[Any]:
    """``n`` four-choice items sharing a 96-token prefix (few-shot exemplars), each adding 32-160 tokens of
    its own, with choices of 1-4 tokens."""
    from medtune.evaluate.requests import McRequest

    rng = np.random.default_rng(seed)
    ids = lambda k: tuple(int(t) for t in rng.integers(3, vocab, k))  # noqa: E731
    prefix = ids(96)
    return [McRequest(str(i), prefix + ids(int(rng.integers(32, 161))), tuple(ids(int(rng.integers(1, 5))) for _ in range(4)),
                      0, (1, 1, 1, 1)) for i in range(n)]


def timed_scores(model: Any, requests: list[Any]) -> tuple[list[list[float]], float]:
    """medtune's scorer on ``requests`` (after a warm-up on a few): (log-likelihoods, items/s)."""
    from medtune.evaluate.scorer import Scorer

    scorer = Scorer(model)
    scorer.loglikelihoods(requests[:8], progress=False)
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    scores = scorer.loglikelihoods(requests, progress=False)
    sync()
    return scores, len(requests) / (time.perf_counter() - started)


def scoring(ctx: Context) -> dict[str, Any]:
    """A SmolLM2-135M-shaped random model scored by medtune's scorer in fp32, then in bf16: per-item agreement
    of the chosen answer, the largest change of a choice's log-likelihood, items/s of each."""
    ctx.need_device()
    from transformers import AutoModelForCausalLM, LlamaConfig

    dims = shape(ctx, "small")
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**dims), dtype=torch.float32).eval()
    requests = synthetic_requests(16 if ctx.dry_run else 512, dims["vocab_size"])
    fp32, rate32 = timed_scores(model, requests)
    model.to(torch.bfloat16)
    bf16, rate16 = timed_scores(model, requests)
    agree = statistics.fmean(int(np.argmax(a) == np.argmax(b)) for a, b in zip(fp32, bf16))
    deltas = [abs(x - y) for a, b in zip(fp32, bf16) for x, y in zip(a, b)]
    margins = [float(np.diff(sorted(a)[-2:])[0]) for a in fp32]
    return {"items": len(requests), "agreement": round(agree, 4), "max_abs_delta_ll": finite(max(deltas)),
            "mean_abs_delta_ll": finite(statistics.fmean(deltas)), "median_fp32_margin": finite(statistics.median(margins)),
            "fp32_items_per_s": round(finite(rate32), 1), "bf16_items_per_s": round(finite(rate16), 1),
            "device": device_name(ctx),
            "summary": (f"{len(requests)} items: fp32 and bf16 choose the same answer on {agree:.1%}, a choice's "
                        f"log-likelihood moves by up to {max(deltas):.3g} nats (median fp32 top-2 margin "
                        f"{statistics.median(margins):.3g}); "
                        f"{rate32:,.0f} items/s fp32, {rate16:,.0f} bf16")}


# ---------------------------------------------------------------- placement (sweep, merge)


def placement_models(ctx: Context) -> tuple[Path, Path]:
    """(a small random model saved whole, a random LoRA adapter on it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = model_dir(ctx, "placement", weights=True)
    adapter = ctx.work / "placement-adapter"
    if not (adapter / "adapter_config.json").is_file():
        torch.manual_seed(1)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                              LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        peft.save_pretrained(str(adapter))
    return base, adapter


def placed(stage: str, seen: list[str], want: str) -> dict[str, Any]:
    """The stage's models were on ``want`` (device types of their parameters, one per model the stage used)."""
    if not seen:
        raise Failed(f"{stage} used no model the check could see")
    wrong = sorted(set(seen) - {want})
    if wrong:
        raise Failed(f"{stage} ran its model on {', '.join(wrong)}, not {want}")
    return {"models": len(seen), "device": want, "summary": f"{len(seen)} model(s) on {want}, as asked"}


@contextlib.contextmanager
def devices_seen(module: Any, name: str, model_of: Callable[[tuple, Any], Any]) -> Iterator[list[str]]:
    """While open, each call of ``module.name`` appends the device type of the model that ``model_of(args,
    result)`` picks (its first parameter's)."""
    seen: list[str] = []
    real = getattr(module, name)

    def call(*a: Any, **k: Any) -> Any:
        result = real(*a, **k)
        seen.append(next(model_of(a, result).parameters()).device.type)
        return result

    setattr(module, name, call)
    try:
        yield seen
    finally:
        setattr(module, name, real)


def sweep_placed(ctx: Context) -> dict[str, Any]:
    """One sweep point (alpha 0 on the demo tasks) with ``device`` set: the scored model's parameters are on it."""
    ctx.need_device()
    from medtune.evaluate import run as E
    from medtune.merge import sweep as S

    if "device" not in S.SweepConfig.model_fields:
        raise Skip("sweep has no device option")
    base, adapter = placement_models(ctx)
    with devices_seen(E, "score_model", lambda args, _: args[0]) as seen:
        S.sweep(S.SweepConfig.model_validate({
            "base": {"spec": str(base)}, "tuned": str(adapter), "alphas": [0.0], "medical_tasks": "pubmedqa",
            "general_tasks": "arc_easy", "data_root": str(DEMO), "limit": 8, "progress": False, "device": ctx.device,
            "task_sources": {"pubmedqa": {"adapter": "pubmedqa", "path": "trials/trials_pqal.json", "split": "test"},
                             "arc_easy": {"adapter": "arc", "path": "arc_demo.jsonl"}},
            "out": str(reset_dir(ctx.work / "sweep"))}))
    return placed("sweep", seen, ctx.device)


def merge_placed(ctx: Context) -> dict[str, Any]:
    """A TIES merge of the LoRA adapter into its base (the merge that loads the model) with ``device`` set:
    the model it merges in is on it."""
    ctx.need_device()
    from medtune.merge import run as MR
    from medtune.merge import soup

    if "device" not in MR.MergeConfig.model_fields:
        raise Skip("merge has no device option")
    base, adapter = placement_models(ctx)
    with devices_seen(soup, "lora_model", lambda _, result: result[0]) as seen:  # (peft model, adapter names)
        MR.merge(MR.MergeConfig.model_validate({"base": {"spec": str(base)}, "tuned": [str(adapter)], "method": "ties",
                                                "device": ctx.device, "out": str(reset_dir(ctx.work / "merge"))}))
    return placed("merge", seen, ctx.device)


def parents_placed(ctx: Context) -> dict[str, Any]:
    """A task-arithmetic merge of mixed parents (the LoRA adapter and a full checkpoint: the base saved again)
    with ``device`` set: the model the multi-parent search scores and merges (``merge.parents.load``) is on it,
    and the full parent's CPU tensors merge into it there."""
    ctx.need_device()
    import shutil

    from medtune.merge import parents as MP
    from medtune.merge import run as MR

    base, adapter = placement_models(ctx)
    full = ctx.work / "placement-full"
    if not full.is_dir():
        shutil.copytree(base, full)
    with devices_seen(MP, "load", lambda _, result: result[0].model) as seen:  # (Averager, tokenizer)
        MR.merge(MR.MergeConfig.model_validate({"base": {"spec": str(base)}, "tuned": [str(adapter), str(full)],
                                                "method": "task_arithmetic", "params": {"weight": 0.5},
                                                "device": ctx.device, "out": str(reset_dir(ctx.work / "merge-parents"))}))
    return placed("multi-parent merge", seen, ctx.device)


# ---------------------------------------------------------------- data


def write_corpus(path: Path, lines: list[str], passes: int) -> int:
    """``lines`` repeated ``passes`` times, each repetition in a fresh seeded order (bench/data_scale.py's corpus)."""
    with path.open("w", encoding="utf-8") as fh:
        for r in range(passes):
            order = np.random.default_rng(r).permutation(len(lines))
            fh.write("\n".join(lines[i] for i in order) + "\n")
    return path.stat().st_size


def tokenize_rate(tokenizer: Any, texts: list[str], repeats: int = 2) -> tuple[int, float]:
    """(tokens, tokens/s) of single-process ``tokenizer(texts)`` with the tokenizer's own threads, best of ``repeats``."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        n = sum(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))
        best = min(best, time.perf_counter() - started)
    return n, n / best


def data_build(ctx: Context) -> dict[str, Any]:
    """``medtune data build`` of the demo PubMedQA items plus a replay corpus of ``data_tokens`` tokens (the
    carried text, repeated) into 512-token blocks, against ``tokenizer(texts)`` over its first 2M tokens
    (bench/data_scale.py's reference)."""
    import resource

    from transformers import AutoTokenizer

    from medtune.data.build import DataConfig, build_command, prepare

    if ctx.dry_run:
        tok_dir, texts, want = tokenizer_dir(ctx), [DEMO / "general_demo.txt"], 200_000
    else:
        if not ctx.tokenizer or not ctx.text:
            raise Skip("no files: pass --tokenizer DIR and --text FILE[,FILE] (bash bench/gpu_wheels.sh --data fills .gpu-data/)")
        tok_dir, texts, want = Path(ctx.tokenizer), [Path(t) for t in ctx.text], ctx.data_tokens
        missing = [str(p) for p in (tok_dir, *texts) if not p.exists()]
        if missing:
            raise Skip(f"no files: {', '.join(missing)} not found")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    lines = [l.strip() for p in texts for l in p.read_text(encoding="utf-8").split("\n") if l.strip()]
    per_pass, _ = tokenize_rate(tokenizer, lines, repeats=1)
    corpus = ctx.work / "corpus.txt"
    corpus_bytes = write_corpus(corpus, lines, want // per_pass + 1)
    reference = lines * max(1, min(2_000_000, want) // per_pass)
    ref_tokens, ref_rate = tokenize_rate(tokenizer, reference)
    out = reset_dir(ctx.work / "data-build")
    base = {"data_root": str(DEMO), "tokenizer": str(tok_dir), "block_size": 512, "out": str(out),
            "train": [{"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "all"}]}
    domain = prepare(DataConfig.model_validate(base), mix_and_pack=False).sources[0].tokens
    started = time.perf_counter()
    build_command(DataConfig.model_validate({  # the general share whose replay budget is `want` (as data_scale.py)
        **base, "replay": [{"adapter": "text", "name": "corpus", "path": str(corpus), "max_tokens": want}],
        "general_share": (want - 0.25) / (want - 0.25 + domain), "mix_strategy": "fixed_share"}))
    seconds = time.perf_counter() - started
    packing = read_json(out / "manifest.json")["packing"]
    written = sum(packing["source_tokens"].values()) + packing["eos_tokens"]
    rate = written / seconds
    return {"tokens_written": written, "seconds": round(seconds, 2), "tokens_per_s": round(finite(rate)),
            "reference_tokens": ref_tokens, "reference_tokens_per_s": round(finite(ref_rate)),
            "build_over_reference": round(rate / ref_rate, 3), "corpus_bytes": corpus_bytes, "cores": cpu_count(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
            "summary": (f"{written:,} tokens in {seconds:.1f} s = {rate:,.0f} tokens/s on {cpu_count()} cores, "
                        f"x{rate / ref_rate:.2f} tokenizer(texts) with its threads ({ref_rate:,.0f} tokens/s)")}
