"""``medtune train``: LoRA or full continued pretraining on transformers' ``Trainer``.

The engine (:mod:`medtune.train.engine`, a ``Trainer`` subclass) does the launching, device placement,
mixed precision, gradient accumulation, clipping, synchronisation and sharding (DDP, FSDP2, DeepSpeed
through accelerate configs) and writes its checkpoints; peft adds the adapters. This module builds it
from medtune's config: the data (built into OUT/data first), the model, the engine settings, the
checkpoint to resume from (validated first), and the run's artifacts at the end.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune import models, outdir
from medtune.errors import ConfigError
from medtune.train import checkpoint, engine, memory, sharded
from medtune.train.config import TrainConfig
from medtune.train.engine import TrainError, sample_order

__all__ = ["TrainError", "sample_order", "train"]

BIG_MODEL = 1_000_000_000
"""Parameters from which gradient checkpointing is on by default (activations dominate memory there)."""


def _data(cfg: TrainConfig, out: Path, rank: int, barrier: Any) -> Any:
    """Packed blocks from OUT/data, memory-mapped (nothing is read until a step asks for its blocks);
    built there first by rank 0 if missing (the data stage is deterministic)."""
    from medtune.data.build import build_command, open_blocks

    data_dir = out / "data"
    if rank == 0 and not (data_dir / "manifest.json").is_file():
        build_command(cfg.guarded_data().model_copy(update={"out": str(data_dir), "tokenizer": cfg.data.tokenizer}))
    barrier()
    checkpoint.require_shared(data_dir / "manifest.json", rank)
    return open_blocks(data_dir)


def _dtype(cfg: TrainConfig, cuda: bool) -> torch.dtype:
    """The weights' dtype while training: the config's, else fp32 on CPU; on a GPU a LoRA base in the
    GPU's 16-bit dtype (frozen: no fp32 copy, and no bf16 copy saved for backward under autocast) and a
    fully trained model in fp32 (the master weights of mixed precision)."""
    if cfg.model.dtype != "auto":
        return models.named_dtype(cfg.model.dtype)
    return models.half_dtype() if cuda and cfg.adapters else torch.float32


def base_dtype(path: str) -> torch.dtype | None:
    """The dtype a model directory's config declares for its weights (None when it declares none)."""
    from transformers import AutoConfig

    try:
        declared = getattr(AutoConfig.from_pretrained(path), "dtype", None)
    except (OSError, ValueError):
        return None
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else None


def quantization(cfg: TrainConfig, cuda: bool) -> Any:
    """QLoRA's base quantization: bitsandbytes 4-bit NF4 with double quantization, computing in the
    GPU's 16-bit dtype (fp32 on CPU); None for the other methods. Refused up front without bitsandbytes."""
    if cfg.method != "qlora":
        return None
    import importlib.util

    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method: qlora quantizes the base with bitsandbytes, which is not installed "
                          "(pip install bitsandbytes); or train with method: lora")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=models.half_dtype() if cuda else torch.float32)


def _model(cfg: TrainConfig, resolved: Any, cuda: bool, plugins: bool, checkpointing: bool,
           quantized: Any) -> tuple[Any, Any, torch.dtype | None]:
    """(model, tokenizer, dtype to save full weights in) with adapters (LoRA) and the plug-ins installed;
    ``quantized``: QLoRA's :func:`quantization` of the base, or None."""
    torch.manual_seed(cfg.seed)
    model = models.load_model(resolved, dtype=_dtype(cfg, cuda), trust_remote_code=cfg.model.trust_remote_code,
                              allow_pickle=cfg.model.allow_pickle, attn_implementation=cfg.model.attn_implementation,
                              quantization_config=quantized)
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    save_dtype = models.named_dtype(cfg.model.dtype) if cfg.model.dtype != "auto" else base_dtype(resolved.path)
    if quantized is not None:
        from peft import prepare_model_for_kbit_training

        # peft's k-bit preparation: norms and the LM head in fp32, input gradients for checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.adapters:
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)  # adapters in fp32 over a 16-bit base (peft's autocast_adapter_dtype)
    if plugins:
        from medtune.train import loss, lora_fast

        if cfg.adapters:
            lora_fast.install(model)  # shared-input dropout masks and a fused LoRA update (same arithmetic as peft)
        loss.install(model, cfg.loss_chunk_tokens)
    model.train()
    return model, tokenizer, save_dtype


