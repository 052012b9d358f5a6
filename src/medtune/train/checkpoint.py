"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint directory ``checkpoints/step-000123/`` holds the trainable weights, the optimizer
state, the scheduler state, every process's RNG states and the trainer state (step, samples
consumed, loss history). It is built under a temporary name and renamed into place, so a directory
with that name is always complete; a run killed at any point resumes from the newest one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medtune import atomic
from medtune.errors import MedtuneError


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest first."""
    base = root / "checkpoints"
    return sorted(p for p in base.glob("step-*") if p.is_dir()) if base.is_dir() else []


def latest(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        meta_state[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                meta_state[str(idx)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": meta_state}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    py = random.getstate()
    npy = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in sorted(tensors) if k.startswith("cuda")])
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
         trainer_state: dict[str, Any], rank: int, world: int, keep: int, barrier: Any) -> Path:
    """Write checkpoint ``step`` (every rank writes its RNG state; rank 0 the rest), then prune old ones."""
    target = root / "checkpoints" / f"step-{step:06d}"
    staging = root / "checkpoints" / f".staging-step-{step:06d}"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    rng_t, rng_meta = _rng_state()
    save_file(rng_t, str(staging / f"rng-rank{rank}.safetensors"))
    atomic.write_json(staging / f"rng-rank{rank}.json", rng_meta)
    barrier()
    if rank == 0:
        save_file(trainable_state(model), str(staging / "trainable.safetensors"))
        opt_t, opt_meta = _optimizer_tensors(opt)
        save_file(opt_t, str(staging / "optimizer.safetensors"))
        atomic.write_json(staging / "optimizer.json", opt_meta)
        atomic.write_json(staging / "scheduler.json", sched.state_dict())
        atomic.write_json(staging / "trainer_state.json", {**trainer_state, "step": step, "world_size": world})
        staging.rename(target)  # the checkpoint exists only once complete
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rank: int, world: int) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("world_size") != world:
        raise MedtuneError(f"{path}: written by {state.get('world_size')} process(es), resuming with {world}: "
                           "resume with the same number of processes (the data order and RNG streams depend on it)")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise MedtuneError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, "
                           f"unexpected {sorted(set(weights) - set(params))[:3]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, Any]] = {}
    for idx, extra in meta["state"].items():
        opt_state[int(idx)] = dict(extra)
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = t
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    _set_rng_state(load_file(str(path / f"rng-rank{rank}.safetensors")), json.loads((path / f"rng-rank{rank}.json").read_text()))
    return state
