"""Peak training memory, estimated before step 1 from the model's config (on the meta device, no
weights read), printed beside what the device has free; and a CUDA out-of-memory turned into an
error that names the settings that lower it.

The estimate counts, per process: the weights (in the dtype they train in; LoRA adapters fp32),
fp32 gradients and AdamW's two fp32 moments for the trainable parameters, and the activations autograd
keeps for one micro-batch. Per decoder layer and token a LLaMA layer keeps about ``12 h + 5 i``
values (h hidden size, i MLP size: the two norms' inputs, fp32 intermediates and outputs, q/k/v/o
inputs and outputs and the rotated q and k, the gate, up, activation and product of the MLP), or
``h`` with gradient checkpointing (the layer's input) plus one layer recomputed; LoRA dropout adds
its dropped copies of the adapted layers' inputs and their 1-byte masks; the LM head adds one chunk of
fp32 logits with the loss plug-in, else the full ``tokens x vocab`` logits three times (logits, their
fp32 copy, the softmax gradient). On CPU the process's own runtime (torch, transformers:
:data:`RUNTIME`) is added, since peak RSS is what a CPU run is measured by. The per-layer count was
checked against measured peak RSS on SmolLM2-135M (docs/benchmarks.md): 6 % under for LoRA, 8 % over
for full fine-tuning (the gradients and the activations are not all alive at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GIB = 1 << 30
RUNTIME = 600 << 20
"""Resident memory of a Python process with torch, transformers and peft imported, before any model (CPU)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process at the peak of a training step."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    def line(self, free: int | None, device: str) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}" for name in
                          ("weights", "gradients", "optimizer", "activations", "runtime") if getattr(self, name))
        room = f"; {free / GIB:.1f} GiB free on {device}" if free is not None else ""
        return f"estimated peak memory {self.total / GIB:.2f} GiB per process ({parts} GiB){room}"


def dropout_values(config: Any, shared: bool) -> int:
    """Values per token and layer that LoRA dropout on every linear layer keeps: one dropped copy per
    distinct input with medtune's shared masks (q/k/v, o, gate/up, down), one per layer with peft's."""
    h, i = config.hidden_size, config.intermediate_size
    return 3 * h + i if shared else 6 * h + i


def estimate(config: Any, n_params: int, n_trainable: int, weight_bytes: float, *, micro_batch: int, block: int,
             checkpointing: bool, chunked_loss: int | None, activation_bytes: int, cpu: bool,
             dropout: int = 0) -> MemoryEstimate:
    """The estimate for a model of ``n_params`` parameters (``n_trainable`` trained, in fp32) whose frozen
    weights take ``weight_bytes`` each (0.5 for QLoRA's 4-bit base), from its transformers ``config`` (hidden_size,
    intermediate_size, num_hidden_layers, vocab_size); ``dropout``: :func:`dropout_values` under LoRA
    dropout, else 0."""
    h, i, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = micro_batch * block
    per_layer = ((12 * h + 5 * i) * activation_bytes + dropout * (activation_bytes + 1)) * tokens
    kept = layers * tokens * h * activation_bytes + per_layer if checkpointing else layers * per_layer
    head = (min(chunked_loss, tokens) * vocab * 4 + tokens * h * 4) if chunked_loss else 3 * tokens * vocab * 4
    frozen = n_params - n_trainable
    return MemoryEstimate(weights=int(frozen * weight_bytes) + n_trainable * 4, gradients=n_trainable * 4,
                          optimizer=2 * n_trainable * 4, activations=kept + head, runtime=RUNTIME if cpu else 0)


def count(path: str, method: str, lora: Any, trust_remote_code: bool = False) -> tuple[Any, int, int]:
    """(config, parameters, trainable parameters) of the model at ``path`` as it will train, counted on
    the meta device (no weights read; adapters added by peft there too)."""
    from medtune import models
    from medtune.models import ResolvedModel

    meta = models.meta_model(ResolvedModel(path, "local", path), trust_remote_code=trust_remote_code)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        meta = get_peft_model(meta, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules,
                                               task_type="CAUSAL_LM"))
    params = {id(p): p for p in meta.parameters()}.values()  # tied weights once
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return meta.config, n, trainable


def free_memory(cuda: bool) -> tuple[int | None, str]:
    """(bytes free, device name): the GPU's free memory, or the host's available memory on CPU."""
    if cuda:
        free, _ = torch.cuda.mem_get_info()
        return free, torch.cuda.get_device_name()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this host (available RAM)"
    except OSError:
        pass
    return None, "this host"


LOWER_MEMORY = ("micro_batch_size (raise grad_accum to keep the global batch)", "gradient_checkpointing: true",
                "method: lora", "model.dtype: bfloat16", "loss_chunk_tokens (with plugins: on)",
                "FSDP2 or DeepSpeed ZeRO-3 to shard across GPUs (configs/accelerate/)")
"""The settings that lower training memory, named when a run runs out of it."""


def out_of_memory_message(err: BaseException, estimate_line: str | None) -> str:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (f"out of GPU memory ({first}). " + (f"Before step 1 medtune {estimate_line}. " if estimate_line else "")
            + "Settings that lower memory: " + "; ".join(LOWER_MEMORY) + ".")
