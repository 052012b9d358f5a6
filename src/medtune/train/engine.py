"""medtune's training on transformers' ``Trainer``: the shard blocks as a Dataset, medtune's data
order, checkpoints published atomically, the loss curve and the non-finite-loss stop.

Everything the engine does well is the engine's: DDP, FSDP2 and DeepSpeed through accelerate
configs, gradient accumulation and clipping on the live (possibly sharded) parameters, bf16 / fp16
mixed precision, gradient checkpointing, the scheduler, its checkpoint files and their loading
(``weights_only``), experiment trackers (``report_to``), ``torch_compile``, Liger kernels. What
medtune adds sits in the few methods below; :mod:`medtune.train.run` builds and drives it.

Loss normalisation: the engine counts the loss tokens of each optimizer step's whole global batch
(``num_items_in_batch``, summed over the accumulated micro-batches and over the processes) and the
model divides its summed token loss by it, so 1 process and N processes with the same global batch
follow the same loss curve.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from medtune.data.packing import NO_SOURCE
from medtune.errors import MedtuneError
from medtune.train import checkpoint
from medtune.train.loss import IGNORE_INDEX


class TrainError(MedtuneError):
    """Training stopped (non-finite loss, bad resume)."""


def position_ids(attention_mask: np.ndarray, token_source: np.ndarray, input_ids: np.ndarray | None = None,
                 eos_id: int | None = None) -> np.ndarray:
    """``(n, block)`` positions restarting at 0 at each document: after every EOS separator (a real token
    of no source; with ``eos_id``, of that id, so a BOS leading a document is not one) and at the start
    of the block (a document cut by the block boundary restarts there)."""
    sep = (token_source == NO_SOURCE) & (attention_mask == 1)
    if eos_id is not None and input_ids is not None:
        sep &= input_ids == eos_id
    start = np.zeros_like(sep)
    start[:, 0] = True
    start[:, 1:] = sep[:, :-1]
    t = np.broadcast_to(np.arange(sep.shape[1]), sep.shape)
    return t - np.maximum.accumulate(np.where(start, t, 0), axis=1)


class BlockDataset(torch.utils.data.Dataset):
    """The packed blocks of a build (memory-mapped shards) as training examples: ``input_ids``,
    ``labels`` (:data:`IGNORE_INDEX` outside the loss mask: padding, each document's first token, and
    the question under answer_only) and ``position_ids`` (restarting at each document). No attention mask: padding
    only ever ends the last block, where causal attention keeps it from every real token, and
    without one the model's attention sees the documents apart by their position ids."""

    def __init__(self, blocks: Any, loss: str) -> None:
        self.blocks, self.loss = blocks, loss

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitems__(self, idx: list[int]) -> list[dict[str, torch.Tensor]]:
        """Several examples read at once (the DataLoader asks for a micro-batch this way)."""
        rows = self.blocks.rows(np.asarray(idx, dtype=np.int64))
        mask = rows["answer_mask"] if self.loss == "answer_only" else rows["attention_mask"]
        pos = position_ids(rows["attention_mask"], rows["token_source"], rows["input_ids"], self.blocks.eos_id)
        # A document's first token is not predicted from the one before it (another document's EOS).
        labels = np.where((mask == 1) & (pos > 0), rows["input_ids"], IGNORE_INDEX)
        tensors = {"input_ids": rows["input_ids"], "labels": labels, "position_ids": pos}
        return [{k: torch.from_numpy(np.ascontiguousarray(v[i])) for k, v in tensors.items()} for i in range(len(idx))]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def sample_order(n: int, seed: int, total: int) -> np.ndarray:
    """Block indices for ``total`` samples: a fresh seeded permutation of the n blocks per epoch."""
    epochs = math.ceil(total / n)
    return np.concatenate([np.random.default_rng(seed + e).permutation(n) for e in range(epochs)])[:total]


