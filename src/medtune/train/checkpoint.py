"""Training checkpoints: the engine's own (transformers' ``Trainer``), published atomically and
validated before a resume.

``checkpoints/checkpoint-N/`` is what ``Trainer`` writes for step N: the trainable weights
(``adapter_model.safetensors`` or ``model.safetensors``; FSDP and DeepSpeed their sharded
formats), ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth`` (one per process) and
``trainer_state.json``, plus medtune's ``medtune_state.json`` (loss history, tokens, time, process
count). The engine writes into ``checkpoints/.staging/checkpoint-N``; :func:`save` fsyncs it and
renames it into place, so a directory named ``checkpoint-N`` is complete unless something damaged it
later (a disk error, a copy cut short, a hand edit).

Resuming (:func:`choose`) therefore reads and checks every file of the newest checkpoint before the
engine loads it, and falls back to the next older one when it is bad (moved aside to
``corrupt-checkpoint-N`` and reported). The ``.pt`` / ``.pth`` files are the engine's own pickles:
they are read here, and by the engine, only with ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medtune import atomic
from medtune.errors import MedtuneError
from medtune.finite import NonFiniteError, check_finite

PREFIX = "checkpoint-"
MEDTUNE_STATE = "medtune_state.json"
STAGING = ".staging"


class CheckpointError(MedtuneError):
    """A checkpoint directory is incomplete or corrupt; ``reason`` says which file and how."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def checkpoints_root(root: Path) -> Path:
    """Where a run's checkpoints live (the engine's ``output_dir``)."""
    return root / "checkpoints"


def step_of(path: Path) -> int | None:
    m = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(m.group(1)) if m else None


def checkpoint_dirs(root: Path) -> list[Path]:
    """Published checkpoints under ``root/checkpoints``, oldest (lowest step) first."""
    base = checkpoints_root(root)
    found = [p for p in base.glob(f"{PREFIX}*") if p.is_dir() and step_of(p) is not None] if base.is_dir() else []
    return sorted(found, key=lambda p: step_of(p) or 0)


