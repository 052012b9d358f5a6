"""The reference the training engine is checked against: plain transformers ``Trainer`` (+ peft for
LoRA) on medtune's own built blocks, in medtune's block order, with the model's own loss and peft's
own layers (no medtune plug-in). Used by ``bench/train_vs_hf.py --equal`` on SmolLM2 and by
``tests/test_train_engine.py`` on a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plain_trainer_losses(cfg: Any, model_path: str | Path, out: Path, steps: int) -> list[float]:
    """Per-step losses of plain Trainer (+ peft) for the medtune ``TrainConfig`` ``cfg`` whose run wrote
    its data build to ``out / "data"``; LoRA dropout 0 (the plug-ins' dropout masks differ by design)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from medtune.data.build import open_blocks
    from medtune.train.engine import BlockDataset, collate, sample_order

    blocks = open_blocks(out / "data")
    order = sample_order(len(blocks), cfg.seed, steps * cfg.micro_batch_size * cfg.grad_accum)
    examples = BlockDataset(blocks, cfg.loss).__getitems__(order.tolist())
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    if cfg.method == "lora":
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out / "plain"), per_device_train_batch_size=cfg.micro_batch_size,
                             gradient_accumulation_steps=cfg.grad_accum, max_steps=steps,
                             learning_rate=cfg.learning_rate, lr_scheduler_type="cosine",
                             warmup_steps=int(cfg.warmup_ratio * steps), max_grad_norm=cfg.max_grad_norm,
                             seed=cfg.seed, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             optim="adamw_torch_fused", train_sampling_strategy="sequential", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]
