"""Training settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medtune.config import ConfigFile, ModelConfig, StrictModel
from medtune.data.config import DataConfig
from medtune.data.spec import SourceConfig


OWNED_ENGINE_KEYS: dict[str, str] = {
    "output_dir": "out", "learning_rate": "learning_rate", "weight_decay": "weight_decay",
    "lr_scheduler_type": "scheduler", "warmup_ratio": "warmup_ratio", "warmup_steps": "warmup_ratio",
    "per_device_train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs", "max_steps": "max_steps / max_tokens / epochs", "max_grad_norm": "max_grad_norm",
    "gradient_checkpointing": "gradient_checkpointing", "activation_checkpointing": "gradient_checkpointing",
    "seed": "seed", "data_seed": "seed", "save_steps": "save_every", "save_strategy": "save_every",
    "save_total_limit": "keep_checkpoints", "resume_from_checkpoint": "resume", "disable_tqdm": "progress",
    "logging_steps": "(every step is logged)", "remove_unused_columns": "(medtune's dataset)",
}
"""TrainingArguments fields medtune sets from its own config, and the medtune key that sets each."""


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: float = Field(16, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r): peft's lora_alpha, not the averaging's alpha."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Layers that get adapters: all-linear (every linear layer but the LM head) or a list of module
    names, e.g. [q_proj, v_proj] as in LMFlow's default."""


