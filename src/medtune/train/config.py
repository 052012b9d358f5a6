"""Training settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medtune.config import ModelConfig, StrictModel
from medtune.data.build import DataConfig


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: float = Field(16, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Layers that get adapters: all-linear (every linear layer but the LM head) or a list of module
    names, e.g. [q_proj, v_proj] as in LMFlow's default."""


class TrainConfig(StrictModel):
    """Continued pretraining of a causal LM on packed blocks (medical text plus optional replay)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to train."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The training data (built into OUT/data before training; see `medtune data build`)."""
    method: Literal["lora", "full"] = "lora"
    """lora: train low-rank adapters (peft), the base stays frozen; full: train every weight."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """LoRA settings (method: lora)."""
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
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (slower)."""
    loss_chunk_tokens: int = Field(1024, ge=16)
    """Tokens per chunk of the LM-head loss: peak extra memory is chunk x vocab fp32 logits."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    save_every: int = Field(100, ge=0)
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue from the newest complete checkpoint in OUT (same config and process count)."""
    out: str = "runs/train"
    """Output directory: model/, data/, checkpoints/, curves.json, curves.png, README.md."""
    progress: bool = True
    """Show a progress bar."""
    base_dir: str | None = Field(None, json_schema_extra={"cli": False})
    """Directory of the config file (set automatically); data paths are relative to it."""

    @model_validator(mode="after")
    def _pass_base_dir(self) -> "TrainConfig":
        if self.base_dir and not self.data.base_dir:
            self.data.base_dir = self.base_dir
        return self