class OrderSampler(torch.utils.data.Sampler[int]):
    """The whole run's block order (:func:`sample_order`), one engine "epoch". accelerate deals its
    micro-batches round-robin to the processes, so micro-batch m of step s on process r holds blocks
    ``order[((s * accum + m) * world + r) * micro :][:micro]``: the global batch of step s is
    ``order[s * global_batch :][:global_batch]`` whatever the process count."""

    def __init__(self, order: np.ndarray) -> None:
        self.order = order

    def __iter__(self) -> Any:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


class RunState:
    """What medtune keeps across a run beyond the engine's state: the loss history, the validation curve
    entries (:mod:`medtune.train.validation`), tokens, time."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.history: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        """select_on: the best validation scoring so far ({step, task, metric, value}), its weights in OUT/best."""
        self.tokens, self.seconds_before = 0, 0.0
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.last_good: Path | None = None

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's medtune state (see :func:`medtune.train.checkpoint.validate`)."""
        self.history, self.tokens, self.seconds_before = list(state["history"]), state["tokens"], state["seconds"]
        self.validation = list(state.get("validation", []))
        self.best = state.get("best")
        self.last_good = path

    def start(self) -> None:
        self.started, self.ended = time.perf_counter(), None

    def stop(self) -> None:
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Training time over every session of the run (the engine's loop, not model loading or the final save)."""
        return self.seconds_before + (self.ended or time.perf_counter()) - self.started

    def as_dict(self, step: int, world: int) -> dict[str, Any]:
        return {"step": step, "history": self.history, "validation": self.validation, "tokens": self.tokens,
                "seconds": self.seconds, "world_size": world, **({"best": self.best} if self.best else {})}


class MedtuneCallback(TrainerCallback):
    """The loss curve (one entry per optimizer step), the stop on a non-finite loss, no checkpoint at
    the last step (the model files are the run's output), and medtune's progress bar."""

    def __init__(self, run: RunState, progress: bool) -> None:
        self.run, self.progress, self.bar = run, progress, None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.run.start()
        if self.progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True,
                            desc="train")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_save = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise TrainError(f"non-finite loss ({loss}) at step {state.global_step}; training stopped. "
                             f"The last good checkpoint is {self.run.last_good or 'none (no checkpoint written yet)'}; "
                             "lower the learning rate and resume with --resume.")
        self.run.tokens += self.run.tokens_per_step
        norm = logs.get("grad_norm")  # of the live (possibly sharded) gradients, before clipping
        self.run.history.append({"step": state.global_step, "loss": loss, "lr": float(logs.get("learning_rate", 0.0)),
                                 "tokens": self.run.tokens, "grad_norm": None if norm is None else float(norm)})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.run.stop()
        if self.bar is not None:
            self.bar.close()


class MedtuneTrainer(Trainer):
    """``Trainer`` with medtune's data order and its atomic, validated checkpoints."""

    def __init__(self, *args: Any, order: np.ndarray, run: RunState, out: Path, keep: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order, self.run, self.out, self.keep = order, run, out, keep
        self._staging: Path | None = None

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        return OrderSampler(self.order)

    def _get_output_dir(self, trial: Any) -> str:
        # While a checkpoint is written, the engine's "output dir" is the staging root (see _save_checkpoint).
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The engine writes its checkpoint into ``checkpoints/.staging/checkpoint-N`` (every file of
        every process), medtune adds its state and publishes it by a rename (:func:`checkpoint.save`)."""
        step, world = self.state.global_step, self.args.world_size

        def write(staging: Path) -> None:
            self._staging = staging.parent
            try:
                super(MedtuneTrainer, self)._save_checkpoint(model, trial)
            finally:
                self._staging = None
            if self.args.should_save:
                from medtune import atomic

                atomic.write_json(staging / checkpoint.MEDTUNE_STATE, self.run.as_dict(step, world))

        self.run.last_good = checkpoint.save(self.out, step, write, self.keep, self.args.should_save,
                                             self.accelerator.wait_for_everyone, rank=self.args.process_index)

    def optimizer_shapes(self) -> list[list[tuple[int, ...]]]:
        """The parameter shapes of each param group of the engine's optimizer (created here if not yet)."""
        self.create_optimizer()
        return [[tuple(p.shape) for p in g["params"]] for g in self.optimizer.param_groups]
