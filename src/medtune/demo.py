"""``medtune demo``: the demo study on the embedded model and the bundled demo sample.

It runs ``demo_data/demo-study.yaml`` (the same study as ``configs/demo.yaml`` in a checkout): the
base model is evaluated, one epoch of LoRA trains on the demo's fictional-trials sample, the tuned
model is averaged with the base at alpha 0 / 0.5 / 1 on validation, the selected model is scored on
the test items, and the run ends by printing each model's paired change vs the base with whether it
clears its 95 % interval.
The demo sample was written by the medtune authors: it is not a benchmark, and its scores say
nothing about real medical ability. Interrupted, the same command resumes where it stopped.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import Field

from medtune.config import ModelConfig, StrictModel

DEMO_STUDY = "demo-study.yaml"


class DemoConfig(StrictModel):
    out: str = "runs/demo"
    """Where the demo study writes its steps and report."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model the demo uses (the embedded SmolLM2-135M by default)."""
    dry_run: bool = False
    """List the demo study's steps and their state, run nothing."""


def demo_data_dir() -> Path:
    return Path(str(resources.files("medtune") / "demo_data"))


def run_demo(cfg: DemoConfig) -> Path:
    from rich.console import Console

    from medtune.config import load_config
    from medtune.study.run import StudyRunConfig, study

    console = Console()
    scfg = load_config(StudyRunConfig, demo_data_dir() / DEMO_STUDY,
                       {"out": cfg.out, "model": cfg.model.model_dump(), "dry_run": cfg.dry_run})
    scfg.base_dir = str(demo_data_dir())
    console.print("[bold]medtune demo[/]: the demo study on the bundled demo sample (written by the medtune authors, "
                  f"[bold]not a benchmark[/]); study file {demo_data_dir() / DEMO_STUDY}")
    return study(scfg)