def latest(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def staging_root(root: Path) -> Path:
    return checkpoints_root(root) / STAGING


def require_shared(path: Path, rank: int) -> None:
    """On a rank other than 0, after the barrier that follows rank 0 creating ``path``: refuse to go on
    when this process cannot see it. Rank 0 alone builds the data and creates each checkpoint's staging
    directory, which every rank then reads or writes into; a node whose ``out`` is its own local disk
    would otherwise fail later with an unrelated I/O error, or resume from other checkpoints than rank 0."""
    if rank != 0 and not path.exists():
        raise MedtuneError(f"{path}: rank 0 created it, but rank {rank} cannot see it; multi-node training needs "
                           "`out` on a filesystem shared by all nodes (NFS, Lustre, ...)")


def save(root: Path, step: int, write: Callable[[Path], Any], keep: int, is_main: bool,
         barrier: Callable[[], Any], rank: int = 0) -> Path:
    """Checkpoint ``step``: ``write(staging)`` (every process: the engine writes its files there),
    then, on the main process, fsync and rename it to ``checkpoints/checkpoint-<step>`` and prune
    all but the newest ``keep``. Returns the published path. ``rank``: this process's, for
    :func:`require_shared`."""
    staging = staging_root(root) / f"{PREFIX}{step}"
    target = checkpoints_root(root) / staging.name
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    if not is_main:
        require_shared(staging, rank)
    write(staging)
    barrier()
    if is_main:
        atomic.settle_modes(staging)  # safetensors and torch.save write 0600 whatever the umask
        atomic.fsync_tree(staging)  # neither fsyncs; the name must mean "complete on disk"
        shutil.rmtree(target, ignore_errors=True)  # a bad one of this step, left by an earlier run
        staging.rename(target)  # the checkpoint exists only once complete
        atomic.fsync_dir(target.parent)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


# ------------------------------------------------------------------------------------ validation


def _json(path: Path, file: str) -> Any:
    try:
        return json.loads((path / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, f"{file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"{file} is unreadable ({err})") from None


def _safetensors(path: Path, file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not (path / file).is_file():
        raise CheckpointError(path, f"{file} is missing")
    try:
        tensors = load_file(str(path / file))
    except Exception as err:  # safetensors raises its own SafetensorError (truncated or garbled file)
        raise CheckpointError(path, f"{file} is unreadable ({err})") from None
    _finite(path, tensors, file)
    return tensors


def _finite(path: Path, tensors: Any, file: str) -> None:
    try:
        check_finite(tensors, file)
    except NonFiniteError as err:
        raise CheckpointError(path, str(err)) from None


def _torch_file(path: Path, file: str) -> Any:
    """An engine ``.pt`` / ``.pth`` file, read with ``weights_only=True`` (no code runs on load)."""
    from transformers.trainer_pt_utils import safe_globals

    if not (path / file).is_file():
        raise CheckpointError(path, f"{file} is missing")
    try:
        with safe_globals():  # numpy arrays and dtypes (the RNG state), as the engine allows them
            return torch.load(path / file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated zip, an unpickling refusal, ...
        raise CheckpointError(path, f"{file} is unreadable ({type(err).__name__}: {err})") from None


def _check_medtune_state(path: Path, world: int) -> dict[str, Any]:
    state = _json(path, MEDTUNE_STATE)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"{MEDTUNE_STATE} is not a JSON object")
    for key, kind in (("step", int), ("history", list), ("tokens", int), ("seconds", (int, float))):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(path, f"{MEDTUNE_STATE} field '{key}' is missing or not a {getattr(kind, '__name__', 'number')}")
    if path.name != f"{PREFIX}{state['step']}":
        raise CheckpointError(path, f"{MEDTUNE_STATE} says step {state['step']}, the directory name another")
    if state.get("world_size") != world:  # not damage: every checkpoint of the run has it, so no fallback
        raise MedtuneError(f"{path}: written by {state.get('world_size')} process(es), resuming with {world}: "
                           "resume with the same number of processes (the RNG streams depend on it)")
    engine = _json(path, "trainer_state.json")
    if not isinstance(engine, dict) or engine.get("global_step") != state["step"]:
        raise CheckpointError(path, f"trainer_state.json does not say global_step {state['step']}")
    return state


def _weights(path: Path, file: str, expected: dict[str, tuple[int, ...]]) -> None:
    """The trainable weights ``file`` (or its shards, by ``<file>.index.json``) hold exactly ``expected``
    (name -> shape), finite."""
    files = [file]
    index = path / file.replace(".safetensors", ".safetensors.index.json")
    if not (path / file).is_file() and index.is_file():
        meta = _json(path, index.name)
        files = sorted(set((meta.get("weight_map") or {}).values())) if isinstance(meta, dict) else []
        if not files:
            raise CheckpointError(path, f"{index.name} has no weight_map")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(_safetensors(path, f))
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(path, f"{file} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for n, t in weights.items():
        if tuple(t.shape) != expected[n]:
            raise CheckpointError(path, f"{file} tensor '{n}' has shape {tuple(t.shape)}, the model's is {expected[n]}")


def _optimizer(path: Path, groups: list[list[tuple[int, ...]]]) -> None:
    """optimizer.pt is the state of an optimizer with param groups of these parameter shapes."""
    sd = _torch_file(path, "optimizer.pt")
    if not isinstance(sd, dict) or not isinstance(sd.get("param_groups"), list) or not isinstance(sd.get("state"), dict):
        raise CheckpointError(path, "optimizer.pt needs 'param_groups' (a list) and 'state' (a mapping)")
    try:
        saved = [len(g["params"]) for g in sd["param_groups"]]
    except (TypeError, KeyError):
        raise CheckpointError(path, "optimizer.pt: a param group has no 'params' list") from None
    if saved != [len(g) for g in groups]:
        raise CheckpointError(path, f"optimizer.pt has param groups of sizes {saved}, the optimizer {[len(g) for g in groups]}")
    shapes = dict(enumerate(s for g in groups for s in g))
    for idx, entries in sd["state"].items():
        if idx not in shapes or not isinstance(entries, dict):
            raise CheckpointError(path, f"optimizer.pt has state for parameter {idx!r}, but the optimizer has {len(shapes)}")
        for name, t in entries.items():
            if torch.is_tensor(t) and t.dim() > 0 and tuple(t.shape) != shapes[idx]:
                raise CheckpointError(path, f"optimizer.pt tensor '{idx}.{name}' has shape {tuple(t.shape)}, "
                                            f"its parameter's is {shapes[idx]}")
            if torch.is_tensor(t):
                _finite(path, {f"{idx}.{name}": t}, "optimizer.pt")


def _rng(path: Path, world: int) -> None:
    """Every process's RNG file is there and holds RNG states (so every process picks the same checkpoint)."""
    files = ["rng_state.pth"] if world == 1 else [f"rng_state_{r}.pth" for r in range(world)]
    for f in files:
        rng = _torch_file(path, f)
        if not (isinstance(rng, dict) and torch.is_tensor(rng.get("cpu")) and "python" in rng and "numpy" in rng):
            raise CheckpointError(path, f"{f} does not hold RNG states")


def validate(path: Path, world: int, weights: tuple[str, dict[str, tuple[int, ...]]] | None,
             optimizer_groups: list[list[tuple[int, ...]]] | None) -> dict[str, Any]:
    """Read and check every file of a checkpoint; medtune's state from it. ``weights``: the weights
    file's name and its tensors' shapes by name. ``weights`` / ``optimizer_groups`` None: the engine
    shards them in its own format (FSDP, DeepSpeed), which only the engine reads."""
    state = _check_medtune_state(path, world)
    if weights is not None:
        _weights(path, *weights)
    if optimizer_groups is not None:
        _optimizer(path, optimizer_groups)
    scheduler = _torch_file(path, "scheduler.pt") if (path / "scheduler.pt").is_file() or optimizer_groups is not None else {}
    if not isinstance(scheduler, dict):
        raise CheckpointError(path, "scheduler.pt is not a scheduler state")
    _rng(path, world)
    return state


def choose(root: Path, check: Callable[[Path], dict[str, Any]], is_main: bool, barrier: Callable[[], Any],
           warn: Callable[[str], Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` that passes ``check`` (see :func:`validate`), and its
    medtune state; None when there is none at all.

    A bad checkpoint is reported through ``warn`` and moved aside to ``checkpoints/corrupt-checkpoint-N``
    (kept for inspection, and out of the way of the run's next save of that step); when every
    checkpoint is bad, :class:`CheckpointError` lists why each one is.
    """
    dirs = checkpoint_dirs(root)
    if not dirs:
        return None
    bad: list[CheckpointError] = []
    for path in reversed(dirs):
        try:
            state = check(path)
            break
        except CheckpointError as err:
            bad.append(err)
            warn(f"checkpoint {path} is unusable: {err.reason}")
    else:
        reasons = "; ".join(f"{e.path.name}: {e.reason}" for e in bad)
        raise CheckpointError(checkpoints_root(root), f"no intact checkpoint to resume from ({reasons}); "
                                                      "start afresh with another --out")
    barrier()  # every process has checked before the main one moves the bad ones
    moved = [_move_aside(err.path) for err in bad] if is_main else []
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
