"""The study directory's layout: the one place that builds paths under the study's ``out``.

Every step writes into ``out/<step name>`` (``eval/base``, ``train/lora``, ``sweep/lora``,
``merge/lora``, ``eval/lora-averaged``, ``report``), with its state in ``.medtune-step.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE = ".medtune-step.json"
"""A step's state file (fingerprint, state, timings) inside its directory."""


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    def step_dir(self, step: str) -> Path:
        return self.root / step

    def state_file(self, step: str) -> Path:
        return self.step_dir(step) / STATE

    def state_files(self) -> list[Path]:
        return sorted(self.root.glob(f"*/*/{STATE}"))

    def study_file(self) -> Path:
        return self.root / "study.yaml"

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

    def report_dir(self) -> Path:
        return self.root / "report"

    def step_configs(self, kind: str) -> list[Path]:
        """The saved ``config.yaml`` of every step of ``kind`` (eval, eval-gen, sweep, merge, train)."""
        return sorted((self.root / kind).glob("*/config.yaml"))