class TrainConfig(ConfigFile):
    """Continued pretraining of a causal LM on packed blocks (medical text plus optional replay)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to train."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The training data (built into OUT/data before training; see `medtune data build`)."""
    method: Literal["lora", "qlora", "full"] = "lora"
    """lora: train low-rank adapters (peft), the base stays frozen; qlora: the same over a 4-bit NF4 base
    (bitsandbytes, double quantization; needs bitsandbytes, and a GPU for its kernels); full: train every weight."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """LoRA settings (method: lora and qlora)."""
    loss: Literal["all_tokens", "answer_only"] = "all_tokens"
    """all_tokens: continued pretraining on every token (LMFlow's); answer_only: loss on the answer span
    of QA documents (and on all of the general replay text)."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW). 2e-4 suits LoRA; full fine-tuning usually wants ~2e-5."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of the steps spent warming up linearly from 0."""
    micro_batch_size: int = Field(4, ge=1)
    """Blocks per forward pass on each process."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each process (global batch = micro x accum x processes)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the packed blocks (fractions allowed)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    max_tokens: int | None = Field(None, ge=1)
    """Stop after this many training tokens (blocks x block size), whichever budget ends first."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (None: no clipping)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward to save memory (slower). None: on for models of 1B parameters or more."""
    loss_chunk_tokens: int = Field(1024, ge=16)
    """Tokens per chunk of the LM-head loss plug-in: peak extra memory is chunk x vocab fp32 logits."""
    plugins: Literal["auto", "on", "off"] = "auto"
    """medtune's CPU kernels (the answer-position chunked loss, the fused LoRA update, shared dropout masks):
    auto = on where they were measured faster (CPU), off on CUDA (peft's layers and the model's own loss,
    Liger's fused linear cross-entropy when liger-kernel is installed)."""
    engine: dict[str, Any] = Field(default_factory=dict)
    """Settings passed through to transformers' TrainingArguments (e.g. report_to: tensorboard,
    torch_compile: true, bf16: true, optim: adamw_torch). The keys medtune sets from its own fields
    above are refused here: set those fields instead."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    save_every: int = Field(100, ge=0)
    """Write a checkpoint every N steps (0: none; a finished run's model/ is its output)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue from the newest complete checkpoint in OUT (same config and process count)."""
    out: str = "runs/train"
    """Output directory: model/, data/, checkpoints/, curves.json, curves.png, README.md."""
    progress: bool = True
    """Show a progress bar."""
    eval_every: int = Field(0, ge=0)
    """Score validation subsets of `eval_tasks` every N optimizer steps (and at step 0 and the last step) into
    curves.json's `validation` entries, printed as they come; 0: off. Scoring runs on the model being trained,
    in eval mode without gradients, and leaves the training (its weights and random streams) as it was."""
    eval_tasks: list[str] = Field(default_factory=list)
    """Tasks (or groups) scored every `eval_every` steps, e.g. [pubmedqa, arc_easy, ppl_general]; each needs a
    validation split in `eval_sources`."""
    eval_limit: int = Field(50, ge=1)
    """Items (perplexity tasks: documents) of each validation split scored each time."""
    eval_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task of `eval_tasks`, its validation split (never a test split: refused), relative to data.data_root,
    e.g. {arc_easy: {adapter: arc, path: general/arc/ARC-Easy-Dev.jsonl}}."""
    select_on: str | None = None
    """Pick the checkpoint on validation: TASK or TASK:METRIC of the validation curves (e.g. pubmedqa, or
    pubmedqa:macro_f1; the metric defaults to acc, perplexity for a perplexity task, lower being better there).
    model/ is then the model at the best scored step (the earliest of equals), the last step's in last/ when it
    differs, and curves.json's run says which step was kept. Needs eval_every."""

    @property
    def selection(self) -> tuple[str, str]:
        """(task, metric) of ``select_on``; the metric defaults to the task's headline (acc, or perplexity)."""
        from medtune.evaluate.tasks import TASKS

        task, _, metric = (self.select_on or "").partition(":")
        known = TASKS.get(task)
        return task, metric or ("perplexity" if known is not None and known.kind == "ppl" else "acc")

    def guarded_data(self) -> Any:
        """``data`` with the validation splits of `eval_sources` added to its leakage guard (``data.eval``): what
        the validation curves score is never trained on. Text sources (perplexity) are left to the n-gram check."""
        from medtune.data.registry import TEXT_ADAPTERS

        have = [s.model_dump(mode="json") for s in self.data.eval]
        extra = [s for s in self.eval_sources.values()
                 if s.adapter not in TEXT_ADAPTERS and s.model_dump(mode="json") not in have]
        return self.data.model_copy(update={"eval": [*self.data.eval, *extra]}) if extra else self.data

    @property
    def adapters(self) -> bool:
        """LoRA adapters are what trains (lora, qlora): the output is an adapter, evaluated, merged and averaged alike."""
        return self.method in ("lora", "qlora")

    @field_validator("engine")
    @classmethod
    def _engine_keys_medtune_does_not_own(cls, engine: dict[str, Any]) -> dict[str, Any]:
        owned = {k: OWNED_ENGINE_KEYS[k] for k in engine if k in OWNED_ENGINE_KEYS}
        if owned:
            raise ValueError("set by medtune from its own fields: " + ", ".join(f"{k} (use {v})" for k, v in owned.items()))
        return engine

    @model_validator(mode="after")
    def _validation_splits(self) -> "TrainConfig":
        from medtune.evaluate.tasks import expand, test_split_reason

        if self.eval_every and not self.eval_tasks:
            raise ValueError("eval_tasks: name the tasks eval_every scores")
        try:
            tasks = expand(self.eval_tasks)[0]
        except Exception as err:  # ConfigError -> the validation error that names the field
            raise ValueError(f"eval_tasks: {err}") from None
        for name in self.eval_sources:
            if name not in tasks:
                raise ValueError(f"eval_sources.{name}: not one of eval_tasks ({', '.join(tasks) or 'none'})")
        missing = [t for t in tasks if t not in self.eval_sources]
        if missing:
            raise ValueError(f"eval_sources: give a validation split for {', '.join(missing)} (a task's own source "
                             "is its test split, which training never scores)")
        if self.select_on is not None:
            if not self.eval_every:
                raise ValueError("select_on: picks among the validation scorings of eval_every; set eval_every")
            task, metric = self.selection
            if task not in tasks:
                raise ValueError(f"select_on: {task!r} is not one of eval_tasks ({', '.join(tasks) or 'none'})")
            if metric not in ("acc", "acc_norm", "macro_f1", "perplexity"):
                raise ValueError(f"select_on: unknown metric {metric!r} (acc, acc_norm, macro_f1, perplexity)")
        for name, src in self.eval_sources.items():
            if (reason := test_split_reason(name, src)) is not None:
                raise ValueError(f"eval_sources.{name}: reads a test split ({reason}); validation curves score "
                                 "validation splits only")
        return self

    @model_validator(mode="after")
    def _pass_base_dir(self) -> "TrainConfig":
        if self.base_dir and not self.data.base_dir:
            self.data.base_dir = self.base_dir
        return self
