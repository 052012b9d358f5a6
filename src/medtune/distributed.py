"""The process group, through accelerate.

``accelerate launch`` starts the processes (``--multi_gpu --num_processes N``, or on CPU the same
with ``ACCELERATE_USE_CPU=1``; multi-node with ``--num_machines``/``--machine_rank``); this module
only asks accelerate which process we are. Without a GPU, accelerate must be told to use the CPU
(gloo) backend, which :func:`state` does.
"""

from __future__ import annotations

from typing import Any


def state() -> Any:
    """accelerate's shared ``PartialState`` (created on first use; gloo on CPU-only machines)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
