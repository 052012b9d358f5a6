"""``medtune power``: how large a test set must be for a paired accuracy change to show.

A study compares a tuned model with its base on the same items, so what decides whether a change shows
is not the accuracy itself but the *discordant* items: ``p01`` (base wrong, tuned right) and ``p10``
(base right, tuned wrong). The change in accuracy is ``delta = p01 - p10`` and the total discordance
``psi = p01 + p10`` sets its noise. McNemar's test (the paired-proportion normal approximation),
two-sided at level alpha with power 1 - beta, needs (Connor 1987, *Biometrics* 43:207-211, eq. 3;
Machin et al., *Sample Size Tables for Clinical Studies*, 3rd ed., ch. 6)::

    n = (z_{1-alpha/2} sqrt(psi) + z_{1-beta} sqrt(psi - delta^2))^2 / delta^2

pairs. Solved for delta at a given n (a quadratic in delta, the root with a positive left side), the
minimal detectable change is::

    delta = sqrt(psi) (sqrt(n) z_{1-alpha/2} + z_{1-beta} sqrt(n - z_{1-alpha/2}^2 + z_{1-beta}^2)) / (n + z_{1-beta}^2)

The pure functions below compute both; :func:`power_table` reads a pilot's two evaluations (or
explicit rates) and prints one row per task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from pydantic import Field, model_validator

from medtune.config import StrictModel
from medtune.errors import ConfigError

ALPHA, POWER = 0.05, 0.80
"""Two-sided level and power of the table: the conventional 5 % and 80 %."""


def _z(alpha: float, power: float) -> tuple[float, float]:
    return NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)


def n_needed(delta: float, psi: float, *, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Pairs needed to detect an accuracy change ``delta`` (a share, 0.05 = 5 points) when a share ``psi``
    of the items is discordant; None when ``delta`` is at least ``psi`` (a change cannot exceed the
    discordance: no n detects it at this discordance)."""
    if not 0 < delta < psi:
        return None
    za, zb = _z(alpha, power)
    return math.ceil((za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2 / delta**2)


def detectable_change(n: float, psi: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest accuracy change (a share) that ``n`` pairs detect with ``power`` at two-sided ``alpha``
    when a share ``psi`` of them is discordant (the inverse of :func:`n_needed`; capped at ``psi``, the most
    a change can be)."""
    za, zb = _z(alpha, power)
    if n <= 0 or psi <= 0:
        return math.nan
    delta = math.sqrt(psi) * (math.sqrt(n) * za + zb * math.sqrt(max(n - za**2 + zb**2, 0.0))) / (n + zb**2)
    return min(delta, psi)


@dataclass(frozen=True)
class Discordance:
    """A pilot's paired outcome on one task: ``n`` items both models scored, the share ``p01`` the tuned model
    turned right and the share ``p10`` it turned wrong."""

    n: int
    p01: float
    p10: float

    @property
    def total(self) -> float:
        return self.p01 + self.p10

    @property
    def change(self) -> float:
        return self.p01 - self.p10


def discordance(base: Mapping[tuple[str, str], float], tuned: Mapping[tuple[str, str], float]) -> dict[str, Discordance]:
    """Per task, the discordance of two models' per-item correctness ((task, item id) -> 1.0 right / 0.0
    wrong), over the items both scored."""
    counts: dict[str, list[int]] = {}
    for key, right in tuned.items():
        if key in base:
            c = counts.setdefault(key[0], [0, 0, 0])
            c[0] += 1
            c[1] += int(right > base[key])
            c[2] += int(right < base[key])
    return {t: Discordance(n, n01 / n, n10 / n) for t, (n, n01, n10) in counts.items()}


class PowerConfig(StrictModel):
    """A pilot's paired discordance (from two evaluations of the same items, or given) and the planned test sizes."""

    base: str | None = None
    """The base model's evaluation (an eval directory or its results.json); its predictions.jsonl is read."""
    tuned: str | None = None
    """The tuned model's evaluation of the same items."""
    p01: float | None = Field(None, ge=0, le=1)
    """Instead of evaluations: the share of items the base gets wrong and the tuned model right."""
    p10: float | None = Field(None, ge=0, le=1)
    """Instead of evaluations: the share of items the base gets right and the tuned model wrong."""
    discordance: float | None = Field(None, gt=0, le=1)
    """Instead of p01 and p10: their sum, the share of items whose correctness changes."""
    n: int | None = Field(None, ge=1)
    """The planned test size of every task (default with evaluations: the items each task had in them)."""
    sizes: dict[str, int] = Field(default_factory=dict)
    """Per task, its planned test size (over `n`), e.g. {pubmedqa: 500, medqa4: 1273}."""
    tasks: list[str] = Field(default_factory=list)
    """The tasks shown (default: every multiple-choice task both evaluations scored; with rates: one row per
    target, medical and general)."""
    target_medical: float = Field(5.0, gt=0, lt=100)
    """The change, in accuracy points, a medical task must detect."""
    target_general: float = Field(4.0, gt=0, lt=100)
    """The change, in accuracy points, a general task must detect."""

    @model_validator(mode="after")
    def _rates(self) -> "PowerConfig":
        if self.discordance is not None and (self.p01 is not None or self.p10 is not None):
            raise ValueError("give either discordance or p01 and p10, not both")
        if (self.p01 is None) != (self.p10 is None):
            raise ValueError("give both p01 and p10")
        if self.p01 is not None and self.p10 is not None and self.p01 + self.p10 > 1:
            raise ValueError("p01 + p10 is the share of discordant items: at most 1")
        return self

    @property
    def psi(self) -> float | None:
        """The given total discordance, if any."""
        return self.discordance if self.discordance is not None else (
            self.p01 + self.p10 if self.p01 is not None and self.p10 is not None else None)


@dataclass(frozen=True)
class PowerRow:
    """One line of the table: a task's planned n, its pilot discordance, what n detects, what the target needs."""

    task: str
    n: int
    psi: float
    change: float | None
    detectable: float
    target: float
    needed: int | None


def _correct(eval_path: str) -> dict[tuple[str, str], float]:
    """(task, item id) -> 1.0 if right, from the predictions.jsonl next to an evaluation's results.json."""
    path = Path(eval_path)
    preds = (path.parent if path.suffix == ".json" else path) / "predictions.jsonl"
    if not preds.is_file():
        raise ConfigError(f"{preds}: no predictions.jsonl (give the directory of a finished `medtune eval`)")
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["task"], str(r["id"])): float(r["pred"] == r["gold"]) for r in rows if "gold" in r}


