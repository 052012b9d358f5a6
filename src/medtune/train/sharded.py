"""Full (unsharded) tensors of an FSDP2-sharded model, for its checkpoints and its final files.

Under FSDP2 (``fully_shard``; ``accelerate launch`` with ``fsdp_version: 2``) every parameter is a
``DTensor`` of which each process holds one shard, and so is the optimizer state. medtune's
checkpoints and model files hold full tensors whatever the launch (one format, readable by a
single process), so with a sharded model every process takes part in gathering them, and in
scattering them back on resume. torch's own ``torch.distributed.checkpoint.state_dict`` helpers do
both; this module only maps their optimizer state (keyed by parameter name) to and from the one
``Optimizer.state_dict()`` gives unsharded (keyed by parameter index), which is what the checkpoint
files hold. An unsharded model (one process, DDP) never comes here.
"""

from __future__ import annotations

from typing import Any

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, full, on CPU, on rank 0 (an empty dict on the other ranks).
    Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    full = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    return {n: t for n, t in full.items() if n in names}


def _names_by_index(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The parameter name of each optimizer index (the order of ``opt.param_groups``)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in opt.param_groups for p in g["params"]]


def optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state as ``opt.state_dict()`` gives it unsharded (parameters by index), full, on
    CPU, on rank 0 (empty on the other ranks). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=_options(cpu_offload=True))
    if not full.get("state") and not full.get("param_groups"):
        return {"state": {}, "param_groups": []}
    index = {n: i for i, n in enumerate(_names_by_index(model, opt))}
    return {"state": {index[n]: s for n, s in full["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}


def load(model: torch.nn.Module, opt: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
         optimizer_state: dict[str, Any]) -> None:
    """Scatter full trainable weights and a full optimizer state (by index, as :func:`optimizer`
    gives it) into the sharded model and optimizer. Every rank passes the same full tensors."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options(strict=False))
    names = _names_by_index(model, opt)
    by_name = {"state": {names[i]: s for i, s in optimizer_state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=_options())
