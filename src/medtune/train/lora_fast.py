"""The LoRA training path made cheap on the CPU: one dropout mask per distinct input, and each
adapted layer's update as one fused GEMM with its weight gradients in their fast orientation.

**Dropout.**
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

**The update.** peft computes ``result + lora_B(lora_A(dropout(x))) * scaling``: three GEMMs and two
passes over the (tokens x out) output per layer, and autograd forms lora_B's weight gradient as
``grad.T @ h`` over a transposed (out x tokens) view, which ran at ~6 GFLOP/s here (9 ms for the
1536 x 2048 x 8 case; the same product as ``(h.T @ grad).T`` takes 3 ms). :class:`LoraDelta` does the
same arithmetic as one ``addmm(result, h, B.T, alpha=scaling)`` and writes its backward by hand with
every product in the fast orientation. :func:`install` binds it as the forward of each peft LoRA
``Linear`` while it is in the plain case (one active adapter, no DoRA or other variant, no biases on the
adapter, unmerged, no per-call adapter names); any other case runs peft's own forward.

The draws come from torch's default generator, so seeding and activation checkpointing (which
restores the RNG state before recomputing) reproduce the same masks. In eval mode it is the identity,
and the adapter's saved weights and config are peft's own.
"""

from __future__ import annotations

import types
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


class LoraDelta(torch.autograd.Function):
    """``result + scaling * (x @ A.T) @ B.T`` with a hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, result: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
        # x (..., in), a (r, in), b (out, r), result (..., out)
        x2 = x.reshape(-1, x.shape[-1])  # (T, in)
        h = x2 @ a.T  # (T, r)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h, b.T, alpha=scaling)  # (T, out)
        ctx.save_for_backward(x2, h, a, b)
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x2, h, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        grad_b = (h.T @ g).T * s  # (out, r), formed as (r x T) @ (T x out)
        grad_h = (g @ b) * s  # (T, r)
        grad_a = grad_h.T @ x2  # (r, in)
        grad_x = (grad_h @ a).view(ctx.x_shape) if ctx.needs_input_grad[1] else None
        return grad, grad_x, grad_a, grad_b.contiguous(), None


def _plain(layer: Any, args: tuple, kwargs: dict) -> str | None:
    """The active adapter's name when ``layer`` is in the plain LoRA case :class:`LoraDelta` covers."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    if torch.is_autocast_enabled(layer.base_layer.weight.device.type):  # mixed precision: peft's path
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    a, b = layer.lora_A[name], layer.lora_B[name]
    if not (isinstance(a, nn.Linear) and isinstance(b, nn.Linear)) or a.bias is not None or b.bias is not None:
        return None
    return name


def _fast_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _plain(self, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    result = self.base_layer(x)
    x = self.lora_dropout[name](x.to(a.dtype))
    return LoraDelta.apply(result.to(a.dtype), x, a, b, float(self.scaling[name])).to(result.dtype)


def install(model: nn.Module) -> tuple[int, int]:
    """Shared-input dropout on every peft ``lora_dropout`` with p > 0, and :class:`LoraDelta` as the
    forward of every peft LoRA ``Linear``; returns (dropout modules replaced, layers given the fused update)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    last = _LastInput()
    drops = fused = 0
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.forward = types.MethodType(_fast_forward, module)
            fused += 1
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, nn.ModuleDict):
            continue
        for name, drop in list(table.items()):
            if isinstance(drop, nn.Dropout) and drop.p > 0:
                table[name] = SharedInputDropout(drop.p, last)
                drops += 1
    return drops, fused
