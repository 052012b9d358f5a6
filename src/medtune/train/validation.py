"""Validation curves while training (``eval_every``): small validation subsets of named tasks scored on
the model being trained, by the scorer ``medtune eval`` uses, recorded in curves.json.

The scoring must leave the training exactly as it would have been: it runs in eval mode under
``torch.no_grad`` (the scorer's ``inference_mode``), every random stream (torch CPU and CUDA, numpy,
Python) is put back afterwards, and the model returns to train mode, so the per-step losses of a run
with and without ``eval_every`` are identical.

Processes: every rank scores, consistently. Each rank scores its share of the items (the
evaluation's :func:`~medtune.evaluate.run.parallel_map`) and the scores are gathered on every rank, so
every rank records the same entries (rank 0 writes curves.json and prints). Under FSDP or DeepSpeed a
forward pass is a collective that needs every rank on the same batch, which a share of the items is
not: ``eval_every`` is refused there (:func:`sharded_refusal`).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from medtune.train.config import TrainConfig
from medtune.train.records import ValidationPoint

METRICS = ("acc", "acc_norm", "macro_f1", "perplexity")
"""The metrics of a task's results that become curve entries, where the task has them."""


def sharded_refusal(parallelism: str) -> str | None:
    """Why ``eval_every`` cannot run under accelerate's ``parallelism`` (its distributed type's name), or None."""
    if parallelism in ("FSDP", "DEEPSPEED"):
        return (f"eval_every is not supported under {parallelism}: each rank scores its own share of the validation "
                "items, while a sharded model's forward needs every rank on the same batch; set eval_every: 0 "
                "and score checkpoints with medtune eval instead")
    return None


def points(step: int, results: dict[str, Any]) -> list[ValidationPoint]:
    """The curve entries of one scoring: each task's metrics among :data:`METRICS`."""
    out = []
    for task, r in results.items():
        for metric in METRICS:
            if isinstance(r.get(metric), dict):
                out.append(ValidationPoint(step=step, task=task, metric=metric, value=float(r[metric]["value"]),
                                           n=int(r[metric]["n"])))
    return out


def line(step: int, pts: list[ValidationPoint]) -> str:
    """The log line of one scoring: ``step 4 validation: pubmedqa acc 52.0 (n=50), ppl_general perplexity 31.20 ...``."""
    fmt = lambda p: f"{p.value:.2f}" if p.metric == "perplexity" else f"{100 * p.value:.1f}"  # noqa: E731
    return f"step {step} validation: " + ", ".join(f"{p.task} {p.metric} {fmt(p)} (n={p.n})" for p in pts)


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Every random stream the training draws from, as it was before the block."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class ValidationCallback(TrainerCallback):
    """Scores the validation subsets at step 0, every ``eval_every`` steps and at the last step, appending
    :class:`ValidationPoint` entries (as dicts) to the run state's ``validation`` (saved in checkpoints, so a
    resumed run keeps its curve)."""

    def __init__(self, cfg: TrainConfig, tokenizer: Any, run: Any, say: Callable[[str], Any],
                 autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
        from medtune.evaluate.run import EvalConfig

        self.every, self.tokenizer, self.run, self.say, self.autocast = cfg.eval_every, tokenizer, run, say, autocast
        self.eval_cfg = EvalConfig(model=cfg.model, tasks=",".join(cfg.eval_tasks), data_root=str(cfg.data.root()),
                                   task_sources=cfg.eval_sources, limit=cfg.eval_limit, progress=False)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if state.global_step == 0:
            self.score(model, 0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step % self.every == 0 or step >= state.max_steps:
            self.score(model, step)

    def score(self, model: Any, step: int) -> None:
        from medtune.evaluate.run import score_model

        training = model.training
        model.eval()
        try:
            with kept_rng(), torch.no_grad(), self.autocast():
                results, _ = score_model(model, self.tokenizer, self.eval_cfg)
        finally:
            model.train(training)
        pts = points(step, results)
        bad = [p for p in pts if not math.isfinite(p.value)]
        if bad:
            from medtune.train.engine import TrainError

            raise TrainError(f"step {step}: validation {bad[0].task} {bad[0].metric} is {bad[0].value}")
        self.run.validation.extend(p.model_dump() for p in pts)
        self.say(line(step, pts))
