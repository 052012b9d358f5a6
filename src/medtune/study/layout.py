"""The study directory's layout: the one place that builds paths under the study's ``out``.

Every step writes into ``out/<step name>`` (``eval/base``, ``train/lora``, ``sweep/lora``,
``merge/lora``, ``eval/lora-averaged``, ``report``), with its state in ``.medtune-step.json``.
A run of some variants only (``--only A,B``) is a part: the steps are the study's, but its report
and saved config are its own, ``parts/A,B/report`` and ``parts/A,B/study.yaml``, so one part does
not replace another's (the whole study's are ``report`` and ``study.yaml``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from medtune import atomic

PART_NAME_MAX = 100
"""Longest part directory name spelled out in full; a longer list of variants is shortened with a hash."""

STATE = ".medtune-step.json"
"""A step's state file (fingerprint, state, timings) inside its directory."""


@dataclass(frozen=True)
class StepState:
    """A step's state file: the fingerprint it ran with, whether it finished, and what the fingerprint hashed
    (its basis, kept to say which setting changed when it goes stale)."""

    step: str
    fingerprint: str
    state: Literal["started", "done"]
    started: str | None = None
    """When it started (a started step's file only)."""
    seconds: float | None = None
    """Its wall time, summed over its sittings: a finished step's total; a started step's so far, kept up to
    date while it runs (:data:`medtune.study.run.HEARTBEAT_S`), so that an interrupted and resumed step
    counts the time of the sitting that was cut off, to the last update."""
    sittings: int | None = None
    """How many runs the step took (left out when one: a step never interrupted)."""
    finished: str | None = None
    basis: dict[str, Any] | None = None
    """None in a file an older medtune wrote (its fingerprint hashed the config as is)."""

    @classmethod
    def load(cls, path: Path) -> "StepState | None":
        """The state in ``path``, or None when the step never started."""
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def save(self, path: Path) -> None:
        """Write it atomically, leaving out what it does not know (the same file as medtune always wrote)."""
        atomic.write_json(path, {k: v for k, v in asdict(self).items() if v is not None})


@dataclass(frozen=True)
class StudyLayout:
    root: Path
    part: str | None = None
    """The part this run is (:meth:`part_name` of its variants), or None for the whole study."""

    @staticmethod
    def part_name(variants: list[str]) -> str:
        """The directory name of the part that runs ``variants``: their names joined by commas (variant
        names are directory-safe), or, past :data:`PART_NAME_MAX` characters, the first one, the count
        of the others and a hash of all."""
        name = ",".join(variants)
        if len(name) <= PART_NAME_MAX:
            return name
        return f"{variants[0]}+{len(variants) - 1}-more-{hashlib.sha256(name.encode()).hexdigest()[:8]}"

    def step_dir(self, step: str) -> Path:
        return self.root / step

    def state_file(self, step: str) -> Path:
        return self.step_dir(step) / STATE

    def state_files(self) -> list[Path]:
        return sorted(self.root.glob(f"*/*/{STATE}"))

    def part_dir(self) -> Path:
        """Where a part's report and saved config go (the study's root for the whole study)."""
        return self.root if self.part is None else self.root / "parts" / self.part

    def study_file(self) -> Path:
        """The study config this run saved: the whole study's, or the part's (its variants only)."""
        return self.part_dir() / "study.yaml"

    def study_files(self) -> list[Path]:
        """Every saved study config: the whole study's and each part's (none before the study first ran)."""
        return [p for p in [self.root / "study.yaml", *sorted(self.root.glob("parts/*/study.yaml"))] if p.is_file()]

    # --- step names (also their directories) ---------------------------------------------------------
    @staticmethod
    def train_step(variant: str) -> str:
        return f"train/{variant}"

    @staticmethod
    def eval_step(label: str, generate: bool = False) -> str:
        return f"{'eval-gen' if generate else 'eval'}/{label}"

    @staticmethod
    def sweep_step(variant: str) -> str:
        return f"sweep/{variant}"

    @staticmethod
    def averaged_label(variant: str, suffix: str = "averaged") -> str:
        """``V-averaged`` for the selected point, ``V-SUFFIX`` for a point reported for comparison."""
        return f"{variant}-{suffix}"

    @staticmethod
    def merge_step(variant: str, suffix: str = "averaged") -> str:
        return f"merge/{variant}" if suffix == "averaged" else f"merge/{variant}-{suffix}"

    # --- files ---------------------------------------------------------------------------------------
    def saved_config(self, step: str) -> Path:
        """The stage config a sweep or merge step saved beside its outputs (eval and train save their own)."""
        return self.step_dir(step) / "config.yaml"

    def launcher_config(self, step: str, kind: str = "train") -> Path:
        """The stage config a step hands to the study's ``train_launcher`` / ``eval_launcher``."""
        return self.step_dir(step) / f"{kind}.yaml"

    def model_dir(self, variant: str) -> Path:
        """A training variant's model: its LoRA adapter or its full weights."""
        return self.step_dir(self.train_step(variant)) / "model"

    def curves(self, variant: str) -> Path:
        return self.step_dir(self.train_step(variant)) / "curves.json"

    def manifest(self, variant: str) -> Path:
        return self.step_dir(self.train_step(variant)) / "data" / "manifest.json"

    def eval_dir(self, label: str, generate: bool = False) -> Path:
        return self.step_dir(self.eval_step(label, generate))

    def sweep_dir(self, variant: str) -> Path:
        return self.step_dir(self.sweep_step(variant))

    def sweep_results(self, variant: str) -> Path:
        return self.sweep_dir(variant) / "results.json"

    def merge_dir(self, variant: str, suffix: str = "averaged") -> Path:
        return self.step_dir(self.merge_step(variant, suffix))

    def report_step(self) -> str:
        """The report step: ``report`` for the whole study, ``parts/<part>/report`` for a part."""
        return "report" if self.part is None else f"parts/{self.part}/report"

    def report_dir(self) -> Path:
        return self.step_dir(self.report_step())

    def step_configs(self, kind: str) -> list[Path]:
        """The saved ``config.yaml`` of every step of ``kind`` (eval, eval-gen, sweep, merge, train)."""
        return sorted((self.root / kind).glob("*/config.yaml"))
