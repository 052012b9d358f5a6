"""``medtune demo``: the smallest end-to-end run on the embedded model and the bundled demo sample.

It reads the demo sample (written by the medtune authors, not a benchmark), guards it against its
own test split, mixes in general replay text, packs the training blocks, and asks the embedded
SmolLM2-135M one demo question. Training, evaluation, averaging and the report join this command
as those stages land.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import Field

from medtune.config import ModelConfig, StrictModel

DEMO_DATA_CONFIG = "demo-data.yaml"


class DemoConfig(StrictModel):
    out: str = "runs/demo"
    """Where the demo writes its artifacts."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model the demo uses (the embedded SmolLM2-135M by default)."""
    max_new_tokens: int = 24
    """Tokens the model may generate for the demo question."""


def demo_data_dir() -> Path:
    return Path(str(resources.files("medtune") / "demo_data"))


def run_demo(cfg: DemoConfig) -> Path:
    from rich.console import Console
    from rich.rule import Rule

    from medtune.config import load_config
    from medtune.data.build import DataConfig, build_command, stats_command
    from medtune.data.prompts import eval_prompt
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.model_info import ModelInfoConfig, model_info

    console = Console()
    out = Path(cfg.out)
    data_cfg = load_config(DataConfig, demo_data_dir() / DEMO_DATA_CONFIG,
                           {"out": str(out / "data"), "tokenizer": cfg.model.spec})
    data_cfg.base_dir = str(demo_data_dir())

    console.print(Rule("1. the demo data (a sample written by the medtune authors, not a benchmark)"))
    stats_command(data_cfg)
    console.print(Rule("2. packed training blocks"))
    build_command(data_cfg)

    console.print(Rule("3. the embedded model on one demo test question"))
    test = load_source(data_cfg.eval[0], data_cfg.root(), Rejects())[0]
    prompt = eval_prompt(test).context
    model_info(ModelInfoConfig(model=cfg.model, prompt=prompt, max_new_tokens=cfg.max_new_tokens))
    console.print(f"[bold]{'gold answer':>13}[/]: {test.answer_text}")
    console.print(Rule())
    console.print(f"done: training blocks and their manifest are in {out / 'data'}")
    console.print("next: `medtune data stats configs/data/shared.yaml` shows the real benchmark data beside the repo")
    return out
