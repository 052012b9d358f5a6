"""``medtune train``: LoRA or full continued pretraining through accelerate.

The loop is ours (it is short): accelerate does the launching, device placement, mixed precision
and gradient synchronisation; peft adds the adapters; the loss is the chunked LM-head cross-entropy
of :mod:`medtune.train.loss`. The token loss of every optimizer step is normalised by the number of
loss tokens in the whole global batch, so 1 process and N processes with the same global batch
follow the same loss curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune import outdir
from medtune.errors import MedtuneError
from medtune.train import checkpoint, sharded
from medtune.train.config import TrainConfig


class TrainError(MedtuneError):
    """Training stopped (non-finite loss, bad resume)."""


def _data(cfg: TrainConfig, out: Path, rank: int, barrier: Any) -> Any:
    """Packed blocks from OUT/data, memory-mapped (nothing is read until a step asks for its blocks);
    built there first by rank 0 if missing (the data stage is deterministic)."""
    from medtune.data.build import build_command, open_blocks

    data_dir = out / "data"
    if rank == 0 and not (data_dir / "manifest.json").is_file():
        build_command(cfg.data.model_copy(update={"out": str(data_dir), "tokenizer": cfg.data.tokenizer}))
    barrier()
    checkpoint.require_shared(data_dir / "manifest.json", rank)
    return open_blocks(data_dir)


def _batch(blocks: Any, idx: np.ndarray, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, loss_mask) int64 ``(len(idx), block)`` of blocks ``idx``, read from the shards."""
    rows = blocks.rows(idx)
    loss_mask = rows["answer_mask"] if loss == "answer_only" else rows["attention_mask"]
    return tuple(torch.from_numpy(a) for a in (rows["input_ids"], rows["attention_mask"], loss_mask))  # type: ignore[return-value]


def sample_order(n: int, seed: int, total: int) -> np.ndarray:
    """Block indices for ``total`` samples: a fresh seeded permutation of the n blocks per epoch."""
    epochs = math.ceil(total / n)
    return np.concatenate([np.random.default_rng(seed + e).permutation(n) for e in range(epochs)])[:total]


def _model(cfg: TrainConfig) -> tuple[Any, Any]:
    from medtune import models

    resolved = models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle)
    torch.manual_seed(cfg.seed)
    model = models.load_model(resolved, dtype=torch.float32, trust_remote_code=cfg.model.trust_remote_code,
                              allow_pickle=cfg.model.allow_pickle)
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
        from medtune.train import lora_fast

        lora_fast.install(model)  # shared-input dropout masks and a fused LoRA update (same arithmetic as peft)
    model.train()
    return model, tokenizer


def _schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, opt, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)


def plan(cfg: TrainConfig, n_blocks: int, block: int, world: int) -> tuple[int, int]:
    """(global batch in blocks, optimizer steps) under the epochs / max_steps / max_tokens budgets."""
    global_batch = cfg.micro_batch_size * cfg.grad_accum * world
    steps = max(1, math.ceil(cfg.epochs * n_blocks / global_batch))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    if cfg.max_tokens:
        steps = min(steps, max(1, math.ceil(cfg.max_tokens / (global_batch * block))))
    return global_batch, steps


LAUNCH_FLAGS = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}
"""The sharded modes, and the variable ``accelerate launch`` sets when its config asks for each."""


def parallelism_fallback(env: dict[str, str], running: str) -> str | None:
    """A warning when the launch asked for a sharded mode that accelerate is not running: it enables
    FSDP and DeepSpeed on GPUs (and other accelerators) only, and on CPU quietly runs plain data
    parallelism (``MULTI_CPU``) instead. None when nothing was asked for, or it is what runs."""
    for mode, var in LAUNCH_FLAGS.items():
        if env.get(var, "false").lower() == "true" and running != mode:
            return (f"the launch asked for {mode}, but accelerate runs {running} (it enables {mode} on GPUs only): "
                    "this run is data-parallel without sharding, so each process holds the whole model and optimizer")
    return None


