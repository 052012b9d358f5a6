"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint directory ``checkpoints/step-000123/`` holds the trainable weights, the optimizer
state, the scheduler state, every process's RNG states and the trainer state (step, samples
consumed, loss history). It is built under a temporary name, fsynced, and renamed into place, so a
directory with that name is complete unless something damaged it later (a disk error, a copy cut
short, a hand edit). Resuming therefore validates a checkpoint completely before it changes the
model, and falls back to the next older one when it is bad (:func:`resume`).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medtune import atomic
from medtune.errors import MedtuneError
from medtune.finite import NonFiniteError, check_finite
from medtune.train import sharded


class CheckpointError(MedtuneError):
    """A checkpoint directory is incomplete or corrupt; ``reason`` says which file and how."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest first."""
    base = root / "checkpoints"
    return sorted(p for p in base.glob("step-*") if p.is_dir()) if base.is_dir() else []


def latest(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An ``Optimizer.state_dict()`` (parameters by index) as safetensors tensors plus JSON metadata."""
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


def require_shared(path: Path, rank: int) -> None:
    """On a rank other than 0, after the barrier that follows rank 0 creating ``path``: refuse to go on
    when this process cannot see it. Rank 0 alone builds the data and creates each checkpoint's staging
    directory, which every rank then reads or writes into; a node whose ``out`` is its own local disk
    would otherwise fail later with an unrelated I/O error, or resume from other checkpoints than rank 0."""
    if rank != 0 and not path.exists():
        raise MedtuneError(f"{path}: rank 0 created it, but rank {rank} cannot see it; multi-node training needs "
                           "`out` on a filesystem shared by all nodes (NFS, Lustre, ...)")


def save(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
         trainer_state: dict[str, Any], rank: int, world: int, keep: int, barrier: Any) -> Path:
    """Write checkpoint ``step`` (every rank writes its RNG state; rank 0 the rest), then prune old ones.
    A sharded (FSDP2) model's full weights and optimizer state are gathered first, by every rank."""
    target = root / "checkpoints" / f"step-{step:06d}"
    staging = root / "checkpoints" / f".staging-step-{step:06d}"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    require_shared(staging, rank)
    rng_t, rng_meta = _rng_state()
    save_file(rng_t, str(staging / f"rng-rank{rank}.safetensors"))
    atomic.write_json(staging / f"rng-rank{rank}.json", rng_meta)
    full = (sharded.trainable(model), sharded.optimizer(model, opt)) if sharded.is_sharded(model) else None
    barrier()
    if rank == 0:
        weights, opt_sd = full if full is not None else (trainable_state(model), opt.state_dict())
        save_file(weights, str(staging / "trainable.safetensors"))
        opt_t, opt_meta = _optimizer_tensors(opt_sd)
        save_file(opt_t, str(staging / "optimizer.safetensors"))
        atomic.write_json(staging / "optimizer.json", opt_meta)
        atomic.write_json(staging / "scheduler.json", sched.state_dict())
        atomic.write_json(staging / "trainer_state.json", {**trainer_state, "step": step, "world_size": world})
        atomic.settle_modes(staging)  # safetensors writes 0600 whatever the umask
        atomic.fsync_tree(staging)  # safetensors writes without fsync; the name must mean "complete on disk"
        staging.rename(target)  # the checkpoint exists only once complete
        atomic.fsync_dir(target.parent)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target




@dataclass(frozen=True)
class Checkpoint:
    """Everything a checkpoint restores, read and validated before anything is changed."""

    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]]


