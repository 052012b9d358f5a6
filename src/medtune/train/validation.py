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
                 autocast: Callable[[], Any] = contextlib.nullcontext, keeper: "BestKeeper | None" = None) -> None:
        from medtune.evaluate.run import EvalConfig

        self.every, self.tokenizer, self.run, self.say, self.autocast = cfg.eval_every, tokenizer, run, say, autocast
        self.keeper = keeper
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
        if self.keeper is not None:
            self.keeper.offer(model, step, pts)


def better(value: float, best: float, metric: str) -> bool:
    """A strictly better validation score (lower for perplexity): the earliest of equal scores is kept."""
    return value < best if metric == "perplexity" else value > best


class BestKeeper:
    """``select_on``: keeps the trainable weights of the best validation scoring so far in ``OUT/best/step-N``
    (safetensors; written by the main process), its step and score in the run state (so a resumed run knows it).
    Every improvement is kept until the run ends, so a run resumed from an earlier checkpoint still finds the
    weights its state names; :meth:`finish` puts the chosen ones into the model and removes the directory.

    Why not the Trainer's ``load_best_model_at_end`` / ``metric_for_best_model``: it picks among the saved
    checkpoints, so it needs ``save_steps`` to be a multiple of the evaluation steps and a whole checkpoint
    (optimizer state included) at every scoring, and it reads the Trainer's own ``evaluate`` metrics, while these
    scores come from medtune's scorer in :class:`ValidationCallback` (lm-eval-exact, per task). Keeping only the
    trainable weights at an improvement costs a LoRA run a few MB per scoring; no speed was measured against it."""

    def __init__(self, cfg: TrainConfig, out: Any, run: Any, main: bool) -> None:
        self.task, self.metric = cfg.selection
        self.dir, self.run, self.main = out / "best", run, main

    def path(self, step: int) -> Any:
        return self.dir / f"step-{step}.safetensors"

    def offer(self, model: Any, step: int, pts: list[ValidationPoint]) -> None:
        hit = next((p for p in pts if p.task == self.task and p.metric == self.metric), None)
        if hit is None:
            from medtune.train.engine import TrainError

            raise TrainError(f"select_on {self.task}:{self.metric}: the validation scoring at step {step} has no such "
                             f"metric (it has {', '.join(sorted({f'{p.task}:{p.metric}' for p in pts}))})")
        best = self.run.best
        if best is not None and not better(hit.value, best["value"], self.metric):
            return
        if self.main:
            from safetensors.torch import save_file

            from medtune import atomic

            self.dir.mkdir(parents=True, exist_ok=True)
            weights = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
            tmp = self.path(step).with_suffix(".tmp")
            save_file(weights, str(tmp))
            atomic.replace(tmp, self.path(step))
        self.run.best = {"step": step, "task": self.task, "metric": self.metric, "value": hit.value}

    def finish(self, model: Any, last_step: int, save_last: Callable[[], Any]) -> None:
        """Put the best step's weights into ``model`` (the last step's written first by ``save_last``), unless the
        last step is the best; then remove the kept weights."""
        import shutil

        best = self.run.best
        if self.main and best is not None and best["step"] != last_step:
            from safetensors.torch import load_file

            save_last()
            missing = set(load_file(str(self.path(best["step"])))) - {n for n, _ in model.named_parameters()}
            if missing:
                from medtune.train.engine import TrainError

                raise TrainError(f"select_on: the kept weights of step {best['step']} name parameters the model does "
                                 f"not have: {sorted(missing)[:3]}")
            model.load_state_dict(load_file(str(self.path(best["step"]))), strict=False)
        if self.main:
            shutil.rmtree(self.dir, ignore_errors=True)
