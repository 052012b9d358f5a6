"""Where a stage puts the model, and in which dtype: one rule for eval, sweep, merge, the soups and chat.

``device`` (a stage config's field, ``--device``) is ``auto``, ``cpu``, ``cuda`` (this process's GPU:
``LOCAL_RANK`` under a launcher, else the current one) or ``cuda:N``; ``dtype`` is the model's
(``model.dtype``, ``--dtype``). ``auto`` is the GPU when CUDA is available, in bf16 where it has bf16 in
hardware and fp16 where it has not (the training engine's rule, :func:`medtune.models.native_bf16`),
else the CPU in fp32 (bf16 matmul is far slower than fp32 on most CPUs). ``--dtype float32`` on a GPU
scores as lm-eval does in fp32. Resolved once per stage into a :class:`Placement` that the stage
prints and records next to its results.

Why not accelerate's ``PartialState().device`` alone: it answers which GPU (and is what ``cuda`` means here,
by the same ``LOCAL_RANK``), but not in which dtype, nor bf16 vs fp16 by hardware, nor an explicit
``cuda:N`` checked before anything loads; and building it initialises the process group, which a
single-process sweep or chat does not need.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from pydantic import field_validator

from medtune.config import ModelConfig, StrictModel
from medtune.errors import ConfigError

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""The device settings a stage accepts."""


class Placed(StrictModel):
    """The device setting every stage that loads a model shares (one field, one default, one help text)."""

    device: str = "auto"
    """Where the model runs: auto (the GPU when CUDA is available, else the CPU), cpu, cuda (this process's
    GPU) or cuda:N. The dtype is model.dtype's: auto = bf16 on a GPU (fp16 where it has no native bf16),
    fp32 on CPU; --dtype float32 on a GPU reproduces lm-eval's fp32 numbers."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"invalid value {value!r} (allowed: auto, cpu, cuda, cuda:N)")
        return value


@dataclass(frozen=True)
class Placement:
    """Where a stage put its model and why."""

    device: str
    """``cpu`` or ``cuda:N``."""
    dtype: str
    """``float32``, ``bfloat16`` or ``float16``."""
    reason: str
    """How the rule got there, in a few words (``auto: CUDA available, native bf16``)."""

    def torch_dtype(self) -> Any:
        from medtune import models

        return models.named_dtype(self.dtype)

    def line(self) -> str:
        """What the stage prints: ``model on cuda:0 in bfloat16 (auto: ...)``."""
        return f"model on {self.device} in {self.dtype} ({self.reason})"

    def record(self) -> dict[str, str]:
        """What results files keep: device and dtype (and the reason, for a person reading them)."""
        return {"device": self.device, "dtype": self.dtype, "placement": self.reason}


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    """The placement for a stage's ``device`` setting and its model's ``dtype`` (see the module docstring);
    a :class:`ConfigError` for a GPU asked for where CUDA is not available or a ``cuda:N`` out of range."""
    import torch

    if not DEVICE.match(device):
        raise ConfigError(f"device: invalid value {device!r} (allowed: auto, cpu, cuda, cuda:N)")
    cuda = torch.cuda.is_available()
    if device == "cpu" or (device == "auto" and not cuda):
        where, why = "cpu", "auto: no CUDA GPU" if device == "auto" else "--device cpu"
    else:
        if not cuda:
            raise ConfigError(f"device {device}: CUDA is not available here (torch {torch.__version__}, "
                              f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); "
                              "use --device cpu, or auto")
        index = int(device.split(":")[1]) if ":" in device else _process_gpu()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {device}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
        where, why = f"cuda:{index}", "auto: CUDA available" if device == "auto" else f"--device {device}"
    if dtype != "auto":
        return Placement(where, dtype, f"{why}; model.dtype {dtype}")
    if where == "cpu":
        return Placement(where, "float32", f"{why}; fp32 on CPU")
    from medtune import models

    index = int(where.split(":")[1])
    if models.native_bf16(index):
        return Placement(where, "bfloat16", f"{why}; native bf16")
    major, minor = torch.cuda.get_device_capability(index)
    return Placement(where, "float16", f"{why}; fp16: compute capability {major}.{minor} has no native bf16")


def _process_gpu() -> int:
    """This process's GPU: its ``LOCAL_RANK`` under a launcher (accelerate, torchrun), as accelerate picks
    it; else the current CUDA device."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    return int(local) if local is not None and local.isdigit() else torch.cuda.current_device()



def load_placed(resolved: Any, model: ModelConfig, device: str) -> tuple[Any, Placement]:
    """The model of ``resolved`` loaded in the placed dtype on the placed device, and the placement, which
    is also said on stderr (the stage's standard output is its results or its answer)."""
    from rich.console import Console

    from medtune import models

    placed = resolve(device, model.dtype)
    loaded = models.load_model(resolved, dtype=placed.torch_dtype(), device=placed.device,
                               trust_remote_code=model.trust_remote_code, allow_pickle=model.allow_pickle,
                               attn_implementation=model.attn_implementation)
    Console(stderr=True, highlight=False).print(placed.line())
    return loaded, placed