def unsupported_parallelism(running: str, fsdp_version: int | None, zero_stage: int | None, save_every: int) -> str | None:
    """Why a run in this mode would fail later (at its first checkpoint or its model files), or None.

    Checkpoints and model files hold full tensors: plain and DDP models have them, FSDP2 shards are
    gathered (:mod:`medtune.train.sharded`); FSDP1's flat parameters, DeepSpeed's partitioned
    optimizer state (its ``state_dict`` is DeepSpeed's own format) and ZeRO-3's partitioned
    parameters are none of these."""
    if running == "FSDP" and fsdp_version != 2:
        return (f"FSDP version {fsdp_version} is not supported: medtune gathers FSDP2 shards for its checkpoints and "
                "model files; set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml does)")
    if running == "DEEPSPEED" and zero_stage == 3:
        return ("DeepSpeed ZeRO-3 partitions the parameters, which medtune's checkpoints and model files do not "
                "gather: use ZeRO-2 with save_every: 0, or FSDP2 (configs/accelerate/fsdp.yaml), which shards as far")
    if running == "DEEPSPEED" and save_every:
        return ("DeepSpeed's optimizer state is partitioned in its own format, which medtune's checkpoints do not "
                "hold: train with save_every: 0 (no checkpoints, no resume), or with FSDP2 (configs/accelerate/fsdp.yaml)")
    return None


def launch_refusal(env: dict[str, str], save_every: int) -> str | None:
    """:func:`unsupported_parallelism` for the FSDP version the launch asked for (``accelerate launch``
    sets ``ACCELERATE_USE_FSDP`` and ``FSDP_VERSION``, default 1), checked before accelerate sets it
    up: accelerate's FSDP1 set-up fails on a machine without a GPU with an error of its own."""
    if env.get(LAUNCH_FLAGS["FSDP"], "false").lower() != "true":
        return None
    version = env.get("FSDP_VERSION", "1")
    return unsupported_parallelism("FSDP", int(version) if version.isdigit() else None, None, save_every)