def _target(cfg: PowerConfig, task: str) -> float:
    from medtune.evaluate.tasks import TASKS

    general = task == "general" or (task in TASKS and TASKS[task].domain == "general")
    return (cfg.target_general if general else cfg.target_medical) / 100


def _row(cfg: PowerConfig, task: str, n: int, psi: float, change: float | None) -> PowerRow:
    target = _target(cfg, task)
    return PowerRow(task, n, psi, change, detectable_change(n, psi), target, n_needed(target, psi))


def power_rows(cfg: PowerConfig) -> list[PowerRow]:
    """The table's rows, from the two evaluations or from the given rates."""
    if cfg.base is not None and cfg.tuned is not None:
        pilot = discordance(_correct(cfg.base), _correct(cfg.tuned))
        tasks = cfg.tasks or sorted(pilot)
        missing = [t for t in tasks if t not in pilot]
        if missing or not tasks:
            raise ConfigError(f"tasks: {', '.join(missing) or 'none'} not scored on the same items by both evaluations "
                              f"(both scored: {', '.join(sorted(pilot)) or 'nothing'})")
        return [_row(cfg, t, cfg.sizes.get(t, cfg.n or pilot[t].n), pilot[t].total, pilot[t].change) for t in tasks]
    if cfg.base is not None or cfg.tuned is not None or cfg.psi is None:
        raise ConfigError("power: give base and tuned (two evaluations of the same items), or the rates p01 and p10 "
                          "(or discordance)")
    tasks = cfg.tasks or ["medical", "general"]
    if any(cfg.sizes.get(t, cfg.n) is None for t in tasks):
        raise ConfigError("power: with rates, give the planned test size n (or sizes per task)")
    change = cfg.p01 - cfg.p10 if cfg.p01 is not None and cfg.p10 is not None else None
    return [_row(cfg, t, cfg.sizes.get(t) or cfg.n or 0, cfg.psi, change) for t in tasks]


def power_table(cfg: PowerConfig) -> list[PowerRow]:
    """Print the power table (80 % power, 5 % two-sided, McNemar) and return its rows."""
    from rich.console import Console
    from rich.table import Table

    rows = power_rows(cfg)
    table = Table(title="Paired accuracy change: what the test sets detect (80 % power, 5 % two-sided, McNemar)",
                  title_justify="left")
    for col in ("task", "n", "discordant %", "pilot change", "detectable change", "target", "n for target"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in rows:
        table.add_row(r.task, str(r.n), f"{100 * r.psi:.1f}", "" if r.change is None else f"{100 * r.change:+.1f}",
                      f"{100 * r.detectable:.1f}", f"{100 * r.target:.1f}",
                      str(r.needed) if r.needed is not None else "never (target > discordance)")
    console = Console()
    console.print(table)
    console.print("points of accuracy; n for target: pairs needed at the pilot's discordance (Connor 1987)")
    return rows
