"""Interpolation of a LoRA-tuned model with its base, without a second copy of the weights.

For a LoRA adapter, ``theta_tuned = theta_base + s * B @ A`` (``s = lora_alpha / r``), so
``(1 - alpha) * theta_base + alpha * theta_tuned = theta_base + alpha * s * B @ A``: interpolation
is the adapter with its scaling multiplied by ``alpha``. Heterogeneous averaging gives each layer's
adapters the ratio of that layer's block. Changing the scaling is instant, so an alpha sweep
reuses one loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtune.merge.methods import tensor_ratio


def lora_layers(model: Any) -> list[tuple[str, Any]]:
    """(module name, peft LoRA layer) for every adapted module."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


class LoraInterpolator:
    """Scales a loaded PeftModel's adapters in place: ``set(alpha)`` or ``set(alpha, ratios)``."""

    def __init__(self, model: Any):
        self.model = model
        self.layers = lora_layers(model)
        if not self.layers:
            from medtune.errors import ModelError

            raise ModelError("the model has no LoRA layers to interpolate")
        self.base_scaling = {name: dict(m.scaling) for name, m in self.layers}
        self.n_layers = model.get_base_model().config.num_hidden_layers

    def set(self, alpha: float, ratios: Sequence[float] | None = None) -> None:
        for name, m in self.layers:
            r = tensor_ratio(name + ".", self.n_layers, ratios, alpha) if ratios else alpha
            for adapter, s in self.base_scaling[name].items():
                m.scaling[adapter] = s * r

    def reset(self) -> None:
        self.set(1.0)