def _json(path: Path, file: str) -> Any:
    try:
        return json.loads((path / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, f"{file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"{file} is unreadable ({err})") from None


def _tensors(path: Path, file: str) -> dict[str, torch.Tensor]:
    if not (path / file).is_file():
        raise CheckpointError(path, f"{file} is missing")
    try:
        tensors = load_file(str(path / file))
    except Exception as err:  # safetensors raises its own SafetensorError (truncated or garbled file)
        raise CheckpointError(path, f"{file} is unreadable ({err})") from None
    try:
        check_finite(tensors, file)
    except NonFiniteError as err:
        raise CheckpointError(path, str(err)) from None
    return tensors


def _check_state(path: Path, state: Any, world: int) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise CheckpointError(path, "trainer_state.json is not a JSON object")
    for key, kind in (("step", int), ("history", list), ("tokens", int), ("seconds", (int, float))):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(path, f"trainer_state.json field '{key}' is missing or not a {getattr(kind, '__name__', 'number')}")
    if path.name != f"step-{state['step']:06d}":
        raise CheckpointError(path, f"trainer_state.json says step {state['step']}, the directory name another")
    if state.get("world_size") != world:  # not damage: every checkpoint of the run has it, so no fallback
        raise MedtuneError(f"{path}: written by {state.get('world_size')} process(es), resuming with {world}: "
                           "resume with the same number of processes (the data order and RNG streams depend on it)")
    return state


def _check_weights(path: Path, weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(path, f"trainable.safetensors does not match the model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]})")
    for n, t in weights.items():
        if t.shape != params[n].shape:  # copy_ would broadcast some mismatches silently
            raise CheckpointError(path, f"trainable.safetensors tensor '{n}' has shape {tuple(t.shape)}, "
                                        f"the model's is {tuple(params[n].shape)}")


def _optimizer_state(path: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state dict from optimizer.json + optimizer.safetensors, checked against ``opt``."""
    meta, tensors = _json(path, "optimizer.json"), _tensors(path, "optimizer.safetensors")
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list) or not isinstance(meta.get("state"), dict):
        raise CheckpointError(path, "optimizer.json needs 'param_groups' (a list) and 'state' (an object)")
    groups = [len(g["params"]) for g in opt.param_groups]
    try:
        saved = [len(g["params"]) for g in meta["param_groups"]]
    except (TypeError, KeyError):
        raise CheckpointError(path, "optimizer.json: a param group has no 'params' list") from None
    if saved != groups:
        raise CheckpointError(path, f"optimizer.json has param groups of sizes {saved}, the optimizer {groups}")
    by_index = dict(enumerate(p for g in opt.param_groups for p in g["params"]))
    state: dict[int, dict[str, Any]] = {}
    try:
        for idx, extra in meta["state"].items():
            state[int(idx)] = dict(extra)
        for key, t in tensors.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = t
    except (ValueError, TypeError):
        raise CheckpointError(path, "optimizer state keys are not '<param index>.<name>'") from None
    for idx, entries in state.items():
        if idx not in by_index:
            raise CheckpointError(path, f"optimizer state for parameter {idx}, but the optimizer has {len(by_index)}")
        for name, t in entries.items():
            if torch.is_tensor(t) and t.dim() > 0 and t.shape != by_index[idx].shape:
                raise CheckpointError(path, f"optimizer.safetensors tensor '{idx}.{name}' has shape {tuple(t.shape)}, "
                                            f"its parameter's is {tuple(by_index[idx].shape)}")
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng(path: Path, rank: int, world: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This rank's RNG state; every rank's files are checked, so all ranks pick the same checkpoint."""
    mine: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    for r in range(world):
        tensors, meta = _tensors(path, f"rng-rank{r}.safetensors"), _json(path, f"rng-rank{r}.json")
        ok = (isinstance(tensors.get("torch"), torch.Tensor) and isinstance(meta, dict)
              and isinstance(meta.get("python"), list) and len(meta["python"]) == 3
              and isinstance(meta.get("numpy"), list) and len(meta["numpy"]) == 5)
        if not ok:
            raise CheckpointError(path, f"rng-rank{r}.safetensors / rng-rank{r}.json do not hold RNG states")
        if r == rank:
            mine = (tensors, meta)
    assert mine is not None
    return mine


def read(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int) -> Checkpoint:
    """Read and validate every file of a checkpoint; raise :class:`CheckpointError` naming what is wrong."""
    state = _check_state(path, _json(path, "trainer_state.json"), world)
    weights = _tensors(path, "trainable.safetensors")
    _check_weights(path, weights, model)
    optimizer = _optimizer_state(path, opt)
    scheduler = _json(path, "scheduler.json")
    if not isinstance(scheduler, dict):
        raise CheckpointError(path, "scheduler.json is not a JSON object")
    return Checkpoint(path, state, weights, optimizer, scheduler, _rng(path, rank, world))


def apply(ckpt: Checkpoint, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG from a validated checkpoint."""
    params = dict(model.named_parameters())
    try:
        if sharded.is_sharded(model):
            sharded.load(model, opt, ckpt.weights, ckpt.optimizer)
        else:
            with torch.no_grad():
                for n, t in ckpt.weights.items():
                    params[n].copy_(t)
            opt.load_state_dict(ckpt.optimizer)
        sched.load_state_dict(ckpt.scheduler)
        _set_rng_state(*ckpt.rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # what validation cannot foresee
        raise CheckpointError(ckpt.path, f"cannot be restored ({type(err).__name__}: {err})") from None
    return ckpt.state


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rank: int, world: int) -> dict[str, Any]:
    """Restore one checkpoint (validated first); return the trainer state."""
    return apply(read(path, model, opt, rank, world), model, opt, sched)


def resume(root: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rank: int, world: int,
           barrier: Callable[[], Any], warn: Callable[[str], Any]) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest intact checkpoint under ``root``; None when there is none at all.

    A bad checkpoint is reported through ``warn`` and moved aside to ``checkpoints/corrupt-step-N``
    (kept for inspection, and out of the way of the run's next save of that step); when every
    checkpoint is bad, :class:`CheckpointError` lists why each one is.
    """
    dirs = checkpoint_dirs(root)
    if not dirs:
        return None
    bad: list[CheckpointError] = []
    for path in reversed(dirs):
        try:
            state = apply(read(path, model, opt, rank, world), model, opt, sched)
            break
        except CheckpointError as err:
            bad.append(err)
            warn(f"checkpoint {path} is unusable: {err.reason}")
    else:
        reasons = "; ".join(f"{e.path.name}: {e.reason}" for e in bad)
        raise CheckpointError(root / "checkpoints", f"no intact checkpoint to resume from ({reasons}); "
                                                    "start afresh with another --out")
    barrier()  # every rank has read its checkpoint before rank 0 moves the bad ones
    moved = [_move_aside(err.path) for err in bad] if rank == 0 else []
    barrier()
    if bad:
        warn(f"resuming from {path} (step {state['step']}), the newest intact checkpoint"
             + (f"; the unusable one(s) were moved to {', '.join(str(m) for m in moved)}" if moved else ""))
    return path, state


def _move_aside(path: Path) -> Path:
    """Rename a bad checkpoint to ``corrupt-<name>`` (``-2``, ``-3`` ... if taken); return the new path."""
    target, n = path.with_name(f"corrupt-{path.name}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"corrupt-{path.name}-{n}")
    path.rename(target)
    return target
