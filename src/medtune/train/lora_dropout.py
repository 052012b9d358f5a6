"""LoRA input dropout that draws one mask per distinct input, from 16-bit random lanes.

peft applies ``lora_dropout`` inside every adapted linear layer, so the q, k and v projections of one
attention block (and gate/up of one MLP) each draw their own Bernoulli mask over the *same* input and
each keep their own dropped copy of it for backward: seven masks and seven copies per LLaMA layer
where four distinct inputs exist. On the CPU the draw itself dominates: ``torch.bernoulli_`` takes
about 10 ms for a 2048 x 576 input on these cores, more than the 576 x 576 projection it feeds
(profiled: 13 % of a LoRA step at block 512). Neither peft nor torch offers a cheaper path, hence
this module:

- :func:`install` swaps each peft ``lora_dropout`` module for :class:`SharedInputDropout`. Layers
  that receive the same input tensor object (q/k/v, gate/up) share one mask and one dropped copy;
  each layer still sees ``dropout(x)`` with probability ``p``, only the masks of siblings are the same
  draw (as if the dropout were applied once to their common input).
- :class:`LaneDropout` draws the mask from ``int64.random_()`` viewed as four 16-bit lanes (about 4x
  fewer generator calls than one per element) and saves a 1-byte mask for backward, not a float copy.
  ``p`` is rounded to a multiple of 1/65536 (|error| < 8e-6).

The draws come from torch's default generator, so seeding and activation checkpointing (which
restores the RNG state before recomputing) reproduce the same masks. In eval mode it is the identity,
and the adapter's saved weights and config are peft's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LANES = 65536


class LaneDropout(torch.autograd.Function):
    """``x * keep / (1 - p)`` with ``keep`` drawn from 16-bit random lanes; backward reuses the mask."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        k = round(p * _LANES)  # drop when lane < -32768 + k, i.e. with probability k / 65536
        n = x.numel()
        lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = lanes.view(torch.int16)[:n].view(x.shape) >= (k - _LANES // 2)  # (..., features) bool
        scale = 1.0 / (1.0 - k / _LANES)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


class _LastInput:
    """The most recent (input, dropped input) pair, shared by the dropout modules of one model."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.out: torch.Tensor | None = None


class SharedInputDropout(nn.Module):
    """Dropout that returns the same dropped tensor to every layer called with the same input object."""

    def __init__(self, p: float, last: _LastInput):
        super().__init__()
        self.p = p
        self._last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        last = self._last
        if last.x is x and last.out is not None:
            return last.out
        out = LaneDropout.apply(x, self.p)
        last.x, last.out = x, out
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared across layers with the same input"


def install(model: nn.Module) -> int:
    """Replace every peft ``lora_dropout`` entry with p > 0 by a :class:`SharedInputDropout`; returns the count."""
    last = _LastInput()
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if isinstance(drop, nn.Dropout) and drop.p > 0:
                drops[name] = SharedInputDropout(drop.p, last)
                n += 1
    return n