def _warner(is_main: bool) -> Any:
    """Print a warning on stderr from the main process only (one line per event, not one per rank)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)  # paths stay on one line
    return lambda msg: console.print(f"[bold yellow]medtune[/]: {escape(msg)}", highlight=False) if is_main else None


@outdir.writes_into("train", lock="training run")
def train(cfg: TrainConfig) -> Path:
    """Train, checkpoint, and write the final model with its provenance; returns OUT."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from medtune.train.loss import CausalLMLoss

    if (refused := launch_refusal(dict(os.environ), cfg.save_every)) is not None:
        raise TrainError(refused)
    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    if (fallback := parallelism_fallback(dict(os.environ), acc.distributed_type.name)) is not None:
        _warner(acc.is_main_process)(fallback)
    fsdp_plugin = getattr(acc.state, "fsdp_plugin", None)
    ds_plugin = getattr(acc.state, "deepspeed_plugin", None)
    if (unsupported := unsupported_parallelism(acc.distributed_type.name, getattr(fsdp_plugin, "fsdp_version", None),
                                               getattr(ds_plugin, "zero_stage", None), cfg.save_every)) is not None:
        raise TrainError(unsupported)
    out = Path(cfg.out)
    if acc.is_main_process and not cfg.resume and checkpoint.latest(out):
        raise TrainError(f"{out} already has checkpoints: pass --resume to continue, or choose another --out")
    acc.wait_for_everyone()
    set_seed(cfg.seed)
    blocks = _data(cfg, out, acc.process_index, acc.wait_for_everyone)
    n_blocks, block = len(blocks), blocks.block_size
    global_batch, total_steps = plan(cfg, n_blocks, block, acc.num_processes)
    order = sample_order(n_blocks, cfg.seed, total_steps * global_batch)

    model, tokenizer = _model(cfg)
    deepspeed = acc.distributed_type.name == "DEEPSPEED"
    if deepspeed:  # DeepSpeed needs the batch geometry up front, as it sees no dataloader here
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (on CPU too), instead of a loop of per-tensor ops.
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    # The scheduler is not handed to accelerate: its wrapper steps it once per process per call
    # (it assumes a sharded dataloader shortens the epoch), and our steps are already global.
    wrapped, opt = acc.prepare(CausalLMLoss(model, cfg.loss_chunk_tokens), opt)
    sched = _schedule(cfg, opt, total_steps)

    state: dict[str, Any] = {"history": [], "tokens": 0, "seconds": 0.0}
    start_step = 0
    resume_from = None
    resumed = checkpoint.resume(out, model, opt, sched, acc.process_index, acc.num_processes, acc.wait_for_everyone,
                                _warner(acc.is_main_process)) if cfg.resume else None
    if resumed is not None:
        resume_from, state = resumed
        start_step = state["step"]
    bar = tqdm(total=total_steps, initial=start_step, desc=f"train ({cfg.method})", unit="step",
               disable=not (cfg.progress and acc.is_main_process), dynamic_ncols=True)
    last_good = resume_from
    started = time.perf_counter() - state["seconds"]
    run_started = time.perf_counter()
    for step in range(start_step, total_steps):
        batch_idx = order[step * global_batch : (step + 1) * global_batch]
        ids, attn, loss_mask = _batch(blocks, batch_idx, cfg.loss)  # (global_batch, block) each
        # Normalise by the loss tokens of the whole global batch (known to every rank from the data).
        n_loss = int(loss_mask[:, 1:].sum())
        # DeepSpeed divides each micro-batch loss by the accumulation steps itself.
        scale = acc.num_processes * (cfg.grad_accum if deepspeed else 1) / max(n_loss, 1)
        local_sum = torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            first = (micro * acc.num_processes + acc.process_index) * cfg.micro_batch_size
            inputs = [t[first : first + cfg.micro_batch_size].to(acc.device) for t in (ids, attn, loss_mask)]
            ctx = acc.no_sync(wrapped) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
            with ctx, acc.autocast():
                loss = wrapped(*inputs, scale=scale)
                acc.backward(loss)
            local_sum += loss.detach() / scale
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_loss = float(acc.reduce(local_sum, reduction="sum")) / max(n_loss, 1)
        if not math.isfinite(step_loss):
            raise TrainError(f"non-finite loss ({step_loss}) at step {step + 1}; training stopped. "
                             f"The last good checkpoint is {last_good or 'none (no checkpoint written yet)'}; "
                             "lower the learning rate and resume with --resume.")
        state["tokens"] += global_batch * block
        state["history"].append({"step": step + 1, "loss": step_loss, "lr": sched.get_last_lr()[0], "tokens": state["tokens"]})
        elapsed = time.perf_counter() - started
        run_tokens = (step + 1 - start_step) * global_batch * block
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{run_tokens / max(time.perf_counter() - run_started, 1e-9):.0f}")
        bar.update(1)
        done = step + 1
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            state["seconds"] = elapsed
            last_good = checkpoint.save(out, done, model, opt, sched, state, acc.process_index, acc.num_processes,
                                        cfg.keep_checkpoints, acc.wait_for_everyone)
    bar.close()
    state["seconds"] = time.perf_counter() - started
    full = sharded.trainable(model) if sharded.is_sharded(model) else None  # gathered by every rank
    if acc.is_main_process:
        from medtune.train.artifacts import write_outputs

        write_outputs(cfg, out, acc.unwrap_model(wrapped).model, tokenizer, state,
                      {"global_batch": global_batch, "steps": total_steps, "block_size": block, "blocks": n_blocks,
                       "processes": acc.num_processes, "device": str(acc.device),
                       "parallelism": acc.distributed_type.name}, state_dict=full)
    acc.wait_for_everyone()
    return out