def plugins_on(cfg: TrainConfig, cuda: bool) -> bool:
    """medtune's CPU kernels run on CPU (where they were measured faster) unless turned off; on CUDA only when asked."""
    return cfg.plugins == "on" or (cfg.plugins == "auto" and not cuda)


def gradient_checkpointing(cfg: TrainConfig, n_params: int) -> bool:
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    return n_params >= BIG_MODEL


def _memory_estimate(cfg: TrainConfig, resolved: Any, cuda: bool, plugins: bool, block: int) -> tuple[str, int]:
    """The estimated peak memory beside the device's free memory (a line to print before step 1), and the
    model's parameter count, both from its config on the meta device."""
    config, n, trainable = memory.count(resolved.path, cfg.method, cfg.lora, cfg.model.trust_remote_code)
    precision = {**mixed_precision(cfg.engine, cuda), **{k: cfg.engine[k] for k in ("bf16", "fp16") if k in cfg.engine}}
    half = any(precision.values())  # activations in 16 bits under autocast
    weight_bytes = 0.5 if cfg.method == "qlora" else _dtype(cfg, cuda).itemsize
    est = memory.estimate(config, n, trainable, weight_bytes, micro_batch=cfg.micro_batch_size,
                          block=block, checkpointing=gradient_checkpointing(cfg, n),
                          chunked_loss=cfg.loss_chunk_tokens if plugins else None,
                          activation_bytes=2 if half else 4, cpu=not cuda,
                          dropout=memory.dropout_values(config, plugins) if cfg.adapters and cfg.lora.dropout else 0)
    return est.line(*memory.free_memory(cuda)), n


SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def training_arguments(cfg: TrainConfig, out: Path, total_steps: int, cuda: bool, plugins: bool,
                       checkpointing: bool) -> Any:
    """The engine's ``TrainingArguments``: medtune's fields, then ``cfg.engine`` passed through (its
    keys checked against the engine's fields; medtune's own are refused by the config)."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(cfg.engine) - fields)
    if unknown:
        raise ConfigError(f"engine: {', '.join(unknown)}: not a setting of transformers' TrainingArguments")
    args: dict[str, Any] = {
        "output_dir": str(checkpoint.checkpoints_root(out)), "per_device_train_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum, "max_steps": total_steps, "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay, "lr_scheduler_type": SCHEDULERS[cfg.scheduler],
        "warmup_steps": int(cfg.warmup_ratio * total_steps), "max_grad_norm": cfg.max_grad_norm or 0.0,
        "seed": cfg.seed, "save_strategy": "steps" if cfg.save_every else "no", "save_steps": cfg.save_every or 1,
        "save_total_limit": None,  # medtune prunes the published checkpoints (checkpoint.save)
        "logging_strategy": "steps", "logging_steps": 1, "logging_nan_inf_filter": False, "disable_tqdm": True,
        "report_to": "none", "remove_unused_columns": False, "optim": "adamw_torch_fused", "use_cpu": not cuda,
        "dataloader_pin_memory": cuda,
    }
    # transformers renamed gradient_checkpointing to activation_checkpointing in 5.2x; GPU images carry older 5.x
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args[ckpt], args[f"{ckpt}_kwargs"] = checkpointing, {"use_reentrant": False} if checkpointing else None
    args.update(mixed_precision(cfg.engine, cuda))
    if cuda and not plugins and "use_liger_kernel" not in cfg.engine:
        import importlib.util

        args["use_liger_kernel"] = importlib.util.find_spec("liger_kernel") is not None
    return TrainingArguments(**{**args, **cfg.engine})


def mixed_precision(engine_settings: dict[str, Any], cuda: bool) -> dict[str, bool]:
    """The engine's bf16 / fp16 flags unless the config's engine settings name one: none on CPU
    (bf16 matmul is slower than fp32 on most CPUs), bf16 on a GPU that has it natively, fp16 on one
    that does not (V100, T4: ``torch.cuda.is_bf16_supported()`` says yes there, by emulation)."""
    if not cuda or {"bf16", "fp16"} & set(engine_settings):
        return {}
    native = models.native_bf16()
    return {"bf16": native, "fp16": not native}


def weights_spec(model: Any, method: str) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The trainable weights file of a checkpoint, and the shape of each tensor it must hold."""
    if method in ("lora", "qlora"):
        from peft import get_peft_model_state_dict

        return "adapter_model.safetensors", {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    return "model.safetensors", {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


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


def unsupported_parallelism(running: str, fsdp_version: int | None) -> str | None:
    """Why a run in this mode would fail later (at its model files), or None.

    The final model files hold full tensors: plain and DDP models have them, FSDP2 shards are
    gathered (:mod:`medtune.train.sharded`), DeepSpeed's through accelerate; FSDP1's flat parameters
    are none of these."""
    if running == "FSDP" and fsdp_version != 2:
        return (f"FSDP version {fsdp_version} is not supported: medtune gathers FSDP2 shards for its model files; "
                "set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml does)")
    return None


def launch_refusal(env: dict[str, str]) -> str | None:
    """:func:`unsupported_parallelism` for the FSDP version the launch asked for (``accelerate launch``
    sets ``ACCELERATE_USE_FSDP`` and ``FSDP_VERSION``, default 1), checked before accelerate sets it
    up: accelerate's FSDP1 set-up fails on a machine without a GPU with an error of its own."""
    if env.get(LAUNCH_FLAGS["FSDP"], "false").lower() != "true":
        return None
    version = env.get("FSDP_VERSION", "1")
    return unsupported_parallelism("FSDP", int(version) if version.isdigit() else None)


def _warner(is_main: bool, style: str = "bold yellow") -> Any:
    """Print a warning (or, in another style, a note) on stderr from the main process only (one line per
    event, not one per rank)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)  # paths stay on one line
    return lambda msg: console.print(f"[{style}]medtune[/]: {escape(msg)}", highlight=False) if is_main else None


def _trainer(cfg: TrainConfig, out: Path, blocks: Any, model: Any, args: Any, order: np.ndarray,
             run: engine.RunState, tokenizer: Any, say: Any) -> engine.MedtuneTrainer:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = engine.MedtuneTrainer(model=model, args=args, train_dataset=engine.BlockDataset(blocks, cfg.loss),
                                    data_collator=engine.collate, order=order, run=run, out=out,
                                    keep=cfg.keep_checkpoints)
    for printer in (PrinterCallback, ProgressCallback):  # a dict of numbers per step on stdout: medtune's bar instead
        trainer.remove_callback(printer)
    trainer.add_callback(engine.MedtuneCallback(run, cfg.progress))
    if cfg.eval_every:
        from medtune.train.validation import BestKeeper, ValidationCallback

        keeper = BestKeeper(cfg, out, run, trainer.args.should_save) if cfg.select_on else None
        trainer.add_callback(ValidationCallback(cfg, tokenizer, run, say, trainer.accelerator.autocast, keeper))
        trainer.best_keeper = keeper  # type: ignore[attr-defined]
    return trainer


def _resume(cfg: TrainConfig, out: Path, trainer: engine.MedtuneTrainer, warn: Any) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint (every file checked first; the engine's own sharded formats only
    by the engine) and medtune's state in it; None to start afresh."""
    if not cfg.resume:
        return None
    own_format = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    weights = None if own_format else weights_spec(trainer.model, cfg.method)
    groups = None if own_format else trainer.optimizer_shapes()
    world = trainer.args.world_size
    return checkpoint.choose(out, lambda p: checkpoint.validate(p, world, weights, groups),
                             trainer.args.should_save, trainer.accelerator.wait_for_everyone, warn)


def _final_weights(trainer: engine.MedtuneTrainer, save_dtype: torch.dtype | None, method: str) -> tuple[Any, dict[str, Any] | None]:
    """(model, full state dict or None) to write: shards gathered (FSDP2 by torch's helpers, DeepSpeed
    by accelerate; collective), and a fully trained model cast back to its base's dtype (or the
    config's), so it merges with that base as it came."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    full = None
    if sharded.is_sharded(trainer.model):
        full = sharded.trainable(trainer.model)
    elif trainer.is_deepspeed_enabled:
        full = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if method == "full" and save_dtype is not None:
        if full is not None:
            full = {k: v.to(save_dtype) if v.is_floating_point() else v for k, v in full.items()}
        else:
            model.to(save_dtype)
    return model, full


def _check_parallelism(trainer: engine.MedtuneTrainer, warn: Any) -> str:
    """The distributed mode the engine runs (accelerate's name); a mode asked for but not run is named,
    one whose model files medtune cannot write is refused (before anything is prepared)."""
    running = trainer.accelerator.distributed_type.name
    if (fallback := parallelism_fallback(dict(os.environ), running)) is not None:
        warn(fallback)
    fsdp_plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if (unsupported := unsupported_parallelism(running, getattr(fsdp_plugin, "fsdp_version", None))) is not None:
        raise TrainError(unsupported)
    return running


@outdir.writes_into("train", lock="training run")
def train(cfg: TrainConfig) -> Path:
    """Train, checkpoint, and write the final model with its provenance; returns OUT."""
    from accelerate import PartialState
    from transformers import set_seed

    if (refused := launch_refusal(dict(os.environ))) is not None:
        raise TrainError(refused)
    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda)
    warn, say = _warner(state.is_main_process), _warner(state.is_main_process, "bold")
    out = Path(cfg.out)
    if not cfg.resume and checkpoint.latest(out):
        raise TrainError(f"{out} already has checkpoints: pass --resume to continue, or choose another --out")
    quantized = quantization(cfg, cuda)
    set_seed(cfg.seed)
    blocks = _data(cfg, out, state.process_index, state.wait_for_everyone)
    n_blocks, block = len(blocks), blocks.block_size
    global_batch, total_steps = plan(cfg, n_blocks, block, state.num_processes)
    order = sample_order(n_blocks, cfg.seed, total_steps * global_batch)
    plugins = plugins_on(cfg, cuda)
    resolved = models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle)
    estimate, n_params = _memory_estimate(cfg, resolved, cuda, plugins, block)
    say(estimate)
    checkpointing = gradient_checkpointing(cfg, n_params)
    model, tokenizer, save_dtype = _model(cfg, resolved, cuda, plugins, checkpointing, quantized)
    # No KV cache while training: without one, the attention keeps packed documents apart by their position ids.
    use_cache, model.config.use_cache = model.config.use_cache, False
    args = training_arguments(cfg, out, total_steps, cuda, plugins, checkpointing)
    run = engine.RunState(global_batch * block)
    trainer = _trainer(cfg, out, blocks, model, args, order, run, tokenizer, say)
    running = _check_parallelism(trainer, warn)
    if cfg.eval_every:
        from medtune.train.validation import sharded_refusal

        if (refused := sharded_refusal(running)) is not None:
            raise TrainError(refused)
    resumed = _resume(cfg, out, trainer, warn)
    if resumed is not None:
        run.restore(resumed[1], resumed[0])
    try:
        trainer.train(resume_from_checkpoint=str(resumed[0]) if resumed else None)
    except torch.OutOfMemoryError as err:
        raise TrainError(memory.out_of_memory_message(err, estimate)) from None
    final_model, full = _final_weights(trainer, save_dtype, cfg.method)
    final_model.config.use_cache = use_cache
    keeper = getattr(trainer, "best_keeper", None)
    if keeper is not None:  # select_on: model/ is the best validation step's; the last step's goes to last/
        from medtune.lora_adapter import BaseIdentity
        from medtune.train.artifacts import save_model

        base = BaseIdentity.of(resolved)
        keeper.finish(final_model, total_steps, lambda: save_model(out / "last", final_model, tokenizer, None, base))
        if run.best and run.best["step"] != total_steps:
            say(f"select_on {cfg.select_on}: model/ is step {run.best['step']} ({run.best['metric']} "
                f"{run.best['value']:.4g}); the last step's model is in {out / 'last'}")
    if trainer.args.should_save:
        from medtune.train.artifacts import write_outputs

        write_outputs(cfg, out, final_model, tokenizer, run.as_dict(total_steps, state.num_processes),
                      {"global_batch": global_batch, "steps": total_steps, "block_size": block, "blocks": n_blocks,
                       "processes": state.num_processes, "device": str(trainer.args.device), "parallelism": running,
                       "mixed_precision": trainer.accelerator.mixed_precision, "plugins": plugins,
                       "gradient_checkpointing": bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)}, state_dict=full)
    trainer.accelerator.wait_for_everyone()
    return out
